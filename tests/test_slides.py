"""Slide access on the real WSI test files: readers, µm/px resolution, RGB reads, levels.

Expected values come from ../shared/testdata/wsi/PROVENANCE.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from slotspe_pipe import slides
from slotspe_pipe.slides import (
    MppError,
    PixelReadError,
    Slide,
    SlideError,
    _rgba_to_rgb_white,
    _tiff_resolution_mpp,
    open_reader,
    resolve_mpp,
)

DICOM_DIR = "dicom/cmu-1-small-region-wsi2dcm"
NDPI = "hamamatsu/test3-DAPI-2-387.ndpi"
QPTIFF = "perkinelmer/small_vectra.qptiff"
OPENS_DICOM_FILE = f"{DICOM_DIR}/level-5-frames-0-1.dcm"
FIXTURES = "openslide-python-fixtures"

# path -> (reader, level-0 (w, h), level count, mpp, mpp_source)
OPENS = {
    "aperio/CMU-1-Small-Region.svs": ("openslide", (2220, 2967), 1, 0.499, "reader-properties"),
    DICOM_DIR: ("openslide", (2220, 2967), 12, 0.499, "reader-properties"),
    f"{DICOM_DIR}/level-0-frames-0-30.dcm": (
        "openslide",
        (2220, 2967),
        12,
        0.499,
        "reader-properties",
    ),
    f"{DICOM_DIR}/level-11-frames-0-1.dcm": (
        "openslide",
        (2220, 2967),
        12,
        0.499,
        "reader-properties",
    ),
    NDPI: ("openslide", (3968, 4864), 7, 0.228175, "reader-properties"),
    f"{FIXTURES}/boxes_0.dcm": ("openslide", (16, 16), 1, 0.499, "reader-properties"),
    f"{FIXTURES}/boxes_1.dcm": ("openslide", (16, 16), 1, 0.499, "reader-properties"),
    f"{FIXTURES}/small.svs": ("openslide", (16, 16), 1, 0.499, "reader-properties"),
    QPTIFF: ("tiffslide", (1920, 1440), 1, 0.4965, "tiff-resolution"),
}


@pytest.mark.parametrize("rel", sorted(OPENS))
def test_real_slide_opens_with_expected_reader_and_mpp(wsi_dir: Path, rel: str) -> None:
    reader, dims, levels, mpp, source = OPENS[rel]
    with Slide(wsi_dir / rel) as slide:
        assert slide.info.reader == reader
        assert slide.dimensions == dims
        assert slide.level_count == levels == len(slide.level_downsamples)
        assert slide.mpp == pytest.approx(mpp, abs=1e-3)
        assert slide.info.mpp_source == source
        assert slide.info.mpp_is_estimate is False
        # The coarsest level reads as RGB uint8 of the requested shape.
        w, h = slide.level_dimensions[-1]
        region = slide.read_region(0, 0, slide.level_count - 1, w, h)
        assert region.shape == (h, w, 3) and region.dtype == np.uint8
        assert region.flags.c_contiguous


def test_every_dicom_series_file_opens_the_series(wsi_dir: Path) -> None:
    files = sorted((wsi_dir / DICOM_DIR).glob("*.dcm"))
    assert len(files) == 12
    for path in files:
        with Slide(path) as slide:
            assert slide.info.reader == "openslide" and slide.info.vendor == "dicom", path
            assert slide.level_count == 12 and slide.dimensions == (2220, 2967)
            assert slide.mpp == pytest.approx(0.499, abs=1e-3)


def test_dicom_directory_and_any_file_give_the_same_series(wsi_dir: Path) -> None:
    with Slide(wsi_dir / DICOM_DIR) as from_dir, Slide(wsi_dir / OPENS_DICOM_FILE) as from_file:
        assert from_dir.path == wsi_dir / DICOM_DIR
        assert Path(from_dir.info.opened_path).parent == wsi_dir / DICOM_DIR
        assert from_dir.level_dimensions == from_file.level_dimensions
        assert np.array_equal(
            from_dir.read_region(500, 500, 0, 64, 64), from_file.read_region(500, 500, 0, 64, 64)
        )


def test_non_conformant_dicom_fails_with_a_dicom_reason(wsi_dir: Path) -> None:
    with pytest.raises(SlideError) as err:
        Slide(wsi_dir / "dicom/pathml/small_dicom.dcm")
    assert not isinstance(err.value, MppError)
    message = str(err.value)
    assert "small_dicom.dcm" in message and "DICOM" in message
    assert "Couldn't get image flavor" in message
    assert "TiffSlide does not read DICOM" in message  # no confusing "not a TIFF file"


def test_unopenable_tiff_fails_even_though_tiffslide_opens_it(wsi_dir: Path) -> None:
    with pytest.raises(SlideError) as err:
        Slide(wsi_dir / FIXTURES / "unopenable.tiff")
    message = str(err.value)
    assert not isinstance(err.value, MppError)  # not misreported as a calibration problem
    assert "OpenSlide: Unsupported TIFF compression: 52479" in message
    assert "TiffSlide: opens the file but cannot decode its pixels" in message


def test_unreadable_svs_opens_but_read_fails_with_location(wsi_dir: Path) -> None:
    with (
        Slide(wsi_dir / FIXTURES / "unreadable.svs") as slide,
        pytest.raises(PixelReadError) as err,
    ):
        slide.read_region(0, 0, 0, 16, 16)
    assert err.value.level == 0 and err.value.region == (0, 0, 16, 16)
    assert "Bogus marker length" in err.value.detail
    assert "unreadable.svs" in str(err.value)


def test_missing_empty_and_non_slide_paths(tmp_path: Path, wsi_dir: Path) -> None:
    with pytest.raises(SlideError, match="file not found"):
        Slide(tmp_path / "nope.svs")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideError, match="empty"):
        Slide(empty)
    with pytest.raises(SlideError, match="not a slide format that OpenSlide or TiffSlide"):
        Slide(wsi_dir / "PROVENANCE.md")
    with pytest.raises(SlideError, match="without DICOM"):
        Slide(tmp_path)


def test_forced_reader(wsi_dir: Path) -> None:
    with pytest.raises(SlideError, match="TiffSlide cannot read"):
        Slide(wsi_dir / FIXTURES / "boxes_0.dcm", reader="tiffslide")
    with pytest.raises(SlideError, match="OpenSlide can read"):
        Slide(wsi_dir / QPTIFF, reader="openslide")
    with pytest.raises(ValueError):
        Slide(wsi_dir / FIXTURES / "small.svs", reader="bioformats")


def test_boxes_tiff_absurd_resolution_tags_need_an_override(wsi_dir: Path) -> None:
    path = wsi_dir / FIXTURES / "boxes.tiff"
    with pytest.raises(MppError) as err:
        Slide(path)
    message = str(err.value)
    assert "boxes.tiff" in message and "352.8" in message
    assert "--mpp" in message and "mpp column" in message
    with Slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.info.mpp_source == "override"
        assert slide.level_count == 4


def test_override_wins_over_metadata_and_is_validated(cmu_small: Path) -> None:
    with Slide(cmu_small, mpp=0.25) as slide:
        assert slide.mpp == slide.info.mpp_x == slide.info.mpp_y == 0.25
        assert slide.info.mpp_source == "override" and not slide.info.mpp_is_estimate
    for bad in (0, -0.5, float("nan")):
        with pytest.raises(MppError, match="not a positive number"):
            Slide(cmu_small, mpp=bad)


def test_mpp_resolution_order_on_a_real_reader(wsi_dir: Path) -> None:
    """Drop metadata from a real reader's property snapshot to walk down the resolution order."""
    reader = open_reader(wsi_dir / NDPI)
    try:
        props = reader.properties
        assert resolve_mpp(reader).source == "reader-properties"
        del props["openslide.mpp-x"], props["openslide.mpp-y"]
        tags = resolve_mpp(reader)  # NDPI: 43826 px/cm
        assert tags.source == "tiff-resolution"
        assert tags.mpp == pytest.approx(1e4 / 43826)
        del props["tiff.XResolution"], props["tiff.YResolution"]
        estimate = resolve_mpp(reader)  # 40x objective
        assert estimate.source == "objective-power-estimate" and estimate.is_estimate
        assert estimate.mpp == pytest.approx(0.25)
        assert "ESTIMATE" in estimate.warnings[0]
        del props["openslide.objective-power"]
        with pytest.raises(MppError, match="--mpp"):
            resolve_mpp(reader)
        assert resolve_mpp(reader, 0.3).source == "override"
    finally:
        reader.close()


