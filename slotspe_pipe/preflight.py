"""`slotspe-pipe preflight SLIDE -o RECORD.json`: triage one slide before any GPU time is spent.

The record says whether the slide can be used (``status`` "ok" | "failed") and, if not, why in
plain words. A run over thousands of slides must not stop at one bad file, so a failed slide still
exits 0 and writes its record (``--strict`` makes it exit 1). Only a bug in this code (not a bad
slide) raises; the record is written atomically, so nothing is left at the output path then.

Checks, in order: the file opens (OpenSlide, else TiffSlide); a sparse sample of regions at every
pyramid level decodes (corrupt tiles are caught here, not in the middle of feature extraction);
µm/px resolves. The coarsest level also gives a modality guess (brightfield vs fluorescence) that
tissue segmentation uses. No label/macro image is ever read: only their names are listed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slotspe_pipe import __version__
from slotspe_pipe.slides import (
    READERS,
    MppError,
    PixelReadError,
    SlideError,
    SlideReader,
    open_reader,
    resolve_mpp,
)
from slotspe_pipe.store.atomic import write_json

log = logging.getLogger(__name__)

_READER_NAMES = {"openslide": "OpenSlide", "tiffslide": "TiffSlide"}

# Regions read per level: 4 corners + centre + seeded random positions.
REGIONS_PER_LEVEL = 8
# Probe region side in level pixels: the stored tile size, clamped to this range.
REGION_PX_MIN, REGION_PX_MAX = 256, 512
# The modality sample is the whole coarsest level if no side exceeds this (level pixels).
MODALITY_SAMPLE_PX = 1024
# Brightfield background is near white; a fluorescence scan is mostly near black.
FLUORESCENCE_MEDIAN_LUMINANCE = 50.0


@dataclass
class ProbeResult:
    """What the sparse pixel probe did; ``sample`` is coarsest-level RGB (N, 3) for modality."""

    levels: int
    regions_read: int
    seconds: float
    sample: np.ndarray | None


def probe_pixels(
    reader: SlideReader, regions_per_level: int = REGIONS_PER_LEVEL, seed: int = 0
) -> ProbeResult:
    """Decode a few regions spread over every level; raise ``PixelReadError`` at the first bad one.

    Corners and centre catch truncated files and edge tiles; seeded random positions catch
    corrupt tiles elsewhere while keeping the record reproducible.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    regions_read = 0
    coarsest = reader.level_count - 1
    coarsest_pixels: list[np.ndarray] = []
    for level in range(reader.level_count):
        for x0, y0, w, h in _probe_regions(reader, level, regions_per_level, rng):
            rgb = reader.read_rgb(x0, y0, level, w, h)
            regions_read += 1
            if level == coarsest:
                coarsest_pixels.append(rgb.reshape(-1, 3))
    lw, lh = reader.level_dimensions[coarsest]
    if max(lw, lh) <= MODALITY_SAMPLE_PX:
        # A pyramid's top level is small: look at all of it.
        sample = reader.read_rgb(0, 0, coarsest, lw, lh).reshape(-1, 3)
        regions_read += 1
    else:  # no small level (non-pyramidal file): the spread-out probe regions are the sample
        sample = np.concatenate(coarsest_pixels)
    return ProbeResult(reader.level_count, regions_read, time.perf_counter() - start, sample)


