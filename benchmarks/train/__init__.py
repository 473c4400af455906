"""The jobs of ``benchmarks/bench_train.py`` (the entry point): PatchGD vs GD training cost.

:mod:`.settings` the fixed setup, :mod:`.step` one configuration's step in a fresh process,
:mod:`.runner` running it under a memory watchdog, :mod:`.loader` loader vs backbone,
:mod:`.report` the tables and JSON summaries, :mod:`.plot` the PNG.
"""
