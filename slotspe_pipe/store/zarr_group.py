"""Shared mechanics of our Zarr v3 stores: a kind tag, a completion marker, atomic commit.

Every store written by the pipeline carries ``attrs["slotspe_store"] = {"kind", "version",
"complete"}``. ``complete`` is set as the very last write inside the temporary directory, and the
directory is renamed into place only after that, so a reader that finds the marker knows the
store is whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from slotspe_pipe import __version__
from slotspe_pipe.store.atomic import atomic_path

MARKER = "slotspe_store"
STORE_VERSION = 1


class StoreError(ValueError):
    """A store is missing, incomplete, of the wrong kind, or violates its contract."""


def write_group(
    path: str | os.PathLike[str],
    kind: str,
    arrays: Mapping[str, tuple[np.ndarray, tuple[int, ...] | None]],
    attrs: Mapping[str, Any],
) -> Path:
    """Write a complete store of ``kind`` at ``path`` atomically.

    ``arrays`` maps name -> (data, chunks); chunks ``None`` lets the array be one chunk.
    Attributes must be JSON-serialisable. Returns the final path.
    """
    final = Path(path)
    with atomic_path(final) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        for name, (data, chunks) in arrays.items():
            data = np.ascontiguousarray(data)
            if chunks is None:
                chunks = tuple(max(1, s) for s in data.shape)
            arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
            if data.size:
                arr[...] = data
        clean = _jsonable(dict(attrs))
        clean["package_version"] = __version__
        group.attrs.update(clean)
        # The marker goes last: its presence means every array above was written.
        group.attrs[MARKER] = {"kind": kind, "version": STORE_VERSION, "complete": True}
    return final


def open_group(path: str | os.PathLike[str], kind: str) -> zarr.Group:
    """Open a finished store of ``kind`` read-only, refusing incomplete or foreign stores."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no {kind} store here (run the stage that writes it first)")
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise StoreError(f"{path}: not a Zarr store ({exc})") from exc
    marker = group.attrs.get(MARKER)
    if not isinstance(marker, dict) or not marker.get("complete"):
        raise StoreError(
            f"{path}: store is incomplete (no completion marker); it was interrupted while "
            "being written - delete it and rerun the stage"
        )
    if marker.get("kind") != kind:
        raise StoreError(f"{path}: expected a {kind} store, found {marker.get('kind')!r}")
    if marker.get("version") != STORE_VERSION:
        raise StoreError(
            f"{path}: store version {marker.get('version')} is not the supported {STORE_VERSION}"
        )
    return group


def is_complete(path: str | os.PathLike[str], kind: str) -> bool:
    """True when ``path`` holds a finished store of ``kind`` (used to skip finished work)."""
    try:
        open_group(path, kind)
    except StoreError:
        return False
    return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
