"""Writing whole shards of a sharded Zarr v3 uint8 array directly (the mirror of
:mod:`~wsi_patchgd.store.chunk_reader`).

A conversion task owns one shard, so it can encode its chunks itself (Blosc/Zstd release the
GIL, so threads run in parallel) and write the shard object in one put: chunks back to back,
then the index (``offset, nbytes`` uint64 little-endian per chunk, C order) and its CRC32C, as
the sharding spec says for ``index_location: end``. Chunks that are all fill value are not
stored (index entry 2**64-1), as zarr does with ``write_empty_chunks=False``. Local writes go
to a temporary file renamed into place, so a killed task never leaves a torn shard.
"""

from __future__ import annotations

import os
import uuid

import numpy as np

from .chunk_reader import ShardedArray

_EMPTY = 2**64 - 1


class ShardWriter(ShardedArray):
    """Encodes and writes whole shards of one array (metadata must satisfy ``supports``)."""

    def encode(self, block: np.ndarray, shard_index: tuple[int, ...]) -> bytes | None:
        """The shard object for ``block``, the array's data in that shard (clipped at the
        array's edge). None when every chunk is fill value (nothing to store)."""
        if self.jpeg is not None:
            raise ValueError("JPEG passthrough levels are written with write_encoded")
        chunks: dict[tuple[int, ...], bytes] = {}
        for inner in np.ndindex(*self.per_shard):
            lo = [i * c for i, c in zip(inner, self.chunk, strict=True)]
            sl = tuple(
                slice(lo_, min(lo_ + c, b))
                for lo_, c, b in zip(lo, self.chunk, block.shape, strict=True)
            )
            if any(s.start >= s.stop for s in sl):
                continue  # beyond the array's edge
            part = block[sl]
            if part.shape != self.chunk:
                padded = np.full(self.chunk, self.fill, np.uint8)
                padded[tuple(slice(0, n) for n in part.shape)] = part
                part = padded
            elif part.flat[0] == self.fill and (part == self.fill).all():
                continue  # all fill value: not stored
            data = np.ascontiguousarray(part)
            chunks[inner] = (
                bytes(self._codec.encode(data)) if self._codec is not None else data.tobytes()
            )
        return self.assemble(chunks)

    def assemble(self, chunks: dict[tuple[int, ...], bytes]) -> bytes | None:
        """A shard object from already encoded chunks (inner index -> bytes; absent chunks
        read as fill value). None when there is no chunk."""
        if not chunks:
            return None
        import google_crc32c

        index = np.full(self.per_shard + (2,), _EMPTY, dtype="<u8")
        parts: list[bytes] = []
        offset = 0
        for inner in np.ndindex(*self.per_shard):  # C order, as zarr writes them
            raw = chunks.get(inner)
            if raw is None:
                continue
            index[inner] = (offset, len(raw))
            parts.append(raw)
            offset += len(raw)
        idx = index.tobytes()
        crc = int(google_crc32c.value(idx)).to_bytes(4, "little")
        parts += [idx, crc]
        return b"".join(parts)

    def write_encoded(
        self, chunks: dict[tuple[int, ...], bytes], shard_index: tuple[int, ...]
    ) -> None:
        """Store one shard made of already encoded chunks (JPEG passthrough)."""
        self.put(self.assemble(chunks), shard_index)

    def write(self, block: np.ndarray, shard_index: tuple[int, ...]) -> None:
        """Encode and store one shard (removing the object when it is all fill value)."""
        self.put(self.encode(block, shard_index), shard_index)

    def put(self, data: bytes | None, shard_index: tuple[int, ...]) -> None:
        """Store one shard object as :meth:`encode` or :meth:`assemble` made it (None: remove
        the object, the shard is all fill value); local files are renamed into place."""
        path = self._shard_path(shard_index)
        if self.remote:
            if data is None:
                if self._fs.exists(path):
                    self._fs.rm(path)
            else:
                self._fs.pipe_file(path, data)
            return
        if data is None:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
