"""The benchmark's store: a synthetic slide of real tissue, converted once, uploaded to moto."""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import ensure_slide, log, texture_tiles


def local_store(workdir: Path, size: int, codec: str) -> Path:
    """The complete store of the size x size synthetic slide (built if missing)."""
    from wsi_patchgd.errors import WsiPatchGDError
    from wsi_patchgd.store import ConvertOptions, SlideStore, convert_slide

    dest = workdir / "stream" / f"tissue_{size}_{codec}.zarr"
    try:
        SlideStore(str(dest))
        log(f"store: cached {dest}")
        return dest
    except WsiPatchGDError:
        pass
    slide = ensure_slide(workdir, size, texture_tiles())
    log(f"store: converting {slide.name} ({codec}) ...")
    res = convert_slide(str(slide), str(dest), ConvertOptions(codec=codec, overwrite=True))
    if res.status != "ok":
        raise SystemExit(f"conversion failed: {res}")
    return dest


def upload(store: Path, opts: dict[str, str], names: list[str]) -> tuple[list[str], float]:
    """Upload the store under each name to bucket ``bench``; returns (URLs, MB per copy)."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=opts["key"], secret=opts["secret"], endpoint_url=opts["endpoint_url"]
    )
    if not fs.exists("bench"):
        fs.mkdir("bench")
    files = [p for p in store.rglob("*") if p.is_file() and ".progress" not in p.parts]
    urls = []
    for name in names:
        dest = f"bench/{name}"
        fs.put(
            [str(p) for p in files], [f"{dest}/{p.relative_to(store).as_posix()}" for p in files]
        )
        urls.append(f"s3://{dest}")
    return urls, sum(p.stat().st_size for p in files) / 1e6
