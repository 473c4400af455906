"""Every command of the CLI with bad values of its options and inputs, through the real command
(``python -m wsi_patchgd`` in a subprocess): exit code 2 (1 for a batch with failed items),
exactly one ``error:`` line that names the offending file or key, and never a traceback.

The cases run concurrently (they are mostly interpreter start-up); one tiny dataset and one
checkpoint trained on it serve them all.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import pytest

from tests.conftest import BROKEN, CMU
from tests.training.conftest import tiny_dataset  # noqa: F401  (the shared fixture)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    names: str  #: what the error line must name (a file, an option or a config key)
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)


def _bomb_png(path: Path) -> None:
    """A valid PNG header claiming 100000 x 100000 pixels: Pillow's decompression-bomb guard."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _cases(ds: Path, w: Path, ckpt: Path) -> list[Case]:
    """``ds``: the tiny dataset; ``w``: a scratch folder holding the bad inputs; ``ckpt``: a
    checkpoint trained on ``ds``."""
    cfg = str(ds / "config.yaml")
    store = str(ds / "stores" / "s06.zarr")
    afile = str(w / "a-file.txt")  # a file where a folder is expected
    ro = "/sys/wsi-patchgd-test"  # refused even to root
    out = str(w / "out")
    conv = ("convert", str(CMU), "--out", out, "-q")
    pred = ("predict", "--checkpoint", str(ckpt), store)
    c: list[Case] = [
        # info
        Case("info-missing", ("info", str(w / "nope.svs")), "nope.svs"),
        Case("info-corrupt", ("info", str(BROKEN)), "broken.svs"),
        Case("info-folder", ("info", str(w / "folder")), "folder"),
        Case("info-bomb", ("info", str(w / "bomb.png")), "bomb.png"),
        Case("info-reader", ("info", str(CMU), "--reader", "bogus"), "reader"),
        Case("info-so", ("info", str(CMU), "--storage-options", "{bad"), "--storage-options"),
        Case("info-so-list", ("info", str(CMU), "--storage-options", "[1]"), "--storage-options"),
        Case(
            "info-env",
            ("info", "s3://bucket/slide.svs"),
            "WSI_PATCHGD_STORAGE_OPTIONS",
            env={"WSI_PATCHGD_STORAGE_OPTIONS": "{not json"},
        ),
        Case("info-no-source", ("info",), "SOURCE"),
        # convert
        Case("convert-patch", (*conv, "--patch-size", "7"), "--patch-size"),
        Case("convert-patch-text", (*conv, "--patch-size", "big"), "--patch-size"),
        Case("convert-shard0", (*conv, "--shard-patches", "0"), "--shard-patches"),
        Case("convert-shard-huge", (*conv, "--shard-patches", "100000"), "--shard-patches"),
        Case("convert-levels", (*conv, "--levels", "0"), "--levels"),
        Case("convert-codec", (*conv, "--codec", "bogus"), "--codec"),
        Case("convert-reader", (*conv, "--reader", "bogus"), "--reader"),
        Case("convert-workers", (*conv, "--workers", "-3"), "--workers"),
        Case("convert-report-dir", (*conv, "--report", str(w / "folder")), "--report"),
        Case("convert-report-ro", (*conv, "--report", f"{ro}/r.json"), "--report"),
        Case("convert-report-notdir", (*conv, "--report", f"{afile}/r.json"), "--report"),
        Case("convert-so", (*conv, "--storage-options", "{bad"), "--storage-options"),
        Case("convert-out-ro", ("convert", str(CMU), "--out", f"{ro}/out"), "--out"),
        Case("convert-out-notdir", ("convert", str(CMU), "--out", f"{afile}/out"), "--out"),
        Case("convert-no-out", ("convert", str(CMU)), "--out"),
        Case("convert-no-inputs", ("convert", "--out", out), "INPUTS"),
        Case(
            "convert-glob",
            ("convert", str(w / "nomatch-*.svs"), "--out", out, "-q"),
            "nomatch-*.svs",
            code=1,
        ),
        Case(
            "convert-missing", ("convert", str(w / "gone.svs"), "--out", out, "-q"), "gone.svs", 1
        ),
        # train: the config file, each kind of bad key, the manifest it names, output.dir
        Case("train-missing", ("train", str(w / "nope.yaml")), "nope.yaml"),
        Case("train-folder", ("train", str(w / "folder")), "folder"),
        Case("train-latin1", ("train", str(w / "latin1.yaml")), "latin1.yaml"),
        Case("train-yaml", ("train", str(w / "broken.yaml")), "broken.yaml"),
        Case("train-list", ("train", str(w / "list.yaml")), "list.yaml"),
        Case("train-lr-nan", ("train", cfg, "optim.lr=nan"), "optim.lr"),
        Case("train-lr-inf", ("train", cfg, "optim.lr=inf"), "optim.lr"),
        Case("train-lr-0", ("train", cfg, "optim.lr=0"), "optim.lr"),
        Case("train-wd", ("train", cfg, "optim.weight_decay=-0.1"), "optim.weight_decay"),
        Case("train-momentum", ("train", cfg, "optim.momentum=1.5"), "optim.momentum"),
        Case("train-dropout-1", ("train", cfg, "model.dropout=1.0"), "model.dropout"),
        Case("train-dropout-neg", ("train", cfg, "model.dropout=-0.5"), "model.dropout"),
        Case("train-seed", ("train", cfg, "seed=-1"), "'seed'"),
        Case("train-patch", ("train", cfg, "data.patch_size=100000"), "data.patch_size"),
        Case("train-warmup-nan", ("train", cfg, "schedule.warmup_epochs=nan"), "warmup_epochs"),
        Case("train-epochs", ("train", cfg, "schedule.epochs=0"), "schedule.epochs"),
        Case("train-key", ("train", cfg, "optim.lrr=1"), "optim.lrr"),
        Case("train-override", ("train", cfg, "noequals"), "noequals"),
        Case("train-device", ("train", cfg, "device=tpu"), "device"),
        Case("train-budget", ("train", cfg, "--memory-budget", "lots"), "memory_budget"),
        Case("train-resume", ("train", cfg, f"output.dir={w / 'fresh'}", "--resume"), "fresh"),
        Case("train-out-ro", ("train", cfg, f"output.dir={ro}/run"), "output.dir"),
        Case("train-out-notdir", ("train", cfg, f"output.dir={afile}/run"), "output.dir"),
        Case("train-man-missing", ("train", cfg, f"data.manifest={w}/nope.csv"), "nope.csv"),
        Case("train-man-latin1", ("train", cfg, f"data.manifest={w}/latin1.csv"), "latin1.csv"),
        Case("train-man-folder", ("train", cfg, f"data.manifest={w}/folder"), "folder"),
        Case("train-man-id", ("train", cfg, f"data.manifest={w}/bad-id.csv"), "'a/b'"),
        # evaluate
        Case("eval-missing", ("evaluate", str(w / "nope.pt")), "nope.pt"),
        Case("eval-run-dir", ("evaluate", str(w / "folder")), "best.pt"),
        Case("eval-folds-text", ("evaluate", str(ckpt), "--folds", "a,b"), "--folds"),
        Case("eval-folds-empty", ("evaluate", str(ckpt), "--folds", "7"), "fold(s) [7]"),
        Case("eval-plain", ("evaluate", str(w / "plain.pt")), "plain.pt"),
        Case("eval-classes", ("evaluate", str(w / "classes3.pt")), "classes3.pt"),
        Case("eval-backbone", ("evaluate", str(w / "resnet.pt")), "resnet.pt"),
        Case("eval-text", ("evaluate", str(w / "notes.pt")), "notes.pt"),
        Case(
            "eval-manifest",
            ("evaluate", str(ckpt), "--manifest", str(w / "latin1.csv")),
            "latin1.csv",
        ),
        # predict
        Case("predict-out-dir", (*pred, "--out", str(w / "folder")), "--out"),
        Case("predict-out-ro", (*pred, "--out", f"{ro}/p.csv"), "--out"),
        Case("predict-out-notdir", (*pred, "--out", f"{afile}/p.csv"), "--out"),
        Case("predict-heatmaps", (*pred, "--out", out, "--heatmaps", afile), "--heatmaps"),
        Case(
            "predict-so",
            (*pred, "--out", f"{out}.csv", "--storage-options", "{bad"),
            "--storage-options",
        ),
        Case(
            "predict-ckpt-missing",
            ("predict", "--checkpoint", str(w / "nope.pt"), store, "--out", f"{out}.csv"),
            "nope.pt",
        ),
        Case(
            "predict-ckpt-dir",
            ("predict", "--checkpoint", str(w / "folder"), store, "--out", f"{out}.csv"),
            "--checkpoint",
        ),
        Case(
            "predict-plain",
            ("predict", "--checkpoint", str(w / "plain.pt"), store, "--out", f"{out}.csv"),
            "plain.pt",
        ),
        Case(
            "predict-store",
            ("predict", "--checkpoint", str(ckpt), str(w / "gone.zarr"), "--out", f"{out}.csv"),
            "gone.zarr",
        ),
        Case("predict-no-stores", ("predict", "--checkpoint", str(ckpt), "--out", out), "STORES"),
        # demo (every check comes before any slide is made)
        Case("demo-slides", ("demo", "--out", out, "--slides", "0"), "--slides"),
        Case("demo-side", ("demo", "--out", out, "--side", "10"), "--side"),
        Case("demo-epochs", ("demo", "--out", out, "--epochs", "0"), "--epochs"),
        Case("demo-backbone", ("demo", "--out", out, "--backbone", "bogusnet"), "bogusnet"),
        Case("demo-budget", ("demo", "--out", out, "--memory-budget", "lots"), "memory_budget"),
        Case("demo-seed", ("demo", "--out", out, "--seed", "-1"), "--seed"),
        Case("demo-workers", ("demo", "--out", out, "--workers", "-3"), "--workers"),
        Case("demo-out", ("demo", "--out", f"{afile}/demo"), "--out"),
        # make-ultramnist
        *(
            Case(f"ultramnist{i}", ("make-ultramnist", "--out", o, *a), names)
            for i, (o, a, names) in enumerate(
                [
                    (out, ("--n-train", "-1", "--n-val", "1"), "--n-train"),
                    (out, ("--n-train", "1", "--n-val", "1", "--side", "10"), "side"),
                    (out, ("--n-train", "1", "--n-val", "1", "--classes", "5"), "--classes"),
                    (out, ("--n-train", "1", "--n-val", "1", "--label", "min"), "--label"),
                    (
                        out,
                        ("--n-train", "1", "--n-val", "1", "--digit-sizes", "x"),
                        "--digit-sizes",
                    ),
                    (out, ("--n-train", "1", "--n-val", "1", "--seed", "-1"), "--seed"),
                    (out, ("--n-train", "1", "--n-val", "1", "--mnist-dir", f"{w}/mn"), "mn"),
                    (out, ("--n-train", "1", "--n-val", "1", "--patch-size", "7"), "--patch-size"),
                    (out, ("--n-train", "1", "--n-val", "1", "--workers", "-3"), "--workers"),
                    (f"{afile}/um", ("--n-train", "1", "--n-val", "1"), "--out"),
                ]
            )
        ),
        # prepare-panda
        Case("panda-root", ("prepare-panda", str(w / "no-panda"), "--out", out), "no-panda"),
        Case("panda-csv", ("prepare-panda", str(w / "folder"), "--out", out), "train.csv"),
        *(
            Case(f"panda-{opt}", ("prepare-panda", str(w / "folder"), "--out", out, opt, v), opt)
            for opt, v in (
                ("--folds", "1"),
                ("--seed", "-1"),
                ("--patch-size", "7"),
                ("--level", "-1"),
                ("--workers", "-3"),
            )
        ),
        Case("panda-out", ("prepare-panda", str(w / "folder"), "--out", f"{afile}/p"), "--out"),
        # make-synthetic
        *(
            Case(f"synthetic{i}", ("make-synthetic", "--out", o, *a), names)
            for i, (o, a, names) in enumerate(
                [
                    (out, ("--n", "0"), "--n"),
                    (out, ("--n", "1", "--side", "10"), "--side"),
                    (out, ("--n", "1", "--side", "300000"), "--side"),
                    (out, ("--n", "1", "--classes", "0"), "--classes"),
                    (out, ("--n", "1", "--markers", "-1"), "--markers"),
                    (out, ("--n", "1", "--seed", "-1"), "--seed"),
                    (out, ("--n", "1", "--patch-size", "7"), "--patch-size"),
                    (out, ("--n", "1", "--workers", "-3"), "--workers"),
                    (f"{afile}/syn", ("--n", "1"), "--out"),
                ]
            )
        ),
    ]
    return c


