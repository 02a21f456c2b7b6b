"""Synthetic slide writer: Aperio layout both readers accept, known truth, bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tiffslide
from shapely.geometry import Polygon

from slotspe_pipe.slides import Slide
from slotspe_pipe.synthetic import (
    LAYOUTS,
    TissueRegion,
    default_regions,
    render_region,
    write_synthetic_slide,
)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("synthetic") / "blobs.svs"
    return write_synthetic_slide(path, 5000, 4000, mpp=0.263, objective_power=40, pen_mark=True)


def test_openslide_sees_an_aperio_slide_with_mpp_and_objective(blobs) -> None:
    with openslide.OpenSlide(str(blobs.path)) as osr:
        props = osr.properties
        assert props["openslide.vendor"] == "aperio"
        assert float(props["openslide.mpp-x"]) == pytest.approx(0.263)
        assert float(props["openslide.mpp-y"]) == pytest.approx(0.263)
        assert float(props["openslide.objective-power"]) == 40
        assert osr.level_dimensions == ((5000, 4000), (1250, 1000), (312, 250))
        assert osr.level_downsamples[1] == pytest.approx(4.0)
        # Only the Aperio thumbnail page: never a label or macro image.
        assert set(osr.associated_images) == {"thumbnail"}


def test_tiffslide_reads_the_same_levels_metadata_and_pixels(blobs) -> None:
    ts = tiffslide.TiffSlide(str(blobs.path))
    with openslide.OpenSlide(str(blobs.path)) as osr:
        assert ts.properties["tiffslide.vendor"] == "aperio"
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.263)
        assert float(ts.properties["tiffslide.objective-power"]) == 40
        assert tuple(ts.level_dimensions) == osr.level_dimensions
        for level, (w, h) in enumerate(osr.level_dimensions):
            a = np.asarray(osr.read_region((0, 0), level, (w, h)))[..., :3]
            b = np.asarray(ts.read_region((0, 0), level, (w, h)))[..., :3]
            assert np.array_equal(a, b), f"level {level} differs between readers"
    assert "label" not in ts.associated_images and "macro" not in ts.associated_images
    ts.close()


def test_slide_api_resolves_the_written_mpp(blobs) -> None:
    with Slide(blobs.path) as slide:
        assert slide.mpp == pytest.approx(0.263)
        assert slide.info.mpp_source == "reader-properties"
        assert slide.info.objective_power == 40
        assert slide.dimensions == (5000, 4000)


def test_file_holds_what_the_renderer_describes(blobs) -> None:
    """Decoded pixels equal the procedural definition up to JPEG error, on every level."""
    with Slide(blobs.path) as slide:
        for level, ds in enumerate(slide.level_downsamples):
            x, y = 1200, 1600  # level-0 point inside the big section
            got = slide.read_region(x, y, level, 128, 128).astype(int)
            want = render_region(blobs, round(x / ds), round(y / ds), 128, 128, downsample=ds)
            assert np.abs(got - want).mean() < 6.0, f"level {level}"


def test_tissue_is_stained_and_glass_is_background(blobs) -> None:
    with Slide(blobs.path) as slide:
        thumb, mpp = slide.thumbnail_at_mpp(4.0)
    ds = blobs.width / thumb.shape[1]
    h, w = thumb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    centres = shapely.points((xx.ravel() + 0.5) * ds, (yy.ravel() + 0.5) * ds)
    inside = shapely.contains(blobs.tissue.buffer(-3 * ds), centres).reshape(h, w)
    outside = ~shapely.intersects(
        shapely.union_all([blobs.tissue, blobs.pen_mark]).buffer(3 * ds), centres
    ).reshape(h, w)
    pixels = thumb.astype(int)
    assert inside.sum() > 100 and outside.sum() > 100
    # Glass: the background colour, grey.
    assert np.abs(pixels[outside] - 240).max() <= 8
    # Tissue: pink/purple (green channel lowest), clearly darker than glass.
    tissue_rgb = pixels[inside].mean(axis=0)
    assert tissue_rgb[1] < tissue_rgb[0] - 30 and tissue_rgb[1] < tissue_rgb[2] - 20
    # Pen ink: green dominates red.
    pen_core = shapely.contains(blobs.pen_mark.buffer(-2 * ds), centres).reshape(h, w)
    assert pen_core.sum() > 10
    ink = pixels[pen_core].mean(axis=0)
    assert ink[1] > ink[0] + 60


def test_default_layouts_are_deterministic_disjoint_and_inside() -> None:
    expected = {"blobs": 2, "multi": 6, "sparse": 1, "empty": 0}
    assert set(expected) == set(LAYOUTS)
    for layout, n in expected.items():
        for w, h in ((40_000, 30_000), (3_000, 8_000)):
            regions = default_regions(w, h, layout=layout, seed=3)
            assert len(regions) == n
            again = default_regions(w, h, layout=layout, seed=3)
            assert all(
                a.polygon_level0.equals(b.polygon_level0)
                for a, b in zip(regions, again, strict=True)
            )
            if not regions:
                continue
            union = shapely.union_all([r.polygon_level0 for r in regions])
            assert len(getattr(union, "geoms", [union])) == n  # no two regions touch
            minx, miny, maxx, maxy = union.bounds
            assert minx > 0 and maxx < w and miny > 0.08 * h and maxy < h  # top strip: pen
    hole = default_regions(1000, 1000, layout="blobs")[0].polygon_level0
    assert len(hole.interiors) == 1
    other_seed = default_regions(1000, 1000, layout="blobs", seed=1)[0].polygon_level0
    assert not other_seed.equals(hole)
    sparse = default_regions(10_000, 10_000, layout="sparse")[0].polygon_level0
    assert 0.0005 < sparse.area / 1e8 < 0.002


def test_custom_regions_and_truth(tmp_path: Path) -> None:
    square = Polygon([(100, 100), (900, 100), (900, 700), (100, 700)])
    region = TissueRegion(square, nuclei_density=0.5, hematoxylin=1.3, eosin=0.8)
    slide = write_synthetic_slide(tmp_path / "sq.svs", 1024, 800, mpp=0.5, regions=[region])
    assert slide.tissue.equals(square)
    assert slide.tissue_area_mm2 == pytest.approx(800 * 600 * 0.25e-6)
    assert slide.pen_mark is None
    assert slide.level_dimensions == ((1024, 800), (256, 200))
    with Slide(slide.path) as s:
        inside = s.read_region(300, 300, 0, 64, 64).astype(int)
        outside = s.read_region(950, 20, 0, 64, 64).astype(int)
    assert np.abs(outside - 240).max() <= 6
    assert inside.mean() < 220


def test_empty_layout_is_glass_only(tmp_path: Path) -> None:
    slide = write_synthetic_slide(tmp_path / "empty.svs", 2048, 2048, layout="empty")
    assert slide.tissue.is_empty and slide.regions == ()
    with Slide(slide.path) as s:
        level = s.level_count - 1
        w, h = s.level_dimensions[level]
        pixels = s.read_region(0, 0, level, w, h).astype(int)
    assert np.abs(pixels - 240).max() <= 6


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tile_size"):
        write_synthetic_slide(tmp_path / "a.svs", 1000, 1000, tile_size=100)
    with pytest.raises(ValueError, match="mpp"):
        write_synthetic_slide(tmp_path / "b.svs", 1000, 1000, mpp=200.0)
    with pytest.raises(ValueError, match="layout"):
        write_synthetic_slide(tmp_path / "c.svs", 1000, 1000, layout="donut")
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slotspe_pipe import synthetic

    calls = {"n": 0}
    real = synthetic._encode

    def failing(tile: np.ndarray, quality: int) -> bytes:
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError("disk full (simulated)")
        return real(tile, quality)

    monkeypatch.setattr(synthetic, "_encode", failing)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_slide(tmp_path / "x.svs", 4096, 4096)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_100k_slide_streams_tile_by_tile(tmp_path: Path) -> None:
    """A 100k x 80k px slide is written without holding a level in memory."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    slide = write_synthetic_slide(tmp_path / "huge.svs", 100_000, 80_000, layout="sparse")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500  # level 0 alone would be 22 GiB of RGB
    with Slide(slide.path) as s:
        assert s.dimensions == (100_000, 80_000)
        assert s.level_count == 5
        cx, cy = slide.tissue.representative_point().coords[0]
        assert s.read_region(int(cx), int(cy), 0, 64, 64).mean() < 225
