"""The jobs of ``benchmarks/bench_read.py`` (the entry point): random patch reads.

:mod:`.settings` targets and sizes, :mod:`.stores` the stores and patch positions,
:mod:`.readers` OpenSlide and the no-zarr floor, :mod:`.timing` patches per second,
:mod:`.measure` one slide's measurement, :mod:`.s3` the same store on a moto S3 server,
:mod:`.profiling` a cProfile of every thread, :mod:`.report` the table.
"""
