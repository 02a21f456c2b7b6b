"""`slotspe-pipe export`: feature stores -> files other tools read.

Formats:
- ``pt``: the SlotSPE / CLAM layout, one ``{slide_id}.pt`` per slide holding a single
  float32 ``(N, D)`` tensor (``torch.load(path, weights_only=True)`` opens it).
- ``h5``: one ``{slide_id}.h5`` per slide with datasets ``features`` (N, D) and ``coords``
  (N, 2, int32 level-0 x, y, same row order), and the store's provenance as HDF5 attributes
  (encoder, µm/px, patch size, weights identity), the layout CLAM-style tools expect.

Every file is written through ``atomic_path`` (nothing half-written at the final name). The
feature store stays the source of truth; exports are derived copies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from slotspe_pipe.store.atomic import atomic_path
from slotspe_pipe.store.features import FeatureReader

log = logging.getLogger(__name__)

FORMATS = ("pt", "h5")
DTYPES = {"float32": np.float32, "float16": np.float16}


def export_store(
    store: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "pt",
    *,
    dtype: str = "float32",
    overwrite: bool = True,
) -> Path:
    """Export one feature store to ``out_dir/{slide_id}.{fmt}``; return the written path.

    Raises StoreError for an incomplete store and ValueError for an unknown format or dtype.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    reader = FeatureReader(store)
    slide_id = str(reader.attrs["slide_id"])
    if not slide_id or "/" in slide_id or slide_id in (".", ".."):
        raise ValueError(f"{store}: slide_id {slide_id!r} cannot be used as a file name")
    target = Path(out_dir) / f"{slide_id}.{fmt}"
    if target.exists() and not overwrite:
        log.info("%s exists; kept", target)
        return target
    features = reader.features().astype(DTYPES[dtype])
    if fmt == "pt":
        _write_pt(target, features)
    else:
        _write_h5(target, features, reader.coords(), reader.attrs)
    log.info("%s -> %s (%d x %d %s)", store, target, *features.shape, dtype)
    return target


def _write_pt(target: Path, features: np.ndarray) -> None:
    import torch

    with atomic_path(target) as tmp:
        # A plain tensor, so readers can (and should) load it with weights_only=True.
        torch.save(torch.from_numpy(np.ascontiguousarray(features)), str(tmp))


def _write_h5(
    target: Path, features: np.ndarray, coords: np.ndarray, attrs: dict[str, Any]
) -> None:
    import h5py

    with atomic_path(target) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(
            "features",
            data=features,
            chunks=_chunks(features),
            compression="gzip",
            compression_opts=1,
        )
        h5.create_dataset("coords", data=coords.astype(np.int32), chunks=_chunks(coords))
        for key, value in attrs.items():
            if isinstance(value, (str, int, float, bool)) and value is not None:
                h5.attrs[key] = value
            else:  # nested provenance (weights identity, spec) as JSON text
                h5.attrs[key] = json.dumps(value, default=str)
        h5["coords"].attrs["units"] = "level-0 pixels, top-left x, y"


def _chunks(arr: np.ndarray) -> tuple[int, ...] | None:
    if arr.shape[0] == 0:
        return None
    return (min(arr.shape[0], 4096), *arr.shape[1:])


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="+", help="feature stores (FEATS.zarr ...)")
    parser.add_argument("--format", choices=FORMATS, default="pt", help="pt (SlotSPE/CLAM) or h5")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default="float32", help="value type (default float32)"
    )
    parser.add_argument(
        "--keep-existing", action="store_true", help="do not overwrite existing files"
    )


def run_cli(args: argparse.Namespace) -> int:
    # Two stores of one slide (two encoders) would silently overwrite each other's file.
    owners: dict[str, list[str]] = {}
    for store in args.stores:
        try:
            owners.setdefault(str(FeatureReader(store).attrs["slide_id"]), []).append(store)
        except (OSError, ValueError):
            continue  # reported below, per store
    clashes = {sid: paths for sid, paths in owners.items() if len(paths) > 1}
    if clashes:
        for sid, paths in clashes.items():
            log.error(
                "slide_id %r comes from several stores (%s): export them to separate -o directories",
                sid,
                ", ".join(paths),
            )
        return 2
    failed = 0
    for store in args.stores:
        try:
            export_store(
                store, args.output, args.format, dtype=args.dtype, overwrite=not args.keep_existing
            )
        except (OSError, ValueError) as exc:  # StoreError is a ValueError
            log.error("%s: not exported: %s", store, exc)
            failed += 1
    if failed:
        log.error("%d of %d stores failed", failed, len(args.stores))
    return 1 if failed else 0
