#!/usr/bin/env bash
# The paper's 512 px UltraMNIST configuration on one GPU, in one command:
#   bash pipelines/gpu_ultramnist512.sh [OUT=out/gpu-ultramnist512] [EPOCHS=100]
# 1. 2800 train / 560 validation canvases (sum of digits 0-9, digits 28-252 px, 32 px patches);
# 2. PatchGD with pipelines/ultramnist-512.yaml (bf16 autocast, cuda);
# 3. GD under the memory budget of one PatchGD step (its side picked by the planner), and GD at
#    the full 512 px without a budget;
# 4. out/…/results.md: last-epoch and best-epoch validation accuracy of each, next to the
#    paper's table (PatchGD 512 px, MobileNetV2: see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu-ultramnist512}"
EPOCHS="${2:-100}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
if [ ! -f "$OUT/data/manifest.csv" ]; then
  "$PY" -m wsi_patchgd make-ultramnist --out "$OUT/data" --n-train 2800 --n-val 560 --side 512 \
    --patch-size 32 --label sum10 --quiet
fi
common=(data.manifest="$PWD/$OUT/data/manifest.csv" schedule.epochs="$EPOCHS" device=cuda
        precision=bf16 output.heatmaps=2)
BUDGET=$("$PY" - "$OUT" <<'PY'
import sys
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.build import build
from wsi_patchgd.training.memory import plan_memory
out = sys.argv[1]
cfg = load_config("pipelines/ultramnist-512.yaml",
                  [f"data.manifest={out}/data/manifest.csv", "device=cuda"])
s = build(cfg, log=lambda *a: None)
g = s.source.grid(0)
p = plan_memory(s.model, s.source.patch_size, cfg.schedule.batch_size, g.n_patches,
                cfg.model.latent_dim, 10**15, optimizer=cfg.optim.name)
need = p.fixed + p.latent + cfg.schedule.batch_size * s.k * p.per_patch_grad
print(f"{int(need / 1e6) + 1}MB")
PY
)
echo "memory budget (one PatchGD step): $BUDGET"
run() { local name=$1; shift
  [ -f "$OUT/runs/$name/summary.json" ] && return 0
  resume=(); [ -f "$OUT/runs/$name/checkpoints/last.pt" ] && resume=(--resume)
  "$PY" -m wsi_patchgd train pipelines/ultramnist-512.yaml "${common[@]}" \
    output.dir="$PWD/$OUT/runs/$name" "$@" "${resume[@]}" --quiet
}
run patchgd
run gd patchgd.method=gd model.head=pooled patchgd.memory_budget="$BUDGET" patchgd.gd_image_size=512
run gd-full patchgd.method=gd model.head=pooled patchgd.gd_image_size=512
"$PY" - "$OUT" "$BUDGET" <<'PY'
import json, sys
from pathlib import Path
out, budget = Path(sys.argv[1]), sys.argv[2]
lines = [f"UltraMNIST 512 px, sum 0-9 (10 classes), budget {budget}", "",
         "| run | side | val acc (last) | val acc (best) |", "|---|---|---|---|"]
for name in ("patchgd", "gd", "gd-full"):
    recs = [json.loads(l) for l in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    s = json.loads((out / "runs" / name / "summary.json").read_text())
    side = s.get("gd_image_size") or 512
    lines.append(f"| {name} | {side} | {recs[-1]['val_accuracy']:.3f} | "
                 f"{max(r['val_accuracy'] for r in recs):.3f} |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
