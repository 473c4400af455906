"""The PatchGD step profile (``bench_step.py``): where one training batch's time goes.

Modules: :mod:`~benchmarks.step.phases` (exclusive per-phase timers wrapped around the engine),
:mod:`~benchmarks.step.measure` (stores, models, the timed steps),
:mod:`~benchmarks.step.report` (the tables).
"""
