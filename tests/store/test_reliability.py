"""Never lose or corrupt a store: one job per store (a lock, locally and on S3), "complete" means
every array is there (damaged stores are reported and repaired), and ``--overwrite`` switches the
new store in so that a kill at any step leaves the old or the new complete store readable.

Real slides, real stores on disk, the real moto S3 server, real subprocesses killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs
import zarr
from click.testing import CliRunner

import wsi_patchgd.store.overwrite as overwrite
from tests.conftest import CMU, KIDNEY
from wsi_patchgd.cli import main as cli
from wsi_patchgd.errors import StoreIncompleteError
from wsi_patchgd.io import zarr_store
from wsi_patchgd.store import ConvertOptions, SlideStore, convert_many, convert_slide
from wsi_patchgd.store.lock import StoreLock, StoreLocked, host_id
from wsi_patchgd.store.verify import verify_store

OPTS = ConvertOptions(patch_size=256, shard_patches=4, min_level_size=256)
NEW = ConvertOptions(patch_size=128, shard_patches=4, min_level_size=256, overwrite=True)
OLD = ConvertOptions(patch_size=256, shard_patches=4, min_level_size=256, overwrite=True)


def arrays(url: str, so: dict[str, Any] | None = None, coarsest: bool = False) -> dict[str, Any]:
    """Every array of a store (levels, tissue mask, patch tables), read through zarr
    (``coarsest``: of the levels only the last, fewer requests)."""
    g = zarr.open_group(zarr_store(url, so, read_only=True), mode="r")
    levels = sorted((k for k, _ in g.arrays()), key=int)
    out = {k: np.asarray(g[k][:]) for k in (levels[-1:] if coarsest else levels)}
    out.update({f"tissue/{k}": np.asarray(v[:]) for k, v in g["tissue"].arrays()})
    frac: Any = g["tissue/fraction"]
    out.update({f"tissue/fraction/{k}": np.asarray(v[:]) for k, v in frac.arrays()})
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def dead_pid() -> int:
    """The id of a process of this machine that has exited (and been reaped)."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(p.stdout)


@pytest.fixture(scope="module")
def kidney(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """KIDNEY converted with patch 256 and with patch 128 (an --overwrite's old and new)."""
    out = tmp_path_factory.mktemp("kidney")
    res = {}
    for name, opts in (("old", OPTS), ("new", NEW)):
        dest = out / name / "k.zarr"
        assert convert_slide(str(KIDNEY), str(dest), opts).status == "ok"
        res[name] = dest
    return res


# --------------------------------------------------------------------------------------------
# the lock


def test_local_lock_is_exclusive_heartbeats_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    store = str(tmp_path / "s.zarr")
    a, b = StoreLock(store, stale_after=1.5), StoreLock(store, stale_after=1.5)
    assert a.acquire()
    t0 = time.monotonic()
    assert not b.acquire(wait=2.0)  # waited past stale_after: a's heartbeat kept it fresh
    assert time.monotonic() - t0 >= 2.0
    assert b.holder is not None and b.holder["pid"] == os.getpid()
    assert b.busy_reason().startswith(f"locked by another job (pid {os.getpid()} on ")
    a.check()
    a.release()
    assert not Path(a.path).exists()
    assert b.acquire() and Path(b.path).exists()
    b.release()

    lock = Path(store + ".lock")
    # a killed job's lock on this machine: stale at once
    lock.write_text(json.dumps({"owner": "x", "host": host_id(), "pid": dead_pid()}))
    c = StoreLock(store)
    assert c.acquire()
    assert json.loads(lock.read_text())["owner"] == c.owner
    c.release()
    # another machine's lock: stale only once its heartbeat is old
    lock.write_text(json.dumps({"owner": "y", "host": "elsewhere", "pid": 1}))
    assert not StoreLock(store, stale_after=30).acquire()
    os.utime(lock, (time.time() - 60, time.time() - 60))
    d = StoreLock(store, stale_after=30)
    assert d.acquire()
    # a job whose lock was taken over stops before its next irreversible step
    lock.write_text(json.dumps({"owner": "z", "host": "elsewhere", "pid": 1}))
    with pytest.raises(StoreLocked, match="lost the store's lock"):
        d.check()
    d.release()
    assert json.loads(lock.read_text())["owner"] == "z"  # not ours: left alone


def test_s3_lock_conditional_create_heartbeat_and_single_takeover(
    s3_bucket: tuple[str, dict[str, str]],
) -> None:
    bucket, so = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key="testing", secret="testing")
    store = f"{bucket}/s.zarr"
    key = f"{bucket}/s.zarr.lock"[len("s3://") :]
    a, b = StoreLock(store, so, stale_after=1.5), StoreLock(store, so, stale_after=1.5)
    assert a.acquire()
    first = json.loads(fs.cat_file(key))["heartbeat"]
    assert not b.acquire(wait=2.0)  # If-None-Match: * refused it; a's heartbeat kept it fresh
    assert json.loads(fs.cat_file(key))["heartbeat"] > first
    a.check()
    a.release()
    assert not fs.exists(key)
    # a stale lock (old heartbeat, another machine): of two jobs taking it over, one wins
    fs.pipe_file(key, json.dumps({"owner": "x", "host": "elsewhere", "heartbeat": 0}).encode())
    tag = fs.info(key)["ETag"]
    c, d = StoreLock(store, so), StoreLock(store, so)
    assert c._take_over(tag) and not d._take_over(tag)
    assert json.loads(fs.cat_file(key))["owner"] == c.owner
    assert not d.acquire()
    c.release()
    # a killed job's lock on this machine: stale at once
    fs.pipe_file(key, json.dumps({"owner": "k", "host": host_id(), "pid": dead_pid(),
                                  "heartbeat": time.time()}).encode())  # fmt: skip
    e = StoreLock(store, so)
    assert e.acquire()
    e.release()


