"""The jobs of ``benchmarks/bench_convert.py`` (the entry point): conversion speed and memory.

:mod:`.settings` targets and fixed sizes, :mod:`.workers` the two conversions (each run in a
subprocess), :mod:`.checks` pixel checks and the naive rate probe, :mod:`.measure` one slide
size, :mod:`.report` the summary and table.
"""