def test_tiff_resolution_units() -> None:
    assert _tiff_resolution_mpp({"tiff.XResolution": "43826", "tiff.ResolutionUnit": "centimeter"})[
        0
    ] == pytest.approx(0.2281750559)
    inch = _tiff_resolution_mpp({"tiff.XResolution": 50800.0, "tiff.ResolutionUnit": "INCH"})
    assert inch == (pytest.approx(0.5), None)
    assert _tiff_resolution_mpp({"tiff.XResolution": 1, "tiff.ResolutionUnit": "NONE"}) is None
    assert _tiff_resolution_mpp({"tiff.ResolutionUnit": "inch"}) is None
    # TIFF default unit is the inch
    assert _tiff_resolution_mpp({"tiff.XResolution": 72, "tiff.YResolution": 72}) == (
        pytest.approx(352.78, abs=0.01),
        pytest.approx(352.78, abs=0.01),
    )


def test_openslide_and_tiffslide_pixels_identical_on_cmu(cmu_small: Path) -> None:
    with Slide(cmu_small) as ops, Slide(cmu_small, reader="tiffslide") as tfs:
        assert (ops.info.reader, tfs.info.reader) == ("openslide", "tiffslide")
        assert tfs.mpp == pytest.approx(ops.mpp)
        for region in [(598, 971, 0, 512, 512), (2100, 2900, 0, 200, 150), (-30, -20, 0, 64, 64)]:
            a, b = ops.read_region(*region), tfs.read_region(*region)
            assert a.shape == b.shape == (region[4], region[3], 3)
            assert a.dtype == b.dtype == np.uint8
            assert np.array_equal(a, b)


