#!/usr/bin/env bash
# Convert many slides on an existing Dask cluster (one task per shard; failed slides are
# reported and skipped; rerunning skips complete stores and resumes incomplete ones).
#
# Start a cluster first, e.g. on SLURM with dask-jobqueue:
#   python -c "from dask_jobqueue import SLURMCluster; c = SLURMCluster(cores=8, memory='16GB');
#              c.scale(jobs=10); print(c.scheduler_address); input()"
# or `dask scheduler` + `dask worker tcp://...` by hand. Workers need wsi_patchgd installed and
# access to the slides and the output (shared filesystem or object storage).
set -euo pipefail
scheduler=${1:?usage: cluster-convert.sh SCHEDULER_ADDRESS 'SLIDE_GLOB' OUT_ROOT}
inputs=${2:?slide glob}
out=${3:?output root (path or s3://...)}
wsi-patchgd convert "$inputs" --out "$out" --scheduler "$scheduler" \
    --report "${REPORT:-convert-report.json}" --quiet
