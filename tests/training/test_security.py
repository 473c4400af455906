"""Security of runs: a checkpoint never runs code when loaded, and storage credentials never
reach the disk (config.yaml, checkpoints, summaries) or the output; a resumed run whose saved
config had them redacted gets them from the environment."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import cli
from wsi_patchgd.errors import ConfigError
from wsi_patchgd.io import REDACTED, redact_storage_options, storage_options_from_env
from wsi_patchgd.training.checkpoint import load_checkpoint


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


# --- 1. checkpoints are loaded with weights_only=True ---------------------------------------


class _Payload:
    """Unpickling this creates ``path``: what a crafted checkpoint's code would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _crafted(path: Path, marker: Path, raw: bool) -> Path:
    state = {"model": _Payload(marker), "epoch": 0, "config": {}}
    if raw:  # a plain pickle, protocol 2 (torch.load reads those too)
        with open(path, "wb") as fh:
            pickle.dump(state, fh, protocol=2)
    else:  # torch.save's zip format
        torch.save(state, path)
    return path


@pytest.mark.parametrize("raw", [False, True], ids=["torch-save", "raw-pickle"])
def test_crafted_checkpoint_is_refused_by_evaluate_and_predict(
    tiny_dataset: Path, tmp_path: Path, raw: bool
) -> None:
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker, raw)
    line = one_error_line(cli("evaluate", str(evil)))
    assert str(evil) in line and "refused" in line
    assert "io.open" in line and "weights_only=False" not in line
    store = str(tiny_dataset / "stores" / "s06.zarr")
    line = one_error_line(
        cli("predict", "--checkpoint", str(evil), store, "--out", str(tmp_path / "p.csv"))
    )
    assert "refused" in line
    assert not marker.exists() and not (tmp_path / "p.csv").exists()
    with pytest.raises(ConfigError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the file is live: unpickling it as torch < 2.6 did by default runs its code
    if raw:
        pickle.loads(evil.read_bytes())
    else:
        torch.load(evil, weights_only=False)
    assert marker.exists()


def test_crafted_last_checkpoint_is_refused_by_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _crafted(run / "checkpoints" / "last.pt", marker, raw=False)
    r = cli("train", str(tiny_dataset / "config.yaml"), f"output.dir={run}", "--resume", "-q")
    line = one_error_line(r)
    assert "last.pt" in line and "refused" in line
    assert not marker.exists()


def test_garbage_checkpoint_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(256))
    assert "bad.pt" in one_error_line(cli("evaluate", str(bad)))
    torch.save([torch.zeros(2)], tmp_path / "sd.pt")  # tensors, but not a checkpoint
    assert "not a wsi_patchgd checkpoint" in one_error_line(
        cli("evaluate", str(tmp_path / "sd.pt"))
    )


# --- 2. credentials never persisted --------------------------------------------------------


def test_redaction_keeps_options_and_drops_only_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t",
        "token": "sess",
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "s2"},
        "config_kwargs": {"signature_version": "s3v4"},
    }
    red = redact_storage_options(opts)
    assert red == {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": REDACTED,
        "secret": REDACTED,
        "token": REDACTED,
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": REDACTED},
        "config_kwargs": {"signature_version": "s3v4"},
    }
    assert opts["secret"] == "s3cr3t"  # a copy
    assert redact_storage_options({"token": "anon"}) == {"token": "anon"}  # gcsfs auth mode
    # read back: markers dropped, the environment's credentials used, nested options merged
    monkeypatch.setenv(
        "WSI_PATCHGD_STORAGE_OPTIONS",
        json.dumps({"key": "K2", "secret": "S2", "client_kwargs": {"aws_secret_access_key": "X"}}),
    )
    got = storage_options_from_env("s3://b/x", red)
    assert got == {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": "K2",
        "secret": "S2",
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "X"},
        "config_kwargs": {"signature_version": "s3v4"},
    }
    monkeypatch.delenv("WSI_PATCHGD_STORAGE_OPTIONS")
    assert REDACTED not in json.dumps(storage_options_from_env("s3://b/x", red))


KEY = "AKIAWSIPGDKEY7Q3XZ"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETZ9"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN0042"


def _no_aws_env() -> dict[str, str]:
    """This process's environment without any AWS credentials (nor files or metadata)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WSI_PATCHGD_"))}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


def test_s3_credentials_never_reach_the_run_directory(
    tiny_dataset: Path, s3_bucket: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    import s3fs

    from wsi_patchgd.data.manifest import ManifestRow, read_manifest, write_manifest

    bucket, so = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key=so["key"], secret=so["secret"])
    rows = []
    for r in read_manifest(str(tiny_dataset / "manifest.csv"), check_stores=False):
        dest = f"{bucket}/stores/{Path(r.store).name}"
        fs.put(r.store, dest, recursive=True)
        rows.append(ManifestRow(r.slide_id, dest, r.label, r.fold))
    write_manifest(str(tmp_path / "s3.csv"), rows)
    cfg = yaml.safe_load((tiny_dataset / "config.yaml").read_text())
    storage = {
        "endpoint_url": so["endpoint_url"],
        "key": KEY,
        "secret": SECRET,
        "token": TOKEN,
        "client_kwargs": {"aws_secret_access_key": SECRET},
    }
    cfg["data"].update(manifest=str(tmp_path / "s3.csv"), storage_options=storage)
    cfg["schedule"]["epochs"] = 1
    cfg["output"].update(dir=str(tmp_path / "run"), heatmaps=1)
    user_cfg = tmp_path / "user.yaml"  # the user's own file: outside the run directory
    user_cfg.write_text(yaml.safe_dump(cfg))
    secrets = [KEY, SECRET, TOKEN]
    # the user's config is the only place with credentials: the subprocess has none in its env
    r = cli("train", str(user_cfg), "-q", env=_no_aws_env())
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"

    def assert_clean(outputs: str) -> None:
        files = [p for p in run.rglob("*") if p.is_file()]
        assert {"config.yaml", "last.pt", "best.pt", "summary.json", "summary.md"} <= {
            p.name for p in files
        }
        for p in files:  # every byte of every file, checkpoints included (zip, uncompressed)
            data = p.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{s} in {p}"
        for s in secrets:
            assert s not in outputs

    assert_clean(r.stdout + r.stderr)
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["storage_options"]
    assert saved["endpoint_url"] == so["endpoint_url"] and saved["secret"] == REDACTED
    ck = load_checkpoint(run / "checkpoints" / "last.pt")["config"]["data"]["storage_options"]
    assert ck == saved

    # resume from the run's own (redacted) config: without credentials it cannot read the
    # stores (so the markers are not used as credentials) ...
    resume = ("train", str(run / "config.yaml"), "schedule.epochs=2", "--resume", "-q")
    r = cli(*resume, env=_no_aws_env())
    line = one_error_line(r)
    assert "credentials" in line.lower()
    # ... and with them from the environment, it goes on
    env = _no_aws_env() | {
        "WSI_PATCHGD_STORAGE_OPTIONS": json.dumps({"key": KEY, "secret": SECRET})
    }
    r = cli(*resume, env=env)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # evaluate reads the checkpoint's redacted config, credentials from the environment too
    r = cli("evaluate", str(run), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)["epoch"] == load_checkpoint(run / "checkpoints" / "best.pt")["epoch"]
    )
    assert_clean(r.stdout + r.stderr)