def test_locked_store_is_reported_skipped(tmp_path: Path, data_dir: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    other = StoreLock(str(out / "kidney-48-5.zarr"))
    assert other.acquire()
    try:
        opts = ConvertOptions(**{**OPTS.__dict__, "lock_wait": 0.3})
        res = convert_many([str(KIDNEY), str(CMU)], str(out), opts, workers=1, quiet=True,
                           report=str(tmp_path / "r.json"))  # fmt: skip
    finally:
        other.release()
    assert [r.status for r in res] == ["skipped", "ok"]
    assert res[0].reason is not None and res[0].reason.startswith("locked by another job")
    assert not (out / "kidney-48-5.zarr").exists()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["skipped"] == 1 and doc["summary"]["locked"] == 1
    assert "skipped: " + str(KIDNEY) + " (locked by another job" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cmu-1-small-region.zarr"]  # no lock left


def test_two_concurrent_jobs_on_the_same_stores(tmp_path: Path, data_dir: Path) -> None:
    """Two real `convert` processes, same slides, same --out: per slide, one converts and the
    other skips it (waited and found it complete, or found it locked); every store is complete,
    has every array, and equals a single job's result. (Without the lock both jobs converted the
    same store at once: one failed, or a store ended complete without its tissue mask.)"""
    out = tmp_path / "out"
    slides = [str(CMU), str(KIDNEY)]
    args = ["--patch-size", "128", "--shard-patches", "2", "--workers", "1", "-q"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsi_patchgd",
                "convert",
                *slides,
                "--out",
                str(out),
                *args,
                "--report",
                str(tmp_path / f"r{i}.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in (0, 1)]
    names = [Path(s).name.rsplit(".", 1)[0] + ".zarr" for s in slides]
    for k, (src, name) in enumerate(zip(slides, names, strict=True)):
        lines = [r["slides"][k] for r in reports]
        assert sorted(ln["status"] for ln in lines) == ["ok", "skipped"], (src, reports)
        reason = next(ln["reason"] for ln in lines if ln["status"] == "skipped")
        assert reason == "already complete" or reason.startswith("locked by another job")
        store = SlideStore(str(out / name))
        assert store.complete and store.verify() == []
        ref = str(tmp_path / "ref" / name)
        assert (
            convert_slide(src, ref, ConvertOptions(patch_size=128, shard_patches=2)).status == "ok"
        )
        assert_same(arrays(str(out / name)), arrays(ref))
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no lock, no rebuild left


# --------------------------------------------------------------------------------------------
# complete means complete


def test_damaged_store_is_reported_by_info_and_repaired_by_convert(
    kidney: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "k.zarr"
    shutil.copytree(kidney["old"], dest)
    ref = arrays(str(dest))
    shutil.rmtree(dest / "tissue" / "mask")
    assert SlideStore(str(dest)).verify() == ["tissue/mask missing"]
    r = CliRunner().invoke(cli, ["info", str(dest)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {dest}: store is marked complete")
    assert "tissue/mask missing" in lines[0] and "rerun `wsi-patchgd convert`" in lines[0]
    res = convert_slide(str(KIDNEY), str(dest), OPTS)
    assert res.status == "ok" and res.resumed and res.reason == "repaired (tissue/mask missing)"
    assert res.megapixels == 0  # the levels were intact: not written again
    assert SlideStore(str(dest)).verify() == []
    assert_same(arrays(str(dest)), ref)
    assert CliRunner().invoke(cli, ["info", str(dest)]).exit_code == 0
    assert convert_slide(str(KIDNEY), str(dest), OPTS).status == "skipped"
    assert not (dest / ".progress").exists()

    # a missing level: it and the levels above it are written again
    shutil.rmtree(dest / "1")
    assert SlideStore(str(dest)).verify() == ["1 missing"]
    res = convert_slide(str(KIDNEY), str(dest), OPTS)
    assert res.status == "ok" and res.reason == "repaired (1 missing)"
    shapes = [SlideStore(str(dest)).level_shape(i) for i in (1, 2)]
    assert res.megapixels == pytest.approx(sum(h * w for h, w in shapes) / 1e6)
    assert_same(arrays(str(dest)), ref)


def test_deep_verification_and_leftover_partials(kidney: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "k.zarr"
    shutil.copytree(kidney["old"], dest)
    g = zarr.open_group(str(dest), mode="r+")
    g["tissue/fraction"].create_array("0", shape=(1, 1), dtype="float32", overwrite=True)
    store = SlideStore(str(dest))
    assert store.verify(deep=False) == []  # every node is there ...
    (problem,) = store.verify()  # ... but one has the wrong shape
    assert problem.startswith("tissue/fraction/0 has shape (1, 1), attributes say")
    assert verify_store(str(dest), None, store.meta, deep=True) == [problem]
    # a killed shard write leaves a *.partial file; resuming deletes it
    meta = dict(g.attrs["wsi_patchgd"])
    g.attrs["wsi_patchgd"] = {**meta, "complete": False}
    partial = dest / "0" / "c" / "0" / "0" / "0.deadbeef.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"torn")
    with pytest.raises(StoreIncompleteError):
        SlideStore(str(dest))
    r = CliRunner().invoke(cli, ["info", str(dest)])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert r.output.startswith(f"error: {dest}: store is incomplete"), r.output
    assert convert_slide(str(KIDNEY), str(dest), OPTS).status == "ok"
    assert not partial.exists()
    assert SlideStore(str(dest)).verify() == []
    assert_same(arrays(str(dest)), arrays(str(kidney["old"])))


# --------------------------------------------------------------------------------------------
# --overwrite


_KILLER = """
import os, signal, sys
import wsi_patchgd.store.overwrite as overwrite
from wsi_patchgd.store import ConvertOptions, convert_slide
step = sys.argv[1]
def kill(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
overwrite.fault_hook = kill
opts = ConvertOptions(patch_size=128, shard_patches=4, min_level_size=256, overwrite=True)
convert_slide(sys.argv[2], sys.argv[3], opts)
sys.exit(3)  # the step was never reached
"""

LOCAL_STEPS = [
    "rebuild:complete",
    "switch:start",
    "switch:old-moved-aside",
    "switch:new-in-place",
    "switch:old-unmarked",
]


@pytest.mark.parametrize("step", LOCAL_STEPS)
def test_local_overwrite_sigkilled_at_every_step(
    step: str, kidney: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "k.zarr"
    shutil.copytree(kidney["old"], dest)
    refs = {256: arrays(str(kidney["old"])), 128: arrays(str(kidney["new"]))}
    p = subprocess.run([sys.executable, "-c", _KILLER, step, str(KIDNEY), str(dest)])
    assert p.returncode == -9, f"not killed at {step}"
    store = SlideStore(str(dest))  # the old or the new complete store, whatever is on disk
    assert store.complete and store.verify() == []
    assert_same(arrays(store.location), refs[store.patch_size])
    expect_new = step != "rebuild:complete" and step != "switch:start"
    assert store.patch_size == (128 if expect_new else 256)
    if step == "switch:old-moved-aside":  # nothing at dest: the rebuild is read
        assert not dest.exists() and store.location == str(dest) + ".rebuild"
    # a rerun of the killed job finishes it, and leaves nothing beside the store
    res = convert_slide(str(KIDNEY), str(dest), NEW)
    assert res.status == "ok", res
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.zarr"]
    store = SlideStore(str(dest))
    assert store.patch_size == 128 and store.location == str(dest)
    assert_same(arrays(str(dest)), refs[128])


S3_STEPS = [
    "rebuild:complete",
    "switch:start",
    "switch:old-unmarked",
    "switch:old-deleted",
    "switch:new-copied",
    "switch:new-in-place",
    "switch:rebuild-unmarked",
]


class Killed(BaseException):
    """Stands for a kill: nothing catches it."""


@pytest.fixture()
def fault_at() -> Iterator[list[str]]:
    steps: list[str] = []

    def hook(name: str) -> None:
        if steps and name == steps[0]:
            raise Killed(name)

    overwrite.fault_hook = hook
    try:
        yield steps
    finally:
        overwrite.fault_hook = None


def upload(local: Path, url: str, fs: s3fs.S3FileSystem) -> None:
    files = [p for p in local.rglob("*") if p.is_file()]
    fs.put([str(p) for p in files], [f"{url[5:]}/{p.relative_to(local)}" for p in files])


def test_s3_overwrite_and_a_failure_at_every_step(
    s3_bucket: tuple[str, dict[str, str]], kidney: dict[str, Path], fault_at: list[str]
) -> None:
    bucket, so = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=so["endpoint_url"], key="testing", secret="testing")
    dest = f"{bucket}/k.zarr"
    refs = {256: arrays(str(kidney["old"])), 128: arrays(str(kidney["new"]))}
    coarse = set(arrays(str(kidney["old"]), coarsest=True))  # the same names in both

    def names() -> set[str]:
        fs.invalidate_cache()
        return {k.split("/")[1] for k in fs.find(bucket[5:])}

    upload(kidney["old"], dest, fs)
    assert SlideStore(dest, so).patch_size == 256
    # a plain --overwrite on S3 (it used to fail every time, leaving a .rebuild copy)
    res = convert_slide(str(KIDNEY), dest, NEW, store_options=so)
    assert res.status == "ok", res
    store = SlideStore(dest, so)
    assert store.patch_size == 128 and store.location == dest and store.verify() == []
    assert_same(arrays(dest, so), refs[128])
    assert names() == {"k.zarr"}

    # killed once the rebuild is complete: the old store stays; a rerun switches the new in
    fault_at[:] = ["rebuild:complete"]
    with pytest.raises(Killed):
        convert_slide(str(KIDNEY), dest, OLD, store_options=so)
    fault_at[:] = []
    store = SlideStore(dest, so)
    assert store.patch_size == 128 and store.verify() == []
    assert names() == {"k.zarr", "k.zarr.rebuild"}
    res = convert_slide(str(KIDNEY), dest, OLD, store_options=so)
    assert res.status == "ok" and res.megapixels == 0, res  # switched in, not rebuilt
    assert SlideStore(dest, so).patch_size == 256
    assert_same(arrays(dest, so, coarsest=True), {k: refs[256][k] for k in coarse})
    assert names() == {"k.zarr"}

    # killed at each step of the switch (old store at k.zarr, complete new one beside it)
    for step in S3_STEPS[1:]:
        fs.rm(fs.find(bucket[5:]))
        upload(kidney["old"], dest, fs)
        upload(kidney["new"], dest + ".rebuild", fs)
        fault_at[:] = [step]
        with pytest.raises(Killed):
            convert_slide(str(KIDNEY), dest, NEW, store_options=so)
        fault_at[:] = []
        store = SlideStore(dest, so)
        assert store.complete and store.verify() == [], step
        assert store.patch_size == (256 if step == "switch:start" else 128), step
        if step in ("switch:old-unmarked", "switch:old-deleted", "switch:new-copied"):
            assert store.location == dest + ".rebuild", step  # k.zarr has no zarr.json now
        # a rerun, even without --overwrite, finishes the switch
        res = convert_slide(str(KIDNEY), dest, replace(NEW, overwrite=False), store_options=so)
        assert res.status == "skipped" and res.reason == "already complete", (step, res)
        store = SlideStore(dest, so)
        assert store.patch_size == 128 and store.location == dest, step
        assert_same(arrays(dest, so, coarsest=True), {k: refs[128][k] for k in coarse})
        assert names() == {"k.zarr"}, step
