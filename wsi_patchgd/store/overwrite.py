"""The ``--overwrite`` switch: a complete rebuild put in place of the store, and a switch a kill
interrupted finished.

``overwrite`` rebuilds into a sibling ``<store>.rebuild`` and switches it in only when it is
complete and verified (:func:`switch_in`): locally by two renames (old moved aside, new moved
in), on object storage by deleting the old store (its ``zarr.json`` first) and copying the new
one over (its ``zarr.json`` last). While the store itself is absent or incomplete,
:class:`~wsi_patchgd.store.SlideStore` reads the complete store beside it, and the next run on
that store (any options) finishes the switch first (:func:`recover`), so a kill at any point
leaves the old or the new complete store readable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

from ..io import StorageOptions, filesystem, is_remote, local_path
from .lifecycle import find_keys, old_url, rebuild_url, remove_store, store_state
from .verify import verify_store

#: Test hook: called with the name of each step of an ``--overwrite`` switch (``switch:*``,
#: ``rebuild:complete``); tests kill the process there. None in normal use.
fault_hook: Callable[[str], None] | None = None


def step(name: str) -> None:
    """Mark a step of the switch (calls :data:`fault_hook`, if set)."""
    if fault_hook is not None:
        fault_hook(name)


def switch_in(dest: str, storage_options: StorageOptions | None) -> None:
    """Put the complete, verified ``dest.rebuild`` in the place of ``dest``.

    At every moment the old or the new complete store is readable (``SlideStore`` reads the
    rebuild while ``dest`` is absent or incomplete), and a rerun that finds the rebuild
    complete calls this again to finish (:func:`recover`). Locally: ``dest`` is renamed to
    ``dest.old``, the rebuild to ``dest``, then ``dest.old`` is deleted. On object storage, where
    a rename is a copy and a delete: ``dest`` is deleted (its ``zarr.json`` first), the rebuild's
    objects are copied over, its ``zarr.json`` last, then the rebuild is deleted.
    """
    rebuild = rebuild_url(dest)
    step("switch:start")
    if not is_remote(dest):
        d, r, o = local_path(dest), local_path(rebuild), local_path(old_url(dest))
        if d.exists():
            if o.exists():
                remove_store(str(o), None)
            os.rename(d, o)  # readers use the complete rebuild from here
            step("switch:old-moved-aside")
        os.rename(r, d)
        step("switch:new-in-place")
        if o.exists():
            remove_store(str(o), None, between=partial(step, "switch:old-unmarked"))
        return
    fs, dpath = filesystem(dest, storage_options)
    _, rpath = filesystem(rebuild, storage_options)
    d_root, r_root = dpath + "/zarr.json", rpath + "/zarr.json"
    new_root = fs.cat_file(r_root)
    fs.invalidate_cache(dpath)
    if not (fs.exists(d_root) and fs.cat_file(d_root) == new_root):  # else: copied already
        # readers use the rebuild from the moment the old zarr.json is gone
        remove_store(dest, storage_options, between=partial(step, "switch:old-unmarked"))
        step("switch:old-deleted")
        src = [k for k in find_keys(fs, rpath) if k != r_root]
        if src:
            fs.copy(src, [dpath + k[len(rpath) :] for k in src])
        step("switch:new-copied")
        fs.pipe_file(d_root, new_root)  # the copy is a complete store from here
        step("switch:new-in-place")
    remove_store(rebuild, storage_options, between=partial(step, "switch:rebuild-unmarked"))


def recover(dest: str, storage_options: StorageOptions | None) -> dict[str, Any] | None:
    """Finish what an interrupted ``--overwrite`` left (under the store's lock, first thing).

    A complete, verified ``dest.rebuild`` is the newest store there is: it is switched in.
    The remains of a half-deleted rebuild or old store are deleted; an old store moved aside
    with nothing in its place is put back. Returns the attributes of a store switched in.
    """
    rebuild = rebuild_url(dest)
    state = store_state(rebuild, storage_options)
    if state == {}:
        remove_store(rebuild, storage_options)  # no zarr.json: a deleted rebuild's remains
    elif state and state.get("complete") is True:
        if not verify_store(rebuild, storage_options, state):
            switch_in(dest, storage_options)
            return state
    if not is_remote(dest) and local_path(old_url(dest)).exists():
        old = old_url(dest)
        old_state = store_state(old, storage_options)
        if (
            store_state(dest, storage_options) is None
            and old_state
            and old_state.get("complete") is True
            and not verify_store(old, storage_options, old_state)
        ):
            os.rename(local_path(old), local_path(dest))  # nothing else is complete: put back
        else:
            remove_store(old, storage_options)
    return None
