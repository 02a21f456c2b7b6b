"""Exports of feature stores: SlotSPE/CLAM .pt and h5 with features + coords."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.export import export_store
from slotspe_pipe.store.features import write_features


def _store(
    path: Path, slide_id: str, n: int, dim: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, dim)).astype(np.float16)
    coords = rng.integers(0, 10_000, (n, 2)).astype(np.int32)
    attrs = {
        "slide_id": slide_id,
        "encoder": "builtin",
        "embedding_dim": dim,
        "weights": {"path": None, "sha256": None, "random_init": False},
        "input_size": 224,
        "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
        "precision": "fp32",
        "tiles_settings_hash": "h",
        "target_mpp": 0.5,
    }
    write_features(path, features, coords, attrs)
    return features, coords


def test_pt_export_is_a_plain_tensor_named_by_slide(tmp_path):
    features, _ = _store(tmp_path / "a.zarr", "TCGA-XX-0001-01Z-00-DX1", 300)
    out = export_store(tmp_path / "a.zarr", tmp_path / "pt", "pt")
    assert out == tmp_path / "pt" / "TCGA-XX-0001-01Z-00-DX1.pt"
    tensor = torch.load(out, weights_only=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), features.astype(np.float32))
    half = torch.load(export_store(tmp_path / "a.zarr", tmp_path / "pt16", "pt", dtype="float16"))
    assert half.dtype == torch.float16 and half.shape == (300, 8)


def test_h5_export_has_features_coords_and_provenance(tmp_path):
    features, coords = _store(tmp_path / "b.zarr", "slide-b", 5000)
    out = export_store(tmp_path / "b.zarr", tmp_path / "h5", "h5")
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["features"][...], features.astype(np.float32))
        np.testing.assert_array_equal(h5["coords"][...], coords)
        assert h5["coords"].dtype == np.int32
        assert h5.attrs["encoder"] == "builtin" and h5.attrs["target_mpp"] == 0.5
        assert json.loads(h5.attrs["weights"])["random_init"] is False


def test_empty_store_exports(tmp_path):
    _store(tmp_path / "e.zarr", "empty", 0)
    assert torch.load(
        export_store(tmp_path / "e.zarr", tmp_path, "pt"), weights_only=True
    ).shape == (0, 8)
    with h5py.File(export_store(tmp_path / "e.zarr", tmp_path, "h5"), "r") as h5:
        assert h5["features"].shape == (0, 8) and h5["coords"].shape == (0, 2)


def test_cli_exports_several_and_refuses_clashing_ids(tmp_path):
    _store(tmp_path / "a.zarr", "s1", 10, seed=1)
    _store(tmp_path / "b.zarr", "s2", 12, seed=2)
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "export",
                str(tmp_path / "a.zarr"),
                str(tmp_path / "b.zarr"),
                "--format",
                "h5",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["s1.h5", "s2.h5"]
    _store(tmp_path / "c.zarr", "s1", 7, seed=3)
    before = (out / "s1.h5").read_bytes()
    assert (
        cli_main(
            [
                "export",
                str(tmp_path / "a.zarr"),
                str(tmp_path / "c.zarr"),
                "-o",
                str(out),
                "--format",
                "h5",
            ]
        )
        == 2
    )
    assert (out / "s1.h5").read_bytes() == before


def test_incomplete_store_is_reported(tmp_path):
    (tmp_path / "broken.zarr").mkdir()
    assert cli_main(["export", str(tmp_path / "broken.zarr"), "-o", str(tmp_path / "out")]) == 1
    with pytest.raises(ValueError, match="--format"):
        export_store(tmp_path / "broken.zarr", tmp_path, "npy")