def test_openslide_fast_path_matches_public_read_region(cmu_small: Path) -> None:
    with Slide(cmu_small) as slide:
        reader = slide._reader
        assert reader.fast_path  # little-endian machine with openslide-python 1.4
        regions = [(598, 971, 0, 300, 200), (2100, 2900, 0, 200, 150), (-7, -5, 0, 16, 16)]
        fast = [slide.read_region(*r) for r in regions]
        reader.fast_path = False  # the documented public openslide-python path
        public = [slide.read_region(*r) for r in regions]
    for a, b in zip(fast, public, strict=True):
        assert a.dtype == b.dtype == np.uint8 and a.flags.c_contiguous
        assert np.array_equal(a, b)


def test_tiffslide_ndpi_has_four_stored_levels_with_identical_pixels(wsi_dir: Path) -> None:
    with Slide(wsi_dir / NDPI) as ops, Slide(wsi_dir / NDPI, reader="tiffslide") as tfs:
        assert tfs.level_count == 4 and ops.level_count == 7
        assert any("partially implemented" in w for w in tfs.info.warnings)
        for level in range(4):
            assert np.array_equal(
                ops.read_region(1472, 1920, level, 96, 80),
                tfs.read_region(1472, 1920, level, 96, 80),
            )


def test_qptiff_channels_are_flagged(wsi_dir: Path) -> None:
    with Slide(wsi_dir / QPTIFF) as slide:
        assert slide.info.vendor == "perkinelmer-qptiff"
        assert any("OpenSlide cannot open it" in w for w in slide.info.warnings)
        assert any("CYX" in w for w in slide.info.warnings)
        region = slide.read_region(448, 208, 0, 256, 256)
        assert region.shape == (256, 256, 3) and region.dtype == np.uint8


@pytest.mark.parametrize("reader", ["openslide", "tiffslide"])
def test_out_of_bounds_is_white(cmu_small: Path, reader: str) -> None:
    with Slide(cmu_small, reader=reader) as slide:
        width, height = slide.dimensions
        outside = slide.read_region(width + 10, height + 10, 0, 32, 16)
        assert outside.shape == (16, 32, 3) and (outside == 255).all()
        edge = slide.read_region(width - 8, height - 4, 0, 16, 16)
        assert (edge[:, 8:] == 255).all() and (edge[4:, :] == 255).all()
        assert not (edge[:4, :8] == 255).all()  # inside part is real slide pixels
        negative = slide.read_region(-16, 0, 0, 32, 8)
        assert (negative[:, :16] == 255).all()


def test_rgba_transparency_becomes_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [100, 0, 200, 128]]], dtype=np.uint8)
    rgb = _rgba_to_rgb_white(rgba)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    # half-transparent: halfway between the colour and white
    assert rgb[0, 2].tolist() == [177, 127, 227]


