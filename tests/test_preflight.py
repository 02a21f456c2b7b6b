"""`slotspe-pipe preflight`: the triage record of every real WSI test file, and the CLI contract.

Expected status, reader and µm/px come from ../shared/testdata/wsi/PROVENANCE.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slotspe_pipe import __version__, preflight
from slotspe_pipe.cli import main
from slotspe_pipe.preflight import _probe_regions, preflight_slide
from slotspe_pipe.slides import open_reader

REQUIRED_KEYS = {
    "slide_id",
    "slide_path",
    "status",
    "reason",
    "reader",
    "vendor",
    "level_dimensions",
    "level_downsamples",
    "mpp",
    "mpp_source",
    "mpp_is_estimate",
    "objective_power",
    "associated_images",
    "modality",
    "warnings",
    "probe",
    "file_size_bytes",
    "package_version",
    "preflight_seconds",
}

DICOM_DIR = "dicom/cmu-1-small-region-wsi2dcm"
FIX = "openslide-python-fixtures"
_OK_OS = ("ok", "openslide")
# path -> (status, reader, mpp, modality, failed_check, words the reason must contain)
EXPECTED = {
    "aperio/CMU-1-Small-Region.svs": (*_OK_OS, 0.499, "brightfield", None, ()),
    DICOM_DIR: (*_OK_OS, 0.499, "brightfield", None, ()),
    # any file of the series opens the whole series (test_slides opens every one of the 12)
    f"{DICOM_DIR}/level-0-frames-0-30.dcm": (*_OK_OS, 0.499, "brightfield", None, ()),
    f"{DICOM_DIR}/level-11-frames-0-1.dcm": (*_OK_OS, 0.499, "brightfield", None, ()),
    "dicom/pathml/small_dicom.dcm": (
        "failed",
        None,
        None,
        "unknown",
        "open",
        ("DICOM", "Couldn't get image flavor", "TiffSlide does not read DICOM"),
    ),
    "hamamatsu/test3-DAPI-2-387.ndpi": (*_OK_OS, 0.2282, "fluorescence", None, ()),
    f"{FIX}/boxes.tiff": (
        "failed",
        "openslide",
        None,
        "brightfield",
        "mpp",
        ("no usable µm/px", "352.8", "--mpp", "sample sheet's mpp column"),
    ),
    f"{FIX}/boxes_0.dcm": (*_OK_OS, 0.499, "brightfield", None, ()),
    f"{FIX}/boxes_1.dcm": (*_OK_OS, 0.499, "brightfield", None, ()),
    f"{FIX}/small.svs": (*_OK_OS, 0.499, "brightfield", None, ()),
    f"{FIX}/unopenable.tiff": (
        "failed",
        None,
        None,
        "unknown",
        "open",
        ("not a slide format", "OpenSlide: Unsupported TIFF compression: 52479", "TiffSlide"),
    ),
    f"{FIX}/unreadable.svs": (
        "failed",
        "openslide",
        0.499,
        "unknown",
        "pixels",
        ("pixel data is corrupt", "level 0 (x=0, y=0", "Bogus marker length"),
    ),
    "perkinelmer/small_vectra.qptiff": ("ok", "tiffslide", 0.4965, "fluorescence", None, ()),
}


def _dicom_files(wsi_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(wsi_dir)) for p in (wsi_dir / DICOM_DIR).glob("*.dcm"))


def test_every_real_file_is_covered(wsi_dir: Path) -> None:
    on_disk = {str(p.relative_to(wsi_dir)) for p in wsi_dir.rglob("*") if p.is_file()}
    on_disk -= {"PROVENANCE.md", *_dicom_files(wsi_dir)}
    assert on_disk <= set(EXPECTED), f"add expectations for {sorted(on_disk - set(EXPECTED))}"


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_record_of_real_file(wsi_dir: Path, rel: str) -> None:
    status, reader, mpp, modality, failed_check, words = EXPECTED[rel]
    record = preflight_slide(wsi_dir / rel, slide_id="S1")
    assert set(record) >= REQUIRED_KEYS
    json.dumps(record, allow_nan=False)  # strict JSON: no NaN/inf, only plain types
    assert record["status"] == status, record["reason"]
    assert record["reader"] == reader
    assert record["failed_check"] == failed_check
    assert record["modality"] == modality
    assert record["slide_id"] == "S1" and record["package_version"] == __version__
    assert record["file_size_bytes"] > 0
    if mpp is None:
        assert record["mpp"] is None and record["mpp_source"] is None
    else:
        assert record["mpp"] == pytest.approx(mpp, abs=1e-3)
    for word in words:
        assert word in record["reason"]
    if status == "ok":
        assert record["reason"] is None
        assert record["probe"]["levels"] == len(record["level_dimensions"])
        assert record["probe"]["regions_read"] >= record["probe"]["levels"]
        assert record["mpp_is_estimate"] is False
    else:
        assert str(wsi_dir / rel) not in record["reason"]  # the record names the slide already


def test_boxes_tiff_is_ok_with_an_mpp_override(wsi_dir: Path) -> None:
    record = preflight_slide(wsi_dir / FIX / "boxes.tiff", mpp=0.5)
    assert record["status"] == "ok"
    assert record["mpp"] == 0.5 and record["mpp_source"] == "override"
    assert record["level_dimensions"] == [[300, 250], [150, 125], [75, 62], [37, 31]]
    assert record["associated_images"] == []


def test_override_wins_on_a_calibrated_slide(cmu_small: Path) -> None:
    record = preflight_slide(cmu_small, mpp=0.25)
    assert record["mpp"] == 0.25 and record["mpp_source"] == "override"


def test_cmu_record_details(cmu_small: Path) -> None:
    record = preflight_slide(cmu_small)
    assert record["vendor"] == "aperio" and record["objective_power"] == 20
    assert record["associated_images"] == ["label", "macro", "thumbnail"]  # names only
    assert record["level_dimensions"] == [[2220, 2967]] and record["level_downsamples"] == [1.0]
    assert record["mpp_source"] == "reader-properties"
    assert record["warnings"] == []


def test_fluorescence_and_fallback_are_flagged(wsi_dir: Path) -> None:
    qptiff = preflight_slide(wsi_dir / "perkinelmer/small_vectra.qptiff")
    assert qptiff["modality_source"] == "metadata"
    assert qptiff["mpp_source"] == "tiff-resolution"
    text = " | ".join(qptiff["warnings"])
    assert "OpenSlide cannot open it" in text and "CYX" in text and "fluorescence" in text
    ndpi = preflight_slide(wsi_dir / "hamamatsu/test3-DAPI-2-387.ndpi")
    assert ndpi["modality_source"] == "pixels"
    assert ndpi["level_count"] == 7 and ndpi["probe"]["levels"] == 7


def test_missing_file(tmp_path: Path) -> None:
    record = preflight_slide(tmp_path / "gone.svs")
    assert record["status"] == "failed" and record["reason"] == "file not found"
    assert record["file_size_bytes"] is None


def test_probe_regions_cover_each_level_within_bounds(wsi_dir: Path) -> None:
    reader = open_reader(wsi_dir / "hamamatsu/test3-DAPI-2-387.ndpi")
    try:
        rng = np.random.default_rng(0)
        for level, (lw, lh) in enumerate(reader.level_dimensions):
            regions = _probe_regions(reader, level, 8, rng)
            assert 1 <= len(regions) <= 8 and len(set(regions)) == len(regions)
            ds = reader.level_downsamples[level]
            # back to level pixels: (x0, y0, x1, y1)
            boxes = [(round(x / ds), round(y / ds), w, h) for x, y, w, h in regions]
            boxes = [(x, y, x + w, y + h) for x, y, w, h in boxes]
            assert min(b[0] for b in boxes) == 0 and min(b[1] for b in boxes) == 0
            assert max(b[2] for b in boxes) == lw and max(b[3] for b in boxes) == lh
    finally:
        reader.close()


# ---------------------------------------------------------------------------------- CLI


def test_cli_ok_failed_and_strict(tmp_path: Path, wsi_dir: Path, cmu_small: Path) -> None:
    out = tmp_path / "rec" / "cmu.json"
    assert main(["preflight", str(cmu_small), "-o", str(out), "--slide-id", "CMU"]) == 0
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["slide_id"] == "CMU"

    bad = wsi_dir / FIX / "unreadable.svs"
    failed = tmp_path / "bad.json"
    assert main(["preflight", str(bad), "-o", str(failed)]) == 0  # a run over many slides continues
    assert json.loads(failed.read_text())["status"] == "failed"
    strict = tmp_path / "strict.json"
    assert main(["preflight", str(bad), "-o", str(strict), "--strict"]) == 1
    assert json.loads(strict.read_text())["status"] == "failed"  # record written anyway

    boxes = tmp_path / "boxes.json"
    boxes_path = str(wsi_dir / FIX / "boxes.tiff")
    assert main(["preflight", boxes_path, "-o", str(boxes), "--mpp", "0.5", "--strict"]) == 0
    assert json.loads(boxes.read_text())["mpp_source"] == "override"
    assert not [p for p in tmp_path.rglob(".*tmp-*")]  # no temporaries left behind


def test_cli_rejects_a_nonsense_mpp(tmp_path: Path, cmu_small: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["preflight", str(cmu_small), "-o", str(tmp_path / "r.json"), "--mpp", "-1"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "r.json").exists()


def test_cli_forced_reader(tmp_path: Path, cmu_small: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["preflight", str(cmu_small), "-o", str(out), "--reader", "tiffslide"]) == 0
    record = json.loads(out.read_text())
    assert record["reader"] == "tiffslide" and record["status"] == "ok"


def test_internal_crash_leaves_nothing_at_output(
    tmp_path: Path, cmu_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in our code (not a bad slide) must propagate and leave no record behind."""

    def broken(*_args: object, **_kwargs: object) -> tuple[str, str]:
        raise RuntimeError("simulated bug in modality detection")

    monkeypatch.setattr(preflight, "guess_modality", broken)
    out = tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["preflight", str(cmu_small), "-o", str(out)])
    assert list(tmp_path.iterdir()) == []


def test_console_entry_point_exit_codes(tmp_path: Path, wsi_dir: Path) -> None:
    bad = str(wsi_dir / FIX / "unopenable.tiff")
    cmd = [sys.executable, "-m", "slotspe_pipe", "preflight", bad, "-o", str(tmp_path / "r.json")]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    strict = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1
    assert "FAILED" in strict.stderr and "52479" in strict.stderr