def _probe_regions(
    reader: SlideReader, level: int, n: int, rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` distinct regions (level-0 x, y; level w, h) covering a level's extent."""
    lw, lh = reader.level_dimensions[level]
    tile = reader.tile_size(level) or (REGION_PX_MIN, REGION_PX_MIN)
    w = min(max(tile[0], REGION_PX_MIN), REGION_PX_MAX, lw)
    h = min(max(tile[1], REGION_PX_MIN), REGION_PX_MAX, lh)
    xmax, ymax = lw - w, lh - h
    positions = [(0, 0), (xmax, 0), (0, ymax), (xmax, ymax), (xmax // 2, ymax // 2)]
    for _ in range(max(0, n - len(positions))):
        positions.append((int(rng.integers(0, xmax + 1)), int(rng.integers(0, ymax + 1))))
    ds = reader.level_downsamples[level]
    unique = list(dict.fromkeys(positions))[:n]
    return [(round(x * ds), round(y * ds), w, h) for x, y in unique]


def guess_modality(reader: SlideReader, sample: np.ndarray | None) -> tuple[str, str]:
    """("brightfield" | "fluorescence" | "unknown", source "metadata" | "pixels" | "none").

    Metadata wins where a format states it (PerkinElmer QPTIFF); otherwise a dark-background
    coarsest level (median luminance below ``FLUORESCENCE_MEDIAN_LUMINANCE``) means fluorescence.
    """
    description = str(reader.properties.get("tiff.ImageDescription") or "")
    if "PerkinElmer-QPI" in description:
        if (
            "im_Fluorescence" in description
            or reader.properties.get("tiffslide.series-axes") == "CYX"
        ):
            return "fluorescence", "metadata"
        if "im_Brightfield" in description:
            return "brightfield", "metadata"
    if sample is None or sample.size == 0:
        return "unknown", "none"
    luminance = float(np.median(sample.reshape(-1, 3).mean(axis=1)))
    return (
        "fluorescence" if luminance < FLUORESCENCE_MEDIAN_LUMINANCE else "brightfield"
    ), "pixels"


def preflight_slide(
    path: str | os.PathLike[str],
    mpp: float | None = None,
    slide_id: str | None = None,
    reader: str | None = None,
) -> dict[str, Any]:
    """Triage one slide and return its record (JSON-ready dict); never raises for a bad slide.

    ``mpp`` is the sample-sheet / CLI override of the level-0 µm/px; ``reader`` forces
    "openslide" or "tiffslide". ``status`` is "failed" with a plain-words ``reason`` and
    ``failed_check`` ("open" | "pixels" | "mpp") when the slide cannot be used.
    """
    start = time.perf_counter()
    path = Path(path)
    record: dict[str, Any] = {
        "slide_id": slide_id,
        "slide_path": str(path),
        "status": "failed",
        "reason": None,
        "failed_check": None,
        "reader": None,
        "opened_path": None,
        "vendor": None,
        "file_size_bytes": _file_size(path),
        "level_count": None,
        "level_dimensions": None,
        "level_downsamples": None,
        "mpp": None,
        "mpp_x": None,
        "mpp_y": None,
        "mpp_source": None,
        "mpp_is_estimate": None,
        "objective_power": None,
        "associated_images": [],
        "modality": "unknown",
        "modality_source": "none",
        "warnings": [],
        "probe": None,
        "package_version": __version__,
        "preflight_seconds": None,
    }
    problems: list[tuple[str, str]] = []  # (check, reason), most fundamental first
    try:
        opened = open_reader(path, reader=reader)
    except SlideError as exc:
        problems.append(("open", _strip_path(str(exc), path)))
    else:
        with _closing(opened):
            _describe_reader(record, opened)
            try:
                probe = probe_pixels(opened)
            except PixelReadError as exc:
                x, y, w, h = exc.region
                problems.append(
                    (
                        "pixels",
                        f"slide opens but pixel data is corrupt or cannot be decoded at level "
                        f"{exc.level} (x={x}, y={y}, {w}x{h} px): "
                        f"{_READER_NAMES.get(exc.reader, exc.reader)}: {exc.detail}",
                    )
                )
            except SlideError as exc:  # e.g. a pixel type we cannot turn into RGB
                problems.append(("pixels", _strip_path(str(exc), path)))
            else:
                record["probe"] = {
                    "levels": probe.levels,
                    "regions_read": probe.regions_read,
                    "seconds": round(probe.seconds, 4),
                }
                modality, source = guess_modality(opened, probe.sample)
                record["modality"], record["modality_source"] = modality, source
                if modality == "fluorescence":
                    record["warnings"].append(
                        f"fluorescence image ({source}): brightfield (H&E) tissue detection and "
                        f"H&E-trained encoders do not apply as they are"
                    )
            try:
                resolution = resolve_mpp(opened, mpp)
            except MppError as exc:
                problems.append(("mpp", _strip_path(str(exc), path)))
            else:
                record.update(
                    mpp=resolution.mpp,
                    mpp_x=resolution.mpp_x,
                    mpp_y=resolution.mpp_y,
                    mpp_source=resolution.source,
                    mpp_is_estimate=resolution.is_estimate,
                )
                record["warnings"].extend(resolution.warnings)
    if problems:
        record["failed_check"], record["reason"] = problems[0]
        record["warnings"].extend(f"also: {reason}" for _check, reason in problems[1:])
    else:
        record["status"] = "ok"
    record["preflight_seconds"] = round(time.perf_counter() - start, 4)
    return record


def _describe_reader(record: dict[str, Any], opened: SlideReader) -> None:
    record.update(
        reader=opened.name,
        opened_path=str(opened.opened_path),
        vendor=opened.vendor,
        level_count=opened.level_count,
        level_dimensions=[list(d) for d in opened.level_dimensions],
        level_downsamples=list(opened.level_downsamples),
        objective_power=opened.objective_power(),
        associated_images=list(opened.associated_images),
    )
    record["warnings"].extend(opened.warnings)


class _closing:
    def __init__(self, reader: SlideReader) -> None:
        self.reader = reader

    def __enter__(self) -> SlideReader:
        return self.reader

    def __exit__(self, *exc: object) -> None:
        self.reader.close()


def _strip_path(message: str, path: Path) -> str:
    # The record already names the slide; the reason reads better without the path prefix.
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _file_size(path: Path) -> int | None:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of µm/px, got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="slide file, or a DICOM series file or directory")
    parser.add_argument("-o", "--output", required=True, help="record to write (JSON)")
    parser.add_argument(
        "--mpp",
        type=_positive_float,
        default=None,
        help="level-0 µm/px override (the sample sheet's mpp column); wins over slide metadata",
    )
    parser.add_argument("--slide-id", default=None, help="slide identifier to put in the record")
    parser.add_argument(
        "--reader",
        choices=READERS,
        default=None,
        help="force one reader (default: OpenSlide, then TiffSlide)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if the slide failed (default: exit 0)"
    )


def run_cli(args: argparse.Namespace) -> int:
    record = preflight_slide(args.slide, mpp=args.mpp, slide_id=args.slide_id, reader=args.reader)
    write_json(args.output, record)
    if record["status"] == "ok":
        estimate = " (ESTIMATE)" if record["mpp_is_estimate"] else ""
        log.info(
            "%s: ok (%s, %s levels, %.4g µm/px from %s%s, %s; probe %d regions in %.2f s)",
            args.slide,
            record["reader"],
            record["level_count"],
            record["mpp"],
            record["mpp_source"],
            estimate,
            record["modality"],
            record["probe"]["regions_read"],
            record["probe"]["seconds"],
        )
        for warning in record["warnings"]:
            log.warning("%s: %s", args.slide, warning)
        return 0
    log.error("%s: FAILED (%s): %s", args.slide, record["failed_check"], record["reason"])
    return 1 if args.strict else 0