def test_best_level_for_downsample(wsi_dir: Path) -> None:
    with Slide(wsi_dir / NDPI) as slide:
        assert slide.level_downsamples == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        # 3.97 is within the 1% tolerance of 4x; 3.9 is not
        cases = {0.5: 0, 1.0: 0, 1.9: 0, 2.0: 1, 3.9: 1, 3.97: 2, 4.0: 2, 63.0: 5, 64.0: 6, 1e3: 6}
        for downsample, level in cases.items():
            assert slide.best_level_for_downsample(downsample) == level, downsample
        assert slide.level_mpp(3) == pytest.approx(slide.mpp * 8)
    with Slide(wsi_dir / DICOM_DIR) as dicom:  # 2.0003, 4.002, 8.0167, 16.0624: within 1%
        assert [dicom.best_level_for_downsample(d) for d in (2, 4, 8, 16)] == [1, 2, 3, 4]


def test_read_at_mpp_on_ndpi(wsi_dir: Path) -> None:
    with Slide(wsi_dir / NDPI) as slide:
        # 512 level-0 px -> 256 px: level 1 read exactly, no resampling
        patch = slide.read_at_mpp(1024, 2048, (512, 512), (256, 256))
        assert np.array_equal(patch, slide.read_region(1024, 2048, 1, 256, 256))
        # 512 -> 64: level 3
        assert np.array_equal(
            slide.read_at_mpp(1024, 2048, (512, 512), (64, 64)),
            slide.read_region(1024, 2048, 3, 64, 64),
        )
        # 512 -> 200 (2.56x): level 1 (2x) then area-resized, never upsampled
        odd = slide.read_at_mpp(1024, 2048, (512, 512), (200, 200))
        level1 = slide.read_region(1024, 2048, 1, 256, 256)
        expected = cv2.resize(level1, (200, 200), interpolation=cv2.INTER_AREA)
        assert odd.shape == (200, 200, 3) and odd.dtype == np.uint8
        assert np.array_equal(odd, expected)
        # non-square output
        assert slide.read_at_mpp(0, 0, (1024, 512), (128, 64)).shape == (64, 128, 3)


def test_thumbnail_at_mpp_from_pyramid(wsi_dir: Path, cmu_small: Path) -> None:
    with Slide(wsi_dir / NDPI) as slide:
        coarsest_mpp = slide.level_mpp(6)
        thumb, actual = slide.thumbnail_at_mpp(coarsest_mpp)
        assert thumb.shape == (76, 62, 3)
        assert np.array_equal(thumb, slide.read_region(0, 0, 6, 62, 76))
        assert actual == pytest.approx(slide.mpp * 3968 / 62)
    with Slide(cmu_small) as slide:
        thumb, actual = slide.thumbnail_at_mpp(8.0)
        assert thumb.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8), 3)
        assert actual == pytest.approx(2220 / thumb.shape[1] * 0.499)
        assert math.isclose(actual, 8.0, rel_tol=0.02)
        full, native = slide.thumbnail_at_mpp(0.1)  # finer than level 0: clamped to level 0
        assert full.shape == (2967, 2220, 3) and native == pytest.approx(0.499)


def test_huge_levels_are_read_in_bands(cmu_small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Slide(cmu_small) as slide:
        whole, mpp_whole = slide.thumbnail_at_mpp(4.0)
        monkeypatch.setattr(slides, "_WHOLE_LEVEL_MAX_PX", 500_000)  # CMU level 0 is 6.6 Mpx
        banded, mpp_banded = slide.thumbnail_at_mpp(4.0)
    assert banded.shape == whole.shape and mpp_banded == mpp_whole
    # band edges shift the area kernel by under a pixel; the picture is the same
    assert np.abs(banded.astype(int) - whole).mean() < 1.0


def test_repr_associated_names_and_close(cmu_small: Path) -> None:
    slide = Slide(cmu_small)
    text = repr(slide)
    assert "openslide" in text and "0.499" in text and "2220x2967" in text
    assert slide.info.associated_images == ["label", "macro", "thumbnail"]
    assert slide.info.objective_power == 20
    slide.close()


def test_invalid_reads_raise(cmu_small: Path) -> None:
    with Slide(cmu_small) as slide:
        with pytest.raises(ValueError, match="level"):
            slide.read_region(0, 0, 1, 10, 10)
        with pytest.raises(ValueError, match=">= 1"):
            slide.read_region(0, 0, 0, 0, 10)