@pytest.fixture(scope="module")
def bad_inputs(
    tiny_dataset: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """The bad inputs next to a real checkpoint of the tiny dataset: (folder, checkpoint)."""
    import torch

    from wsi_patchgd.training.config import load_config
    from wsi_patchgd.training.trainer import train

    w = tmp_path_factory.mktemp("bad")
    run = w / "run"
    cfg = load_config(
        tiny_dataset / "config.yaml",
        # the smallest real run: one epoch on the two fold-1 slides
        [f"output.dir={run}", "schedule.epochs=1", "output.heatmaps=0"]
        + ["data.train_folds=[1]", "data.val_folds=[0]"],
    )
    with redirect_stderr(StringIO()):
        train(cfg, quiet=True)
    ckpt = run / "checkpoints" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    torch.save(state["model"], w / "plain.pt")  # a plain state dict
    for name, key, value in (("classes3", "num_classes", 3), ("resnet", "backbone", "resnet18")):
        other = dict(state, config={**state["config"], "model": {**state["config"]["model"]}})
        other["config"]["model"][key] = value
        torch.save(other, w / f"{name}.pt")
    (w / "notes.pt").write_text("not a checkpoint\n")
    (w / "folder").mkdir()
    (w / "a-file.txt").write_text("a file\n")
    (w / "latin1.yaml").write_bytes("data:\n  manifest: caf\xe9.csv\n".encode("latin-1"))
    (w / "broken.yaml").write_text("data: [unclosed\n")
    (w / "list.yaml").write_text("- a\n- b\n")
    (w / "latin1.csv").write_bytes("slide_id,store,label\ncaf\xe9,x.zarr,0\n".encode("latin-1"))
    stores = tiny_dataset / "stores"
    (w / "bad-id.csv").write_text(
        f"slide_id,store,label,fold\ns00,{stores / 's00.zarr'},0,0\na/b,{stores / 's01.zarr'},1,1\n"
    )
    _bomb_png(w / "bomb.png")
    return w, ckpt


Result = tuple[Case, "subprocess.CompletedProcess[str] | None"]


@pytest.fixture(scope="module")
def results(
    request: pytest.FixtureRequest,
    bad_inputs: tuple[Path, Path],
    tiny_dataset: Path,  # noqa: F811
) -> dict[str, Result]:
    """Every selected case, run concurrently; None for a case that ran past its time limit."""
    w, ckpt = bad_inputs
    wanted = {
        item.callspec.params["case_id"]
        for item in request.session.items
        if "case_id" in getattr(getattr(item, "callspec", None), "params", {})
    }

    def run(case: Case) -> Result:
        keep = ("WSI_PATCHGD_DEBUG", "WSI_PATCHGD_STORAGE_OPTIONS")
        env = {k: v for k, v in os.environ.items() if k not in keep} | case.env
        try:
            r = subprocess.run(
                [sys.executable, "-m", "wsi_patchgd", *case.args],
                capture_output=True,
                text=True,
                timeout=120,  # every case fails fast; one that starts real work is a failure
                env=env,
                cwd=w,
            )
        except subprocess.TimeoutExpired:
            return case, None
        return case, r

    cases = [c for c in _cases(tiny_dataset, w, ckpt) if c.id in wanted]
    with ThreadPoolExecutor(max_workers=max(4, 2 * (os.cpu_count() or 1))) as pool:
        return {c.id: res for c, res in zip(cases, pool.map(run, cases), strict=True)}


CASE_IDS = [c.id for c in _cases(Path("ds"), Path("w"), Path("ck.pt"))]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_one_line(case_id: str, results: dict[str, Result]) -> None:
    case, r = results[case_id]
    assert r is not None, f"ran past 120 s instead of failing fast: {case.args}"
    both = r.stdout + r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "Traceback" not in both, both
    assert r.returncode == case.code, both
    assert len(errors) == 1, both
    assert case.names in errors[0], errors[0]
    assert "unexpected" not in errors[0], errors[0]
