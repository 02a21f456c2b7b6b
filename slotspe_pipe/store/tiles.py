"""`tiles/{slide}.zarr`: the patch grid of one slide at an exact physical resolution.

Arrays: ``coords`` int32 (N, 2) level-0 x, y of each patch's top-left corner;
``tissue_fraction`` float16 (N,). Attributes: see ``REQUIRED_ATTRS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slotspe_pipe.store.zarr_group import StoreError, open_group, write_group

KIND = "tiles"
ROW_CHUNK = 16384
REQUIRED_ATTRS = (
    "slide_id",
    "slide_path",
    "reader",
    "mpp",
    "mpp_source",
    "target_mpp",
    "patch_px",
    "patch_px_level0",
    "stride_px_level0",
    "read_level",
    "read_downsample",
    "resize",
    "overlap",
    "min_tissue",
    "level0_dimensions",
    "segmentation",
    "settings_hash",
)


@dataclass(frozen=True)
class Tiles:
    """A loaded tiles store: coordinates, tissue fractions and provenance."""

    path: Path
    coords: np.ndarray  # int32 (N, 2), level-0 top-left x, y
    tissue_fraction: np.ndarray  # float16 (N,)
    attrs: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    @property
    def patch_px_level0(self) -> int:
        return int(self.attrs["patch_px_level0"])

    @property
    def patch_px(self) -> int:
        return int(self.attrs["patch_px"])

    @property
    def settings_hash(self) -> str:
        return str(self.attrs["settings_hash"])


def write_tiles(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    attrs: dict[str, Any],
) -> Path:
    """Write a tiles store atomically after checking the contract."""
    coords = np.asarray(coords)
    tissue_fraction = np.asarray(tissue_fraction)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise StoreError(f"{path}: coords must be (N, 2), got {coords.shape}")
    if tissue_fraction.shape != (coords.shape[0],):
        raise StoreError(
            f"{path}: tissue_fraction must be ({coords.shape[0]},), got {tissue_fraction.shape}"
        )
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreError(f"{path}: tiles attrs missing {missing}")
    rows = max(1, min(ROW_CHUNK, coords.shape[0]))
    return write_group(
        path,
        KIND,
        {
            "coords": (coords.astype(np.int32), (rows, 2)),
            "tissue_fraction": (tissue_fraction.astype(np.float16), (rows,)),
        },
        {**attrs, "n_patches": int(coords.shape[0])},
    )


def read_tiles(path: str | os.PathLike[str]) -> Tiles:
    """Load a finished tiles store; raises StoreError if incomplete or malformed."""
    group = open_group(path, KIND)
    attrs = dict(group.attrs)
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreError(f"{path}: tiles store lacks attrs {missing}")
    coords = np.asarray(group["coords"][...], dtype=np.int32).reshape(-1, 2)
    frac = np.asarray(group["tissue_fraction"][...], dtype=np.float16).reshape(-1)
    return Tiles(Path(path), coords, frac, attrs)
