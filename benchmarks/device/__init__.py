"""The jobs of ``benchmarks/bench_device.py`` (the entry point): training on an accelerator.

:mod:`.settings` the fixed setup and the defaults, :mod:`.memory` the peak-memory meter (CUDA's
allocator statistics, or the CPU's peak RSS), :mod:`.sweep` PatchGD vs GD over image sides and
dtypes (peak memory, OOM, step time), :mod:`.throughput` the Zarr loader's patches/s vs the
backbone's, :mod:`.report` the tables.
"""
