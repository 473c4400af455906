"""The ``wsi_patchgd`` attributes of a store as typed, frozen objects (parse and write back).

What the conversion writes under the group attribute ``wsi_patchgd`` (see
:func:`wsi_patchgd.store.store_metadata` and :mod:`wsi_patchgd.store.format`) is a JSON
object; :meth:`StoreMeta.from_dict` checks it and gives it types, :meth:`StoreMeta.to_dict`
gives back exactly that object (keys this version does not know are kept in ``extra``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError

_FIX = "rerun `wsi-patchgd convert` on its source to rebuild it"


def _bad(where: str, key: str, what: str) -> StoreError:
    return StoreError(f"{where}: store attributes {key!r} {what}; {_FIX}")


def _get(d: Mapping[str, Any], key: str, where: str, prefix: str = "") -> Any:
    if key not in d:
        raise _bad(where, prefix + key, "missing")
    return d[key]


def _num(d: Mapping[str, Any], key: str, where: str, kind: type, prefix: str = "") -> Any:
    v = _get(d, key, where, prefix)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(where, prefix + key, f"is {v!r}, not a number")
    if kind is int and int(v) != v:
        raise _bad(where, prefix + key, f"is {v!r}, not an integer")
    return kind(v)


def _opt_num(d: Mapping[str, Any], key: str, where: str, prefix: str = "") -> float | None:
    if d.get(key) is None:
        return None
    return float(_num(d, key, where, float, prefix))


def _str(d: Mapping[str, Any], key: str, where: str, prefix: str = "") -> str:
    v = _get(d, key, where, prefix)
    if not isinstance(v, str):
        raise _bad(where, prefix + key, f"is {v!r}, not a string")
    return v


def _mapping(v: Any, where: str, key: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(where, key, f"is {v!r}, not an object")
    return v


@dataclass(frozen=True)
class LevelMeta:
    """One pyramid level as recorded in the attributes.

    Attributes:
        shape: (3, height, width) of the level's array.
        downsample: size of level 0 over the size of this level.
        origin: where its pixels came from: ``source:<j>`` (level j of the source) or
            ``downsample:<i>`` (2x2 mean of level i of the store).
        codec: how its chunks are encoded (``blosc-lz4``, ``jpeg (source tiles, unchanged)``...).
    """

    shape: tuple[int, int, int]
    downsample: float
    origin: str
    codec: str

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @classmethod
    def from_dict(cls, d: Any, where: str, index: int = 0) -> LevelMeta:
        """Parse one entry of ``levels``; ``where`` names the store in errors."""
        pre = f"levels[{index}]."
        d = _mapping(d, where, f"levels[{index}]")
        shape = _get(d, "shape", where, pre)
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise _bad(where, pre + "shape", f"is {shape!r}, not [3, height, width]")
        return cls(
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            downsample=_num(d, "downsample", where, float, pre),
            origin=_str(d, "origin", where, pre),
            codec=_str(d, "codec", where, pre),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "downsample": self.downsample,
            "origin": self.origin,
            "codec": self.codec,
        }


@dataclass(frozen=True)
class SourceMeta:
    """The identity of the slide a store was converted from (what 'same source' means).

    Attributes:
        name: file name of the source.
        url: path or URL it was read from (``generated:<name>`` for generated images).
        size: its size in bytes (0 for generated images).
        mtime: its modification time as the filesystem gave it (None where unknown).
        extra: any further keys (how a generated image was made ...).
    """

    name: str
    url: str
    size: int
    mtime: int | float | str | None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SourceMeta:
        d = _mapping(d, where, "source")
        name = _str(d, "name", where, "source.")
        url = _str(d, "url", where, "source.")
        size = _num(d, "size", where, int, "source.")
        mtime = _get(d, "mtime", where, "source.")
        if mtime is not None and (
            isinstance(mtime, bool) or not isinstance(mtime, (int, float, str))
        ):
            raise _bad(where, "source.mtime", f"is {mtime!r}, not a time")
        known = ("name", "url", "size", "mtime")
        return cls(name, url, size, mtime, {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "url": self.url,
            "size": self.size,
            "mtime": self.mtime,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class TissueMeta:
    """How tissue was found, and where the mask is; None: not recorded (yet).

    An incomplete store records only ``params``; a generated image records ``method`` instead.

    Attributes:
        params: tissue-detection parameters (:meth:`wsi_patchgd.tissue.TissueParams.to_dict`).
        mask_level: the store level the mask was computed on.
        mask_downsample: that level's downsample (mask pixel size in level-0 pixels).
        fraction: tissue fraction of the whole slide.
        method: how the mask was made, where it was not detected (``all``).
        extra: any further keys (``note`` ...).
    """

    params: Mapping[str, Any] | None = field(default=None, hash=False)
    mask_level: int | None = None
    mask_downsample: float | None = None
    fraction: float | None = None
    method: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TissueMeta:
        d = _mapping(d, where, "tissue")
        params = d.get("params")
        if params is not None:
            params = dict(_mapping(params, where, "tissue.params"))
        method = d.get("method")
        if method is not None and not isinstance(method, str):
            raise _bad(where, "tissue.method", f"is {method!r}, not a string")
        known = ("params", "mask_level", "mask_downsample", "fraction", "method")
        return cls(
            params=params,
            mask_level=(
                None
                if d.get("mask_level") is None
                else _num(d, "mask_level", where, int, "tissue.")
            ),
            mask_downsample=_opt_num(d, "mask_downsample", where, "tissue."),
            fraction=_opt_num(d, "fraction", where, "tissue."),
            method=method,
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.method is not None:
            out["method"] = self.method
        if self.params is not None:
            out["params"] = dict(self.params)
        for key in ("mask_level", "mask_downsample", "fraction"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out


_TOP_KEYS = (
    "format_version",
    "source",
    "reader",
    "vendor",
    "mpp",
    "objective_power",
    "patch_size",
    "shard_size",
    "codec",
    "levels",
    "tissue",
    "complete",
)


@dataclass(frozen=True)
class StoreMeta:
    """The ``wsi_patchgd`` attributes of a slide store.

    Attributes:
        format_version: layout version (:data:`wsi_patchgd.store.format.FORMAT_VERSION`).
        source: the slide it was converted from.
        reader: the reader that read the source (``tifffile``, ``openslide``, ...).
        vendor: the source's vendor (``aperio``, ...; ``unknown``).
        mpp: micrometres per pixel of level 0, None where the source did not say.
        objective_power: the scanner objective (20, 40 ...), None where unknown.
        patch_size: chunk side P = training patch size.
        shard_size: shard side S (a multiple of P).
        codec: the codec asked for (one of :data:`wsi_patchgd.store.format.CODECS`).
        levels: the pyramid, level 0 first.
        tissue: tissue detection and mask.
        complete: the conversion finished and every node was verified.
        extra: top-level keys this version does not know.
    """

    format_version: int
    source: SourceMeta
    reader: str
    vendor: str
    mpp: float | None
    objective_power: float | None
    patch_size: int
    shard_size: int
    codec: str
    levels: tuple[LevelMeta, ...]
    tissue: TissueMeta
    complete: bool
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_dict(cls, d: Any, where: str = "store") -> StoreMeta:
        """Check and type the attributes of a store.

        Args:
            d: the ``wsi_patchgd`` attribute object.
            where: the store's URL (named in errors).

        Raises:
            StoreError: a key is missing or has a value of the wrong kind (the message names
                the store and the key).
        """
        d = _mapping(d, where, "wsi_patchgd")
        levels = _get(d, "levels", where)
        if not isinstance(levels, (list, tuple)) or not levels:
            raise _bad(where, "levels", f"is {levels!r}, not a list of levels")
        complete = _get(d, "complete", where)
        if not isinstance(complete, bool):
            raise _bad(where, "complete", f"is {complete!r}, not true or false")
        for key in ("mpp", "objective_power"):
            _get(d, key, where)
        return cls(
            format_version=_num(d, "format_version", where, int),
            source=SourceMeta.from_dict(_get(d, "source", where), where),
            reader=_str(d, "reader", where),
            vendor=_str(d, "vendor", where),
            mpp=_opt_num(d, "mpp", where),
            objective_power=_opt_num(d, "objective_power", where),
            patch_size=_num(d, "patch_size", where, int),
            shard_size=_num(d, "shard_size", where, int),
            codec=_str(d, "codec", where),
            levels=tuple(LevelMeta.from_dict(lv, where, i) for i, lv in enumerate(levels)),
            tissue=TissueMeta.from_dict(_get(d, "tissue", where), where),
            complete=complete,
            extra={k: v for k, v in d.items() if k not in _TOP_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The attribute object, as :func:`~wsi_patchgd.store.store_metadata` writes it."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "source": self.source.to_dict(),
            "reader": self.reader,
            "vendor": self.vendor,
            "mpp": self.mpp,
            "objective_power": self.objective_power,
            "patch_size": self.patch_size,
            "shard_size": self.shard_size,
            "codec": self.codec,
            "levels": [lv.to_dict() for lv in self.levels],
            "tissue": self.tissue.to_dict(),
            "complete": self.complete,
        }
        out.update(self.extra)
        return out
