"""The jobs of ``benchmarks/bench_stream.py``: stores on s3:// behind a latency proxy vs local.

``stores`` builds the slide, its store and the uploaded copies; ``workloads`` says which patches
each workload reads and reads them through ``StorePatchSource``; ``measure`` runs every mode
(local, s3 without cache, s3 with a cold and a warm cache, per backend); ``report`` prints the
table.
"""
