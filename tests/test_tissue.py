"""Tissue segmentation: real slides (Aperio, its DICOM twin, NDPI fluorescence) and synthetic
slides with known truth; physical units; annotation override; atomic, checked outputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box, shape

from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.slides import Slide
from slotspe_pipe.synthetic import TissueRegion, write_synthetic_slide
from slotspe_pipe.tissue import (
    PRESETS,
    TissueError,
    load_tissue,
    mask_to_geometry,
    rasterize,
    resolve_settings,
    segment_slide,
    write_tissue_dir,
)

DICOM_TWIN = "dicom/cmu-1-small-region-wsi2dcm"
NDPI = "hamamatsu/test3-DAPI-2-387.ndpi"


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tissue_synth")


@pytest.fixture(scope="module")
def blobs(synth_dir: Path):
    return write_synthetic_slide(synth_dir / "blobs.svs", 8000, 6000, mpp=0.25, pen_mark=True)


@pytest.fixture(scope="module")
def cmu_result(cmu_small: Path):
    with Slide(cmu_small) as slide:
        return segment_slide(slide)


# ------------------------------------------------------------------------------- real slides


def test_cmu_small_region_default_finds_the_tissue(cmu_result) -> None:
    r = cmu_result
    assert r.method == "brightfield"
    # The section covers ~0.65 of the 1.64 mm² scan (checked by eye on thumbnail.png).
    assert 0.5 < r.tissue_area_mm2 < 0.9
    assert r.n_regions >= 1
    biggest = max(getattr(r.geometry, "geoms", [r.geometry]), key=lambda p: p.area)
    assert biggest.area * (0.499e-3) ** 2 > 0.5  # one main section
    # Works in physical units: the 1.5 mm crop is traced finer than 8 µm/px, not at 185 px.
    assert max(r.mask.shape) >= 512 and r.mask_mpp == pytest.approx(2.892, rel=0.01)
    # Polygons and mask describe the same tissue.
    mask_mm2 = r.mask.sum() * (r.mask_mpp * 1e-3) ** 2
    assert r.tissue_area_mm2 == pytest.approx(mask_mm2, rel=0.03)
    minx, miny, maxx, maxy = r.geometry.bounds
    assert minx >= 0 and miny >= 0 and maxx <= 2220 and maxy <= 2967
    # The glass in the top-left corner is not tissue; the centre of the section is.
    assert not r.geometry.intersects(box(0, 0, 200, 200))
    assert r.geometry.contains(shapely.Point(1000, 2600))


def test_dicom_twin_gives_nearly_the_same_tissue(wsi_dir: Path, cmu_result) -> None:
    with Slide(wsi_dir / DICOM_TWIN) as twin:
        corner = twin.read_region(0, 0, 0, 64, 64).reshape(-1, 3).mean(axis=0)
        # Glass must read as grey-white; a pink corner means the YCbCr JPEG frames (declared
        # RGB in this series) were not converted to RGB by the slide reader.
        assert np.ptp(corner) < 20, f"DICOM twin glass reads as {corner}: colour conversion"
        r = segment_slide(twin)
    assert r.method == "brightfield"
    assert r.tissue_area_mm2 == pytest.approx(cmu_result.tissue_area_mm2, rel=0.03)
    assert _iou(r.geometry, cmu_result.geometry) > 0.95


def test_ndpi_fluorescence_finds_signal(wsi_dir: Path) -> None:
    with Slide(wsi_dir / NDPI) as slide:
        auto = segment_slide(slide)
        told = segment_slide(slide, modality="fluorescence")
    for r in (auto, told):
        assert r.method == "fluorescence"
        # DAPI nuclei fill most of this 0.9 x 1.1 mm crop; closing merges them into tissue.
        assert 0.5 < r.tissue_area_mm2 < 1.0
        assert r.settings.preset == "fluorescence"  # switched to fluorescence radii
    assert auto.details["method_source"] == "dark-background"
    assert told.details["method_source"] == "preflight"
    assert auto.details["intensity_threshold"] > auto.details["background_level"]


# ----------------------------------------------------------------------------- synthetic truth


def test_synthetic_tissue_matches_truth_and_pen_is_excluded(blobs) -> None:
    with Slide(blobs.path) as slide:
        r = segment_slide(slide)
    assert r.method == "brightfield" and r.n_regions == 2
    assert _iou(r.geometry, blobs.tissue) > 0.93
    pen_only = blobs.pen_mark.difference(blobs.tissue)
    assert r.geometry.intersection(pen_only).area < 0.001 * pen_only.area
    assert r.details["pen_fraction"] > 0.01
    # The ~0.025 mm² hole in the big section is below min_hole_mm2 (0.05): filled; with a
    # smaller limit it stays a hole.
    hole = Polygon(blobs.regions[0].polygon_level0.interiors[0])
    assert 0.01 < hole.area * 0.0625e-6 < 0.05
    assert r.geometry.intersection(hole).area > 0.95 * hole.area
    with Slide(blobs.path) as slide:
        holed = segment_slide(slide, min_hole_mm2=0.005)
        kept = segment_slide(slide, remove_pen=False)
    assert holed.geometry.intersection(hole).area < 0.1 * hole.area
    assert kept.geometry.intersection(pen_only).area > 0.5 * pen_only.area


def test_multi_section_slide_gives_each_section(synth_dir: Path) -> None:
    truth = write_synthetic_slide(synth_dir / "multi.svs", 6000, 4000, layout="multi", seed=2)
    with Slide(truth.path) as slide:
        r = segment_slide(slide)
    assert r.n_regions == 6
    assert _iou(r.geometry, truth.tissue) > 0.9


def test_almost_empty_and_empty_slides(synth_dir: Path) -> None:
    # 16k x 16k px at 0.25 µm/px: one 0.016 mm² fragment on 16 mm² of glass.
    sparse = write_synthetic_slide(synth_dir / "sparse.svs", 16000, 16000, layout="sparse")
    empty = write_synthetic_slide(synth_dir / "empty.svs", 8000, 8000, layout="empty")
    with Slide(sparse.path) as slide:
        r = segment_slide(slide)
    assert r.n_regions == 1
    assert r.tissue_area_mm2 == pytest.approx(sparse.tissue_area_mm2, rel=0.15)
    with Slide(empty.path) as slide:
        r = segment_slide(slide)
    assert r.n_regions == 0 and r.tissue_area_mm2 == 0.0 and not r.mask.any()
    # The floor kept glass noise out although Otsu found "something" to split.
    assert r.details["saturation_threshold"] >= PRESETS["default"].saturation_floor


def test_same_glass_scanned_at_20x_and_40x_gives_the_same_mm2(synth_dir: Path) -> None:
    """Physical units: sizes, areas and morphology do not depend on the pyramid."""
    regions_40x = [
        TissueRegion(Polygon(shapely.Point(2000, 2000).buffer(1200).exterior)),
        TissueRegion(box(5000, 1000, 7000, 3600)),
    ]
    half = [
        TissueRegion(shapely.affinity.scale(r.polygon_level0, 0.5, 0.5, origin=(0, 0)))
        for r in regions_40x
    ]
    s40 = write_synthetic_slide(synth_dir / "x40.svs", 8000, 4800, mpp=0.25, regions=regions_40x)
    s20 = write_synthetic_slide(
        synth_dir / "x20.svs", 4000, 2400, mpp=0.5, objective_power=20, regions=half
    )
    with Slide(s40.path) as a, Slide(s20.path) as b:
        ra, rb = segment_slide(a), segment_slide(b)
    assert ra.mask_mpp == pytest.approx(rb.mask_mpp, rel=0.02)
    assert ra.tissue_area_mm2 == pytest.approx(rb.tissue_area_mm2, rel=0.02)
    assert ra.tissue_area_mm2 == pytest.approx(s40.tissue_area_mm2, rel=0.05)


def test_presets_filter_regions_by_physical_area(synth_dir: Path) -> None:
    # A 1.1 mm² section and a 0.1 mm² fragment at 0.5 µm/px.
    regions = [
        TissueRegion(box(400, 400, 2500, 2500)),
        TissueRegion(box(3200, 1000, 3832, 1632)),
    ]
    truth = write_synthetic_slide(synth_dir / "frag.svs", 4200, 3000, mpp=0.5, regions=regions)
    with Slide(truth.path) as slide:
        default = segment_slide(slide)
        resection = segment_slide(slide, "resection")
        biopsy = segment_slide(slide, "biopsy")
        tiny_limit = segment_slide(slide, "default", min_region_mm2=2.0)
    assert default.n_regions == 2 and biopsy.n_regions == 2
    assert resection.n_regions == 1  # 0.1 mm² < 0.5 mm²
    assert tiny_limit.n_regions == 0
    assert biopsy.mask_mpp < default.mask_mpp  # finer working thumbnail


def test_settings_validation() -> None:
    assert resolve_settings("biopsy").min_region_mm2 < resolve_settings("default").min_region_mm2
    assert resolve_settings("default", min_hole_mm2=None) == PRESETS["default"]
    with pytest.raises(ValueError, match="preset"):
        resolve_settings("lung")
    with pytest.raises(TypeError, match="unknown"):
        resolve_settings("default", min_area=1.0)
    with pytest.raises(ValueError, match="method"):
        resolve_settings("default", method="darkfield")
    with pytest.raises(ValueError, match="min_region_mm2"):
        resolve_settings("default", min_region_mm2=-1.0)


def test_mask_to_geometry_traces_pixel_edges_with_holes() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:30, 4:40] = True
    mask[10:20, 10:20] = False  # a hole
    mask[35, 45] = True  # a single pixel
    geom = mask_to_geometry(mask, (4.0, 4.0))
    # On pixel edges (level-0 = 4 x mask px), up to the chamfered corners of the hole.
    assert geom.area == pytest.approx(mask.sum() * 16, rel=0.002)
    big = max(geom.geoms, key=lambda p: p.area)
    assert len(big.interiors) == 1
    assert big.bounds == (16.0, 20.0, 160.0, 120.0)
    assert Polygon(big.interiors[0]).bounds == (40.0, 40.0, 80.0, 80.0)
    assert geom.contains(shapely.Point(45 * 4 + 2, 35 * 4 + 2))  # the single pixel
    back = rasterize(geom, mask.shape, (4.0, 4.0))
    assert np.array_equal(back, mask)


# ------------------------------------------------------------------------- outputs and QuPath


def test_tissue_dir_outputs_and_round_trip(tmp_path: Path, cmu_small: Path, cmu_result) -> None:
    out = tmp_path / "tissue"
    with Slide(cmu_small) as slide:
        write_tissue_dir(cmu_result, out, slide)
    assert sorted(p.name for p in out.iterdir()) == [
        "mask.png",
        "summary.json",
        "thumbnail.png",
        "tissue.geojson",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tissue_area_mm2"] == pytest.approx(cmu_result.tissue_area_mm2, rel=1e-4)
    assert summary["n_regions"] == cmu_result.n_regions
    assert summary["mask_mpp"] == pytest.approx(cmu_result.mask_mpp)
    assert summary["settings"]["preset"] == "default"
    assert summary["slide"]["mpp"] == pytest.approx(0.499)
    assert summary["slide"]["mpp_source"] == "reader-properties"
    assert summary["method"] == "brightfield"

    geo = json.loads((out / "tissue.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == cmu_result.n_regions
    for feat in geo["features"]:
        assert feat["geometry"]["type"] == "Polygon"
        assert feat["properties"]["objectType"] == "annotation"
        assert feat["properties"]["classification"]["name"] == "Tissue"
    union = shapely.union_all([shape(f["geometry"]) for f in geo["features"]])
    assert union.area == pytest.approx(cmu_result.geometry.area, rel=1e-4)

    mask_png = Image.open(out / "mask.png")
    assert float(mask_png.text["slotspe:mask_mpp"]) == pytest.approx(cmu_result.mask_mpp)
    assert np.array_equal(np.asarray(mask_png) > 0, cmu_result.mask)
    thumb = np.asarray(Image.open(out / "thumbnail.png"))
    assert thumb.shape[:2] == cmu_result.mask.shape and thumb.shape[2] == 3
    # Contours are drawn: pure outline green appears, which the H&E itself never has.
    assert np.all(thumb == (0, 200, 0), axis=2).sum() > 100

    loaded = load_tissue(out)
    assert np.array_equal(loaded.mask, cmu_result.mask)
    assert loaded.geometry.area == pytest.approx(cmu_result.geometry.area, rel=1e-4)
    assert loaded.settings == cmu_result.settings
    assert loaded.level0_dimensions == (2220, 2967)


def test_interrupted_or_mixed_tissue_dirs_are_refused(tmp_path: Path, blobs) -> None:
    out = tmp_path / "tissue"
    with Slide(blobs.path) as slide:
        result = segment_slide(slide)
        write_tissue_dir(result, out, slide)
        # A rerun that dies before summary.json (written last) leaves a dir load refuses.
        (out / "summary.json").unlink()
        with pytest.raises(TissueError, match="no summary.json"):
            load_tissue(out)
        write_tissue_dir(result, out, slide)
    # A mask from another run does not pass as this one.
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    (out / "mask.png").write_bytes(buf.getvalue())
    with pytest.raises(TissueError, match="sha256"):
        load_tissue(out)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_annotation_replaces_the_automatic_mask(tmp_path: Path, blobs) -> None:
    # A QuPath-style export: a list of Features, a MultiPolygon, and an "Ignore*" area.
    keep = MultiPolygon([box(1000, 1500, 3000, 3500), box(5000, 2000, 6500, 4000)])
    ignore = box(2000, 2500, 2600, 3000)
    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(keep),
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        },
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(ignore),
            "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
    ]
    ann = tmp_path / "drawn.geojson"
    ann.write_text(json.dumps(features))
    with Slide(blobs.path) as slide:
        r = segment_slide(slide, annotation=ann)
        write_tissue_dir(r, tmp_path / "t", slide)
    assert r.method == "annotation"
    assert r.geometry.equals(keep.difference(ignore))
    assert r.tissue_area_mm2 == pytest.approx(keep.difference(ignore).area * 0.0625e-6)
    assert r.mask.mean() == pytest.approx(r.geometry.area / (8000 * 6000), rel=0.05)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["method"] == "annotation"
    assert len(summary["annotation"]["sha256"]) == 64
    assert load_tissue(tmp_path / "t").geometry.equals(r.geometry)


def test_bad_annotations_name_the_file(tmp_path: Path, blobs) -> None:
    outside = tmp_path / "outside.geojson"
    outside.write_text(json.dumps(shapely.geometry.mapping(box(90_000, 90_000, 95_000, 95_000))))
    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}}
                ],
            }
        )
    )
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{not json")
    with Slide(blobs.path) as slide:
        with pytest.raises(TissueError, match=r"outside\.geojson.*outside the slide"):
            segment_slide(slide, annotation=outside)
        with pytest.raises(TissueError, match=r"points\.geojson.*no Polygon"):
            segment_slide(slide, annotation=points)
        with pytest.raises(TissueError, match=r"garbage\.geojson.*not valid JSON"):
            segment_slide(slide, annotation=garbage)


def test_cli_segment_with_preflight_record(tmp_path: Path, blobs) -> None:
    record = tmp_path / "pre.json"
    record.write_text(
        json.dumps({"status": "ok", "modality": "brightfield", "mpp": 0.25, "mpp_source": "x"})
    )
    out = tmp_path / "seg"
    rc = cli_main(
        [
            "segment",
            str(blobs.path),
            "-o",
            str(out),
            "--preflight",
            str(record),
            "--preset",
            "resection",
            "--min-hole-mm2",
            "0.01",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["preset"] == "resection"
    assert summary["settings"]["min_hole_mm2"] == 0.01
    assert summary["details"]["method_source"] == "preflight"
    assert summary["n_regions"] == 1  # the 0.23 mm² section is below resection's 0.5 mm²
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"status": "failed", "reason": "corrupt tile"}))
    assert (
        cli_main(
            ["segment", str(blobs.path), "-o", str(tmp_path / "x"), "--preflight", str(failed)]
        )
        == 1
    )
    assert not (tmp_path / "x").exists()
