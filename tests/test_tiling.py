"""Patch grid at an exact physical resolution, exact tissue fractions, atomic tiles stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import box

from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.slides import Slide
from slotspe_pipe.store import zarr_group
from slotspe_pipe.store.tiles import REQUIRED_ATTRS, read_tiles
from slotspe_pipe.store.zarr_group import StoreError
from slotspe_pipe.synthetic import TissueRegion, write_synthetic_slide
from slotspe_pipe.tiling import (
    TilingError,
    draw_grid_thumbnail,
    grid_positions,
    patch_size_level0,
    tile_slide,
    tissue_fractions,
    write_tile_store,
)
from slotspe_pipe.tissue import segment_slide

DICOM_TWIN = "dicom/cmu-1-small-region-wsi2dcm"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    """The same 2.4 x 1.8 mm of glass scanned at 0.25, 0.263 and 0.5 µm/px."""
    root = tmp_path_factory.mktemp("tiling")
    slides = {}
    for mpp in (0.25, 0.263, 0.5):
        w, h = round(2400 / mpp), round(1800 / mpp)
        slides[mpp] = write_synthetic_slide(root / f"s{mpp}.svs", w, h, mpp=mpp, seed=4)
    return slides


def _tile(truth, **kw):
    with Slide(truth.path) as slide:
        tissue = segment_slide(slide)
        coords, fractions, attrs = tile_slide(slide, tissue, kw.pop("target_mpp", 0.5), 256, **kw)
    return tissue, coords, fractions, attrs


def test_patch_size_formula() -> None:
    assert patch_size_level0(0.25, 0.5, 256) == 512
    assert patch_size_level0(0.263, 0.5, 256) == 487
    assert patch_size_level0(0.5, 0.5, 256) == 256
    assert patch_size_level0(0.499, 0.5, 256) == 257
    assert patch_size_level0(0.25, 1.0, 224) == 896


@pytest.mark.parametrize(
    ("mpp", "size", "level", "read_px"),
    [
        (0.25, 512, 0, 512),
        (0.263, 487, 0, 487),
        (0.5, 256, 0, 256),
    ],
)
def test_exact_physical_patch_size_and_recorded_reading_plan(
    synth, mpp: float, size: int, level: int, read_px: int
) -> None:
    truth = synth[mpp]
    _, coords, fractions, attrs = _tile(truth)
    assert attrs["patch_px_level0"] == size
    assert attrs["stride_px_level0"] == size
    assert attrs["read_level"] == level and attrs["read_px"] == read_px
    assert attrs["resize"] == pytest.approx(256 / read_px)
    assert attrs["effective_mpp"] == pytest.approx(0.5, abs=0.001)
    assert set(REQUIRED_ATTRS) <= set(attrs)
    assert len(coords) > 20
    # Global grid from the slide origin, never past the slide edge.
    assert np.all(coords % size == 0)
    assert np.all(coords >= 0)
    assert np.all(coords[:, 0] + size <= truth.width) and np.all(
        coords[:, 1] + size <= truth.height
    )
    # Patches lie in the true tissue.
    centres = shapely.points(coords[:, 0] + size / 2, coords[:, 1] + size / 2)
    assert shapely.contains(truth.tissue, centres).mean() > 0.95
    assert np.all(fractions >= 0.5) and fractions.dtype == np.float32


def test_same_glass_gives_the_same_physical_grid_at_any_mpp(synth) -> None:
    """A patch covers 128 µm whatever the scan: patch counts agree across scanners."""
    counts = {mpp: len(_tile(t)[1]) for mpp, t in synth.items()}
    assert max(counts.values()) - min(counts.values()) <= 0.1 * counts[0.5]


def test_coarser_level_is_read_when_the_pyramid_has_one(synth) -> None:
    # 0.25 µm/px slide, patches at 2 µm/px: 512 level-0 px -> level 1 (4x) read at 128 px.
    _, _, _, attrs = _tile(synth[0.25], target_mpp=2.0)
    assert attrs["patch_px_level0"] == 2048
    assert attrs["read_level"] == 1 and attrs["read_downsample"] == pytest.approx(4.0)
    assert attrs["read_px"] == 512 and attrs["resize"] == pytest.approx(0.5)


def test_tissue_fractions_are_exact_area_integrals() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    ds = (7.3, 6.1)  # level-0 px per mask px, deliberately not integers
    xs = np.array([0, 13, 100, 250, 300])
    ys = np.array([0, 9, 77, 150])
    size = 41
    got = tissue_fractions(mask, ds, xs, ys, size)
    # Brute force: the area of each patch box covered by each mask pixel box.
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            patch = box(x, y, x + size, y + size)
            covered = sum(
                patch.intersection(box(c * ds[0], r * ds[1], (c + 1) * ds[0], (r + 1) * ds[1])).area
                for r, c in np.argwhere(mask)
            )
            assert got[i, j] == pytest.approx(covered / size**2, abs=1e-9)


def test_grid_positions_cover_the_bbox_inside_the_slide() -> None:
    xs = grid_positions(1000, 2000, 256, 256, 10_000)
    assert xs[0] == 768 and xs[-1] == 1792  # 768+256 > 1000; 1792 < 2000
    assert list(grid_positions(0, 900, 512, 512, 1000)) == [0]  # 512 + 512 > 1000: edge
    assert len(grid_positions(0, 100, 512, 512, 400)) == 0  # patch larger than the slide


def test_overlap_min_tissue_and_settings_hash(synth) -> None:
    truth = synth[0.25]
    with Slide(truth.path) as slide:
        tissue = segment_slide(slide)
        c0, _, a0 = tile_slide(slide, tissue, 0.5, 256)
        c0b, _, a0b = tile_slide(slide, tissue, 0.5, 256)
        c1, _, a1 = tile_slide(slide, tissue, 0.5, 256, overlap=64)
        c_all, f_all, a_all = tile_slide(slide, tissue, 0.5, 256, min_tissue=0.0)
        c_full, f_full, _ = tile_slide(slide, tissue, 0.5, 256, min_tissue=1.0)
        _, _, a_t = tile_slide(slide, tissue, 0.5, 224)
    assert np.array_equal(c0, c0b) and a0["settings_hash"] == a0b["settings_hash"]
    assert a1["stride_px_level0"] == 512 - 128 and np.all(c1 % 384 == 0)
    assert len(c1) > 1.5 * len(c0)
    assert len(c_all) > len(c0) > len(c_full) > 0 and np.all(f_full >= 1.0 - 1e-6)
    assert f_all.min() >= 0.0
    hashes = {a["settings_hash"] for a in (a0, a1, a_all, a_t)}
    assert len(hashes) == 4
    assert a0["segmentation"]["method"] == "brightfield"


def test_upsampling_is_refused_unless_allowed(synth) -> None:
    truth = synth[0.5]
    with Slide(truth.path) as slide:
        tissue = segment_slide(slide)
        with pytest.raises(TilingError, match=r"finer than the slide.*--allow-upsample"):
            tile_slide(slide, tissue, 0.25, 256)
        tile_slide(slide, tissue, 0.47, 256)  # within 10 %: fine
        coords, _, attrs = tile_slide(slide, tissue, 0.25, 256, allow_upsample=True)
    assert attrs["patch_px_level0"] == 128 and attrs["resize"] == 2.0 and len(coords) > 0


def test_tissue_from_another_slide_is_refused(synth) -> None:
    with Slide(synth[0.25].path) as a, Slide(synth[0.5].path) as b:
        tissue = segment_slide(a)
        with pytest.raises(TilingError, match="another slide"):
            tile_slide(b, tissue, 0.5, 256)


def test_slide_without_tissue_gives_a_valid_empty_store(tmp_path: Path) -> None:
    truth = write_synthetic_slide(tmp_path / "empty.svs", 3000, 2000, layout="empty")
    with Slide(truth.path) as slide:
        tissue = segment_slide(slide)
        coords, fractions, attrs = tile_slide(slide, tissue, 0.5, 256)
    assert coords.shape == (0, 2) and fractions.shape == (0,)
    write_tile_store(tmp_path / "t.zarr", coords, fractions, attrs)
    tiles = read_tiles(tmp_path / "t.zarr")
    assert tiles.n == 0 and tiles.coords.shape == (0, 2)


def test_interrupted_write_leaves_nothing_readers_accept(
    tmp_path: Path, synth, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Slide(synth[0.5].path) as slide:
        tissue = segment_slide(slide)
        coords, fractions, attrs = tile_slide(slide, tissue, 0.5, 256)
    out = tmp_path / "t.zarr"

    def crash(*_a, **_k):  # dies after the arrays are written, before the marker
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(zarr_group, "_jsonable", crash)
    with pytest.raises(KeyboardInterrupt):
        write_tile_store(out, coords, fractions, attrs)
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(StoreError):
        read_tiles(out)
    monkeypatch.undo()
    # A finished store survives a failed rewrite untouched.
    write_tile_store(out, coords, fractions, attrs)
    monkeypatch.setattr(zarr_group, "_jsonable", crash)
    with pytest.raises(KeyboardInterrupt):
        write_tile_store(out, coords[:3], fractions[:3], attrs)
    assert read_tiles(out).n == len(coords)


def test_dicom_twin_gives_nearly_the_same_grid(cmu_small: Path, wsi_dir: Path) -> None:
    grids = {}
    for name, path in (("svs", cmu_small), ("dicom", wsi_dir / DICOM_TWIN)):
        with Slide(path) as slide:
            corner = slide.read_region(0, 0, 0, 64, 64).reshape(-1, 3).mean(axis=0)
            # Glass reads grey-white unless the reader skipped this series' YCbCr -> RGB step.
            assert np.ptp(corner) < 20, f"{name}: glass reads as {corner}: colour conversion"
            tissue = segment_slide(slide)
            coords, _, attrs = tile_slide(slide, tissue, 0.5, 256)
        grids[name] = ({tuple(c) for c in coords.tolist()}, attrs)
    (svs, a_svs), (dcm, a_dcm) = grids["svs"], grids["dicom"]
    assert a_svs["patch_px_level0"] == a_dcm["patch_px_level0"] == 257
    assert len(svs) > 20
    assert len(svs & dcm) >= 0.9 * max(len(svs), len(dcm))


def test_cli_tile_end_to_end(tmp_path: Path, synth) -> None:
    truth = synth[0.263]
    seg, store, grid = tmp_path / "seg", tmp_path / "t.zarr", tmp_path / "grid.png"
    assert cli_main(["segment", str(truth.path), "-o", str(seg)]) == 0
    rc = cli_main(
        [
            "tile",
            str(truth.path),
            "--tissue",
            str(seg),
            "-o",
            str(store),
            "--target-mpp",
            "0.5",
            "--patch-px",
            "256",
            "--overlap",
            "32",
            "--min-tissue",
            "0.25",
            "--grid-png",
            str(grid),
            "--slide-id",
            "S1",
        ]
    )
    assert rc == 0
    tiles = read_tiles(store)
    assert tiles.attrs["slide_id"] == "S1" and tiles.attrs["overlap"] == 32
    assert tiles.attrs["patch_px_level0"] == 487
    assert tiles.attrs["stride_px_level0"] == 487 - 61
    assert tiles.attrs["segmentation"]["tissue_dir"] == str(seg)
    assert tiles.n > 0 and float(tiles.tissue_fraction.min()) >= 0.25 - 1e-3
    summary = json.loads((seg / "summary.json").read_text())
    assert tiles.attrs["segmentation"]["tissue_area_mm2"] == pytest.approx(
        summary["tissue_area_mm2"]
    )
    img = np.asarray(Image.open(grid))
    assert img.ndim == 3 and np.all(img == (0, 200, 0), axis=2).any()
    # Upsampling without the flag fails with exit code 1 and writes nothing.
    bad = tmp_path / "bad.zarr"
    assert (
        cli_main(
            ["tile", str(truth.path), "--tissue", str(seg), "-o", str(bad), "--target-mpp", "0.1"]
        )
        == 1
    )
    assert not bad.exists()
    # A tissue dir that was never finished is refused.
    assert (
        cli_main(["tile", str(truth.path), "--tissue", str(tmp_path / "nope"), "-o", str(bad)]) == 1
    )


def test_draw_grid_thumbnail(tmp_path: Path, synth) -> None:
    truth = synth[0.5]
    with Slide(truth.path) as slide:
        tissue = segment_slide(slide)
        coords, _, attrs = tile_slide(slide, tissue, 0.5, 256)
        out = draw_grid_thumbnail(
            slide, tissue, coords, attrs["patch_px_level0"], tmp_path / "g.png"
        )
    img = np.asarray(Image.open(out))
    assert img.shape[:2] == tissue.mask.shape
    assert (np.abs(img.astype(int) - (255, 210, 0)).sum(axis=2) < 120).sum() > len(coords)


def test_custom_region_patches_are_fully_inside(tmp_path: Path) -> None:
    """A square of tissue aligned to the grid: every full patch inside is kept, none outside."""
    square = box(1024, 1024, 1024 + 6 * 512, 1024 + 4 * 512)
    truth = write_synthetic_slide(
        tmp_path / "sq.svs", 6000, 4000, mpp=0.25, regions=[TissueRegion(square)]
    )
    with Slide(truth.path) as slide:
        tissue = segment_slide(slide)
        coords, fractions, _ = tile_slide(slide, tissue, 0.5, 256, min_tissue=0.9)
    assert len(coords) == 24
    assert np.all(fractions > 0.97)
    assert coords[:, 0].min() == 1024 and coords[:, 1].min() == 1024
