"""`features/{encoder}/{slide}.zarr`: one slide's patch embeddings.

Arrays: ``features`` float16 (N, D) chunked by ``ROW_CHUNK`` rows; ``coords`` int32 (N, 2) in the
same order. Attributes: see ``REQUIRED_ATTRS``. Training reads rows lazily through
``FeatureReader`` so memory does not grow with the cohort.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from slotspe_pipe.store.zarr_group import StoreError, open_group, write_group

KIND = "features"
ROW_CHUNK = 4096
REQUIRED_ATTRS = (
    "slide_id",
    "encoder",
    "embedding_dim",
    "weights",
    "input_size",
    "normalization",
    "precision",
    "tiles_settings_hash",
)


def synthetic_attrs(slide_id: str, dim: int, tiles_settings_hash: str) -> dict[str, Any]:
    """Every required attribute for a store of made-up features (tests, benchmarks): encoder
    "synthetic", no weights, no normalisation, so such a store can never pass for a real one."""
    return {
        "slide_id": slide_id,
        "encoder": "synthetic",
        "embedding_dim": int(dim),
        "weights": "none",
        "input_size": 224,
        "normalization": "none",
        "precision": "float16",
        "tiles_settings_hash": tiles_settings_hash,
    }


def write_features(
    path: str | os.PathLike[str],
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict[str, Any],
) -> Path:
    """Write a feature store atomically; an empty slide (N = 0) gives a valid empty store."""
    features = np.asarray(features)
    coords = np.asarray(coords)
    if features.ndim != 2:
        raise StoreError(f"{path}: features must be (N, D), got {features.shape}")
    if coords.shape != (features.shape[0], 2):
        raise StoreError(
            f"{path}: coords {coords.shape} do not match features {features.shape} (need (N, 2))"
        )
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreError(f"{path}: feature attrs missing {missing}")
    if int(attrs["embedding_dim"]) != features.shape[1]:
        raise StoreError(
            f"{path}: embedding_dim attr {attrs['embedding_dim']} != features width {features.shape[1]}"
        )
    rows = max(1, min(ROW_CHUNK, features.shape[0]))
    return write_group(
        path,
        KIND,
        {
            "features": (features.astype(np.float16), (rows, features.shape[1] or 1)),
            "coords": (coords.astype(np.int32), (rows, 2)),
        },
        {**attrs, "n_patches": int(features.shape[0])},
    )


class FeatureReader:
    """Lazy read access to a finished feature store."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        group = open_group(self.path, KIND)
        self.attrs: dict[str, Any] = dict(group.attrs)
        self._features = group["features"]
        self._coords = group["coords"]
        if self._features.shape[0] != self._coords.shape[0]:
            raise StoreError(
                f"{self.path}: features ({self._features.shape[0]}) and coords "
                f"({self._coords.shape[0]}) rows differ"
            )

    @property
    def n(self) -> int:
        return int(self._features.shape[0])

    @property
    def dim(self) -> int:
        return int(self._features.shape[1])

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float16 (len(rows), D); all rows when ``rows`` is None. Rows are returned in the given order."""
        if rows is None:
            return np.asarray(self._features[...])
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float16)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # One contiguous slice covering the requested rows when that is cheap, else orthogonal indexing.
        lo, hi = int(sorted_rows[0]), int(sorted_rows[-1]) + 1
        if hi - lo <= 4 * rows.size:
            block = np.asarray(self._features[lo:hi])[sorted_rows - lo]
        else:
            block = np.asarray(self._features.get_orthogonal_selection((sorted_rows, slice(None))))
        out = np.empty_like(block)
        out[order] = block
        return out

    def coords(self) -> np.ndarray:
        return np.asarray(self._coords[...], dtype=np.int32).reshape(-1, 2)


def read_features(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load a whole feature store: (features float16 (N, D), coords int32 (N, 2), attrs)."""
    reader = FeatureReader(path)
    return reader.features(), reader.coords(), reader.attrs
