"""torchrun: 2 CPU processes (gloo) started by the test train the same model as one process.

Equivalence is to float tolerance (1e-5 absolute on every weight), not bitwise: DDP
all-reduces (sums) the two processes' gradients in float32, the head's synchronised BatchNorm
sums its moments across processes, and each process's convolutions run over half the batch, so
sums are taken in another order than in the single process (measured: 6e-7 after 3 epochs is
what 1 vs 2 threads alone gives in one process). The run uses
``patchgd.norm: group`` and no dropout: with BatchNorm batch statistics or dropout masks the two
runs differ by design (each process normalises its own patches and draws its own masks; see
``wsi_patchgd.training.distributed``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wsi_patchgd.training.checkpoint import load_checkpoint
from wsi_patchgd.training.config import load_config
from wsi_patchgd.training.trainer import train

SETTINGS = [
    "patchgd.norm=group",
    "model.dropout=0.0",
    "augment.flips=true",  # keyed by (seed, epoch, slide): the same draws in both runs
    "schedule.epochs=3",
    # plain SGD at a small rate: with Adam or momentum at a larger rate, this tiny problem
    # amplifies float noise ~100x per epoch (measured: even 1 vs 2 threads in one process
    # then ends 1e-2 apart), which would test chaos, not equivalence
    "optim.name=sgd",
    "optim.lr=0.001",
    "optim.momentum=0",
    "output.heatmaps=0",
]


def torchrun(
    root: Path, out: str, *extra: str, nproc: int = 2, resume: bool = False
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "wsi_patchgd", "train", "config.yaml",
           *SETTINGS, f"output.dir={out}", *extra, "-q"]  # fmt: skip
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WSI_PATCHGD_DIST_TIMEOUT": "60"}
    return subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"largest weight difference {worst:.2e}"


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path) -> Path:
    """The single-process run (in this process)."""
    out = "runs/dist-single"
    cfg = load_config(tiny_dataset / "config.yaml", [*SETTINGS, f"output.dir={out}"])
    train(cfg, quiet=True)
    return tiny_dataset / out


def test_two_processes_train_the_same_weights_as_one(tiny_dataset: Path, reference: Path) -> None:
    proc = torchrun(tiny_dataset, "runs/dist-two")
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    run = tiny_dataset / "runs" / "dist-two"
    assert_close(weights(run), weights(reference))
    one = [r["train_loss"] for r in _metrics(reference)]
    two = [r["train_loss"] for r in _metrics(run)]
    assert two == pytest.approx(one, rel=1e-4)
    # rank 0 alone wrote the run: one metrics line per epoch, one summary line on stdout
    assert len(two) == 3 and log.count("summary: ") == 1


def test_a_killed_rank_fails_the_job_and_resume_finishes_it(
    tiny_dataset: Path, reference: Path
) -> None:
    out = "runs/dist-killed"
    proc = torchrun(tiny_dataset, out, "schedule.epochs=3")
    lines: list[str] = []
    assert proc.stdout is not None
    run = tiny_dataset / out
    while not (run / "checkpoints" / "last.pt").exists():  # epoch 1 done: epoch 2 is running
        assert proc.poll() is None, "".join(lines)
        time.sleep(0.2)
    victim = _rank_pid(proc.pid, rank=1)
    t0 = time.time()
    os.kill(victim, signal.SIGKILL)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - t0 < 90, "the job hung after a rank died"
    assert "exitcode: -9" in log or "SIGKILL" in log, log[-2000:]
    # the epoch the kill interrupted is not in the run; resume (with one process: any world
    # size that divides the batch) finishes it with the reference's weights
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] in (0, 1)
    proc = torchrun(tiny_dataset, out, nproc=1, resume=True)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert_close(weights(run), weights(reference))
    assert [r["epoch"] for r in _metrics(run)] == [0, 1, 2]


def _metrics(run: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _rank_pid(agent: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (read from /proc: children of the agent)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == agent and f"RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under pid {agent}")


def test_the_gd_baseline_runs_the_same_way(tiny_dataset: Path) -> None:
    gd = ["patchgd.method=gd", "schedule.epochs=2"]
    cfg = load_config(tiny_dataset / "config.yaml", [*SETTINGS, *gd, "output.dir=runs/gd-one"])
    train(cfg, quiet=True)
    proc = torchrun(tiny_dataset, "runs/gd-two", *gd)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert_close(
        weights(tiny_dataset / "runs" / "gd-two"), weights(tiny_dataset / "runs" / "gd-one")
    )
