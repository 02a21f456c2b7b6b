"""Open one whole-slide image and read RGB pixels at a known physical resolution.

OpenSlide (through openslide-python + openslide-bin, so no system library) is tried first because
it reads the most vendor formats (and DICOM series); TiffSlide is the fallback for TIFF files that
OpenSlide rejects (e.g. PerkinElmer QPTIFF). Every read returns RGB uint8 whatever the reader, with
transparent or out-of-slide pixels white, so later stages never branch on the reader.

µm/px (``mpp``) is resolved in a fixed order and its source recorded, because every physical size
downstream (patch size in µm, areas in mm²) depends on it: explicit override (sample sheet /
``--mpp``) > reader properties > TIFF resolution tags > objective power (an estimate, flagged) >
``MppError`` telling the user how to pass an override. Values outside a plausible range for a
slide scan are rejected per source (a 72-dpi default resolution tag is not a microscope).

No label, macro or thumbnail image is ever read here: only their names are listed.
This module must not import torch (the preflight CLI starts fast).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

READERS = ("openslide", "tiffslide")

# A slide scan is somewhere between ~100x (0.1 µm/px) and a ~0.5x overview (~20 µm/px); anything
# outside this is a wrong/default calibration (72 dpi -> 352.8 µm/px), not a microscope.
MPP_PLAUSIBLE_UM = (0.05, 20.0)
# Objective powers that make sense for a 10/objective µm/px estimate.
OBJECTIVE_PLAUSIBLE = (1.0, 150.0)
# x and y µm/px that differ by more than this are anisotropic pixels, not rounding.
MPP_XY_REL_TOL = 0.05
# best_level_for_downsample accepts a level this much coarser than asked (DICOM levels are
# 2.0003x, 4.002x, ... and must still count as 2x, 4x).
DOWNSAMPLE_TOL = 0.01
# Read a pyramid level in one call up to this many pixels; larger levels go in row bands.
_WHOLE_LEVEL_MAX_PX = 64 * 1024 * 1024
_MAX_THUMBNAIL_PX = 400 * 1024 * 1024

_DICOM_SUFFIXES = (".dcm", ".dicom")
_UNIT_UM = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "in": 25400.0}


class SlideError(Exception):
    """A slide cannot be opened or read; the message names the file and what failed."""


class MppError(SlideError):
    """µm/px cannot be resolved; the message says how to pass an override."""


class PixelReadError(SlideError):
    """The slide opened but a region's pixel data cannot be decoded (corrupt tile, bad codec).

    Carries where it failed, so a triage record can say so without parsing the message.
    """

    def __init__(
        self, path: Path, reader: str, level: int, region: tuple[int, int, int, int], detail: str
    ) -> None:
        x, y, width, height = region
        super().__init__(
            f"{path}: cannot read pixels at level {level} (x={x}, y={y}, {width}x{height} px) "
            f"with {reader}: {detail}"
        )
        self.reader = reader
        self.level = level
        self.region = region  # x, y level-0; width, height in level pixels
        self.detail = detail


@dataclass(frozen=True)
class SlideInfo:
    """What is known about an opened slide (JSON-friendly: plain types only)."""

    path: str
    reader: str  # "openslide" | "tiffslide"
    vendor: str | None
    level_dimensions: list[tuple[int, int]]  # (width, height) per level, pixels
    level_downsamples: list[float]
    mpp: float  # level-0 µm/px (x and y averaged when they differ slightly)
    mpp_x: float
    mpp_y: float
    # "override" | "reader-properties" | "tiff-resolution" | "objective-power-estimate"
    mpp_source: str
    mpp_is_estimate: bool
    objective_power: float | None
    associated_images: list[str]  # names only; never read or written by us
    opened_path: str = ""  # the file the reader opened (differs from path for a DICOM directory)
    warnings: list[str] = field(default_factory=list)  # things a person should know (plain words)


@dataclass(frozen=True)
class MppResolution:
    """The resolved level-0 µm/px and where it came from."""

    mpp: float
    mpp_x: float
    mpp_y: float
    source: str
    is_estimate: bool
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Readers: one small wrapper per library, both returning RGB uint8 with white outside the slide.
# --------------------------------------------------------------------------------------------


class SlideReader:
    """A low-level opened slide: levels, metadata snapshot and RGB reads, no µm/px logic.

    Use ``open_reader`` to get one. ``Slide`` is the interface for pipeline stages; this one
    exists so that preflight can probe pixels of a slide whose µm/px cannot be resolved.
    """

    name: str = ""

    def __init__(self, path: Path, opened_path: Path) -> None:
        self.path = path
        self.opened_path = opened_path
        self.vendor: str | None = None
        self.level_dimensions: list[tuple[int, int]] = []
        self.level_downsamples: list[float] = []
        # Snapshot at open: OpenSlide refuses every call (properties too) after one failed read.
        self.properties: dict[str, Any] = {}
        self.associated_images: list[str] = []
        self.warnings: list[str] = []
        # True when the reader found no vendor metadata: its µm/px is then just the resolution tags.
        self.generic_tiff = False

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def tile_size(self, level: int) -> tuple[int, int] | None:
        """Stored tile (width, height) of a level in pixels, if the reader reports one."""
        w = _as_float(self.properties.get(f"{self._prefix}.level[{level}].tile-width"))
        h = _as_float(self.properties.get(f"{self._prefix}.level[{level}].tile-height"))
        if w and h and w > 0 and h > 0:
            return int(w), int(h)
        return None

    @property
    def _prefix(self) -> str:
        return self.name

    def reader_mpp(self) -> tuple[float | None, float | None]:
        """µm/px (x, y) as the reader's own metadata parser reports it."""
        return (
            _as_float(self.properties.get(f"{self._prefix}.mpp-x")),
            _as_float(self.properties.get(f"{self._prefix}.mpp-y")),
        )

    def objective_power(self) -> float | None:
        """Scanning objective magnification from the reader's metadata, if any."""
        return _as_float(self.properties.get(f"{self._prefix}.objective-power"))

    def read_rgb(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) RGB uint8, C-contiguous; (x, y) level-0, size in level pixels.

        Raises ``SlideError`` naming the file, level and region when the reader fails.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        if width < 1 or height < 1:
            raise ValueError(f"{self.path}: region size must be >= 1 px, got {width}x{height}")
        try:
            return self._read(int(x), int(y), level, int(width), int(height))
        except SlideError:
            raise
        except Exception as exc:  # the readers raise many unrelated types for bad pixel data
            region = (int(x), int(y), int(width), int(height))
            raise PixelReadError(self.path, self.name, level, region, _describe(exc)) from exc

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _OpenSlideReader(SlideReader):
    name = "openslide"

    def __init__(self, path: Path, opened_path: Path) -> None:
        import openslide

        super().__init__(path, opened_path)
        self._slide = openslide.OpenSlide(str(opened_path))
        self.properties = dict(self._slide.properties)
        self.vendor = self.properties.get("openslide.vendor")
        self.generic_tiff = self.vendor == "generic-tiff"
        self.level_dimensions = [(int(w), int(h)) for w, h in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        # Names come from the property list, so no associated image is ever decoded.
        self.associated_images = list(self._slide.associated_images.keys())
        # openslide-python's public read_region un-premultiplies into a PIL image; reading the
        # premultiplied ARGB words straight into numpy is ~25% faster on 1024 px reads. Guarded:
        # if a future openslide-python renames these, the public path is used.
        self._raw_read = getattr(openslide.lowlevel, "_read_region", None)
        self._handle = getattr(self._slide, "_osr", None)
        self.fast_path = (
            sys.byteorder == "little" and self._raw_read is not None and self._handle is not None
        )
        self.ycbcr_as_rgb = _dicom_ycbcr_labelled_rgb(self.properties, opened_path)
        if self.ycbcr_as_rgb:
            self.warnings.append(
                "DICOM says RGB but its JPEG frames are JFIF (YCbCr); colours are converted"
            )

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if not self.fast_path:
            rgba = np.asarray(self._slide.read_region((x, y), level, (width, height)))
            rgb = _rgba_to_rgb_white(rgba)
        else:
            argb = np.empty((height, width), dtype=np.uint32)
            pointer = argb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
            self._raw_read(self._handle, pointer, x, y, level, width, height)
            rgb = _premultiplied_bgra_to_rgb_white(argb.view(np.uint8).reshape(height, width, 4))
        if self.ycbcr_as_rgb:
            # OpenSlide trusted the RGB label and left the YCbCr samples unconverted.
            rgb = _cv2().cvtColor(np.ascontiguousarray(rgb[..., [0, 2, 1]]), _cv2().COLOR_YCrCb2RGB)
        return rgb

    def close(self) -> None:
        self._slide.close()


class _TiffSlideReader(SlideReader):
    name = "tiffslide"

    def __init__(self, path: Path, opened_path: Path) -> None:
        import tiffslide

        super().__init__(path, opened_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._slide = tiffslide.TiffSlide(str(opened_path))
            self.properties = dict(self._slide.properties)
        self.warnings += [f"TiffSlide: {w.message}" for w in caught]
        self._axes = str(self.properties.get("tiffslide.series-axes", "YXS"))
        self.vendor = self.properties.get("tiffslide.vendor")
        if not self.vendor:
            self.generic_tiff = True
            # Same word as OpenSlide for a TIFF without vendor metadata; QPTIFF is worth naming.
            is_qpi = getattr(getattr(self._slide, "ts_tifffile", None), "is_qpi", False)
            self.vendor = "perkinelmer-qptiff" if is_qpi else "generic-tiff"
        self.level_dimensions = [(int(w), int(h)) for w, h in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self.associated_images = list(self._slide.associated_images.keys())
        if self._axes == "CYX":
            self.warnings.append(
                "TiffSlide presents separate channel planes (CYX) as RGB: this is a multiplex / "
                "fluorescence image, not a brightfield RGB scan"
            )

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        level_w, level_h = self.level_dimensions[level]
        # Same level-0 -> level mapping as TiffSlide itself, so our padding lines up with its crop.
        rx0 = int(x / self.level_downsamples[level])
        ry0 = int(y / self.level_downsamples[level])
        pad_x0 = min(max(-rx0, 0), width)
        pad_y0 = min(max(-ry0, 0), height)
        pad_x1 = min(max(rx0 + width - level_w, 0), width)
        pad_y1 = min(max(ry0 + height - level_h, 0), height)
        if pad_x0 + pad_x1 >= width or pad_y0 + pad_y1 >= height:
            return np.full((height, width, 3), 255, dtype=np.uint8)  # entirely outside the slide
        arr = self._slide.read_region((x, y), level, (width, height), as_array=True, padding=False)
        rgb = self._to_rgb(np.asarray(arr))
        if pad_x0 == pad_x1 == pad_y0 == pad_y1 == 0:
            return _owned_contiguous(rgb)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        out[pad_y0 : height - pad_y1, pad_x0 : width - pad_x1] = rgb
        return out

    def _to_rgb(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype != np.uint8:
            raise SlideError(
                f"{self.path}: pixel type {arr.dtype} is not supported (expected 8-bit uint8 "
                f"samples); convert the slide to an 8-bit RGB pyramidal TIFF"
            )
        channels = arr.shape[2] if arr.ndim == 3 else 1
        if arr.ndim == 2 or channels == 1:
            return np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
        if channels == 3:
            return arr
        if channels == 4 and self._axes == "YXS":
            return _rgba_to_rgb_white(arr)
        raise SlideError(
            f"{self.path}: {channels} image channels (axes {self._axes}) cannot be shown as RGB; "
            f"only 1-, 3- or 4-channel (RGBA) 8-bit images are supported"
        )

    def close(self) -> None:
        self._slide.close()


JPEG_BASELINE_TRANSFER_SYNTAX = "1.2.840.10008.1.2.4.50"


def _dicom_ycbcr_labelled_rgb(properties: Mapping[str, Any], opened_path: Path) -> bool:
    """True for DICOM whose JPEG frames are JFIF (YCbCr) but whose PhotometricInterpretation says RGB.

    Some converters (e.g. wsi2dcm) write such series; OpenSlide believes the tag and returns the
    YCbCr samples as if they were RGB (glass turns pink), so the reader converts them itself.
    """
    if properties.get("openslide.vendor") != "dicom":
        return False
    if properties.get("dicom.PhotometricInterpretation") != "RGB":
        return False
    if properties.get("dicom.TransferSyntaxUID") != JPEG_BASELINE_TRANSFER_SYNTAX:
        return False
    try:
        with open(opened_path, "rb") as fh:
            head = fh.read(4 << 20)
    except OSError:
        return False
    start = head.find(b"\xff\xd8\xff")
    if start < 0:
        return False
    # SOI followed by an APP0 "JFIF" segment: the JFIF standard mandates YCbCr for 3 components.
    return head[start + 3 : start + 4] == b"\xe0" and head[start + 6 : start + 10] == b"JFIF"


def _rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (un-premultiplied) RGBA onto white; alpha 0 (no data) becomes 255.

    OpenCV does the channel work: numpy on the strided RGBA view is ~25x slower.
    """
    cv2 = _cv2()
    rgba = np.ascontiguousarray(rgba)
    rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    alpha = cv2.extractChannel(rgba, 3)
    if alpha.min() == 255:
        return rgb
    alpha3 = cv2.merge([alpha, alpha, alpha])
    # rgb * a/255 + 255 * (1 - a/255), rounded: premultiply, then add the white that shows through
    return cv2.add(cv2.multiply(rgb, alpha3, scale=1.0 / 255.0), 255 - alpha3)


def _premultiplied_bgra_to_rgb_white(bgra: np.ndarray) -> np.ndarray:
    """OpenSlide's native premultiplied ARGB (BGRA bytes on little-endian) composited on white.

    Premultiplied colour already holds colour * alpha, so white shows through as + (255 - alpha).
    """
    cv2 = _cv2()
    rgb = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    alpha = cv2.extractChannel(bgra, 3)
    if alpha.min() == 255:
        return rgb
    white = 255 - alpha
    return cv2.add(rgb, cv2.merge([white, white, white]))


def _owned_contiguous(arr: np.ndarray) -> np.ndarray:
    # TiffSlide may hand out views (transposes, chunk buffers); callers may write into the result.
    owned = arr.flags.c_contiguous and arr.flags.owndata and arr.flags.writeable
    return arr if owned else np.array(arr, order="C", copy=True)


# --------------------------------------------------------------------------------------------
# Opening: path checks, DICOM directories, OpenSlide first, TiffSlide as verified fallback.
# --------------------------------------------------------------------------------------------


def open_reader(path: str | os.PathLike[str], reader: str | None = None) -> SlideReader:
    """Open a slide with OpenSlide, falling back to TiffSlide for what OpenSlide rejects.

    ``reader`` forces one library ("openslide" | "tiffslide"). ``path`` may be a slide file, any
    file of a DICOM series, or the DICOM series directory. Raises ``SlideError`` with a reason a
    person understands (file not found, not a slide format, pixel data undecodable, ...).
    """
    if reader is not None and reader not in READERS:
        raise ValueError(f"reader must be one of {READERS} or None, got {reader!r}")
    path = Path(path)
    candidates = _candidate_files(path)
    is_dicom = _is_dicom(candidates[0])
    if is_dicom and reader == "tiffslide":
        raise SlideError(f"{path}: is DICOM, which TiffSlide cannot read; use OpenSlide")

    errors: dict[str, str] = {}
    if reader in (None, "openslide"):
        for candidate in candidates:
            try:
                return _OpenSlideReader(path, candidate)
            except Exception as exc:  # openslide raises OpenSlideError and OSError subtypes
                # OpenSlide prefixes some messages with "Reading <file>: "; the path is ours to say.
                detail = _describe(exc).replace(f"Reading {candidate}: ", "")
                errors.setdefault("OpenSlide", detail)
    if is_dicom:
        raise SlideError(
            f"{path}: DICOM file that OpenSlide cannot open as a whole-slide image "
            f"(OpenSlide: {errors['OpenSlide']}); TiffSlide does not read DICOM. The file is "
            f"probably not a conformant DICOM WSI series (e.g. missing ImageType or pixel "
            f"spacing): re-export it with a DICOM WSI converter or convert it to pyramidal TIFF"
        )
    if reader in (None, "tiffslide"):
        try:
            opened = _TiffSlideReader(path, candidates[0])
        except Exception as exc:
            errors["TiffSlide"] = _describe(exc)
        else:
            # TiffSlide opens almost any TIFF lazily; only a decoded pixel proves it can read it.
            try:
                _verify_first_pixel(opened)
            except Exception as exc:
                opened.close()
                if isinstance(exc, PixelReadError):
                    detail = exc.detail
                else:
                    detail = _describe(exc).removeprefix(f"{path}: ")
                errors["TiffSlide"] = f"opens the file but cannot decode its pixels: {detail}"
            else:
                if "OpenSlide" in errors:
                    opened.warnings.insert(
                        0, f"OpenSlide cannot open it ({errors['OpenSlide']}); read with TiffSlide"
                    )
                    log.info("%s: OpenSlide rejected it, using TiffSlide", path)
                return opened
    which = " or ".join(k for k in ("OpenSlide", "TiffSlide") if reader in (None, k.lower()))
    detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
    raise SlideError(f"{path}: not a slide format that {which} can read ({detail})")


def _verify_first_pixel(reader: SlideReader) -> None:
    level = reader.level_count - 1
    if level < 0:
        raise SlideError("no image levels")
    reader.read_rgb(0, 0, level, 1, 1)


def _candidate_files(path: Path) -> list[Path]:
    """The file(s) to try for ``path``; a directory must be a DICOM series."""
    try:
        return _list_candidates(path)
    except OSError as exc:  # unreadable directory, stale network mount, ...
        raise SlideError(f"{path}: cannot access ({_describe(exc)})") from exc


def _list_candidates(path: Path) -> list[Path]:
    if not path.exists():
        raise SlideError(f"{path}: file not found")
    if path.is_dir():
        dcm = sorted(p for p in path.iterdir() if p.is_file() and _is_dicom(p))
        if not dcm:
            raise SlideError(
                f"{path}: is a directory without DICOM (.dcm) files; give a slide file, or a "
                f"directory that holds one DICOM WSI series"
            )
        return dcm
    if not os.access(path, os.R_OK):
        raise SlideError(f"{path}: file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty (0 bytes)")
    return [path]


def _is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES


# Exception class names that add nothing to their message; others (Jpeg8Error, ...) say which codec.
_PLAIN_ERRORS = {
    "OpenSlideError",
    "OpenSlideUnsupportedFormatError",
    "TiffFileError",
    "ValueError",
    "OSError",
    "RuntimeError",
    "Exception",
}


def _describe(exc: BaseException) -> str:
    """One line for a person: the library's message, prefixed by a telling exception name."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    name = type(exc).__name__
    return text if name in _PLAIN_ERRORS or name in text else f"{name}: {text}"


# --------------------------------------------------------------------------------------------
# µm/px resolution.
# --------------------------------------------------------------------------------------------


def resolve_mpp(reader: SlideReader, override: float | None = None) -> MppResolution:
    """Level-0 µm/px: override > reader properties > TIFF resolution tags > objective power.

    Each source is used only if its value lies in ``MPP_PLAUSIBLE_UM`` (and x/y agree within
    ``MPP_XY_REL_TOL``); otherwise the next source is tried. Raises ``MppError`` naming the slide,
    what each source gave, and how to pass an override (``--mpp`` / sample sheet ``mpp`` column).
    """
    path = reader.path
    if override is not None:
        value = _as_float(override)
        if value is None or not math.isfinite(value) or value <= 0:
            raise MppError(f"{path}: mpp override {override!r} is not a positive number of µm/px")
        return MppResolution(value, value, value, "override", False)

    tried: list[str] = []
    tags = _tiff_resolution_mpp(reader.properties)
    rx, ry = reader.reader_mpp()
    # A generic-TIFF reader's µm/px *is* the resolution tags; label it as such, not as metadata.
    tag_derived = reader.generic_tiff and tags is not None
    if rx is not None or ry is not None:
        if tag_derived:
            tried.append("reader properties: only the TIFF resolution tags")
        else:
            got = _usable_xy(rx, ry, "reader properties", tried)
            if got:
                return MppResolution(*got, source="reader-properties", is_estimate=False)
    else:
        tried.append("reader properties: none")

    if tags is not None:
        got = _usable_xy(tags[0], tags[1], "TIFF resolution tags", tried)
        if got:
            return MppResolution(*got, source="tiff-resolution", is_estimate=False)
    else:
        tried.append("TIFF resolution tags: none")

    objective = reader.objective_power()
    if objective is not None and OBJECTIVE_PLAUSIBLE[0] <= objective <= OBJECTIVE_PLAUSIBLE[1]:
        est = 10.0 / objective
        return MppResolution(
            est,
            est,
            est,
            source="objective-power-estimate",
            is_estimate=True,
            warnings=[
                f"µm/px {est:.4g} is an ESTIMATE from the {objective:g}x objective power "
                f"(10/objective); scanners differ by up to ~20%: pass --mpp (or the sample "
                f"sheet's mpp column) for exact physical sizes"
            ],
        )
    tried.append(
        f"objective power: {'none' if objective is None else f'{objective:g} (implausible)'}"
    )
    raise MppError(
        f"{path}: no usable µm/px ({'; '.join(tried)}). Pass the level-0 µm/px with --mpp "
        f"(e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x) or fill the sample sheet's mpp column "
        f"for this slide"
    )


def _usable_xy(
    mx: float | None, my: float | None, label: str, tried: list[str]
) -> tuple[float, float, float] | None:
    """(mpp, mpp_x, mpp_y) if the pair is a plausible, near-isotropic calibration, else None."""
    mx = mx if mx is not None else my
    my = my if my is not None else mx
    lo, hi = MPP_PLAUSIBLE_UM
    if mx is None or my is None or not (math.isfinite(mx) and math.isfinite(my)):
        tried.append(f"{label}: none")
        return None
    if not (lo <= mx <= hi and lo <= my <= hi):
        tried.append(
            f"{label}: {mx:.4g} x {my:.4g} µm/px, outside the plausible {lo:g}-{hi:g} µm/px for "
            f"a slide scan"
        )
        return None
    if abs(mx - my) > MPP_XY_REL_TOL * max(mx, my):
        tried.append(f"{label}: x {mx:.4g} and y {my:.4g} µm/px differ (non-square pixels)")
        return None
    return (mx + my) / 2.0, mx, my


def _tiff_resolution_mpp(props: Mapping[str, Any]) -> tuple[float | None, float | None] | None:
    """µm/px (x, y) from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit."""
    xres = _as_float(props.get("tiff.XResolution"))
    yres = _as_float(props.get("tiff.YResolution"))
    if xres is None and yres is None:
        return None
    # TIFF default unit is the inch; OpenSlide says "inch", TiffSlide "INCH" or "RESUNIT.INCH".
    unit_text = str(props.get("tiff.ResolutionUnit") or "inch").lower().rsplit(".", 1)[-1]
    unit_um = _UNIT_UM.get(unit_text)
    if unit_um is None:  # "none": the tags carry an aspect ratio, not a physical size
        return None
    to_mpp = lambda res: unit_um / res if res and res > 0 else None  # noqa: E731
    return to_mpp(xres), to_mpp(yres)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    match = re.match(r"\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)", str(value))
    return float(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# The slide object every stage uses.
# --------------------------------------------------------------------------------------------


class Slide:
    """Open with OpenSlide first, TiffSlide as fallback. Context manager. Not thread-safe: one per worker.

    ``mpp`` overrides the level-0 µm/px (sample sheet / ``--mpp``); ``reader`` forces one
    library ("openslide" | "tiffslide"). Raises ``SlideError`` (cannot open) or ``MppError``
    (no usable µm/px; the message tells how to pass an override).
    """

    def __init__(
        self, path: str | os.PathLike[str], mpp: float | None = None, *, reader: str | None = None
    ) -> None:
        self.path = Path(path)
        self._reader = open_reader(self.path, reader=reader)
        try:
            res = resolve_mpp(self._reader, mpp)
        except BaseException:
            self._reader.close()
            raise
        r = self._reader
        self.info = SlideInfo(
            path=str(self.path),
            reader=r.name,
            vendor=r.vendor,
            level_dimensions=list(r.level_dimensions),
            level_downsamples=list(r.level_downsamples),
            mpp=res.mpp,
            mpp_x=res.mpp_x,
            mpp_y=res.mpp_y,
            mpp_source=res.source,
            mpp_is_estimate=res.is_estimate,
            objective_power=r.objective_power(),
            associated_images=list(r.associated_images),
            opened_path=str(r.opened_path),
            warnings=[*r.warnings, *res.warnings],
        )
        self.mpp: float = res.mpp
        self.dimensions: tuple[int, int] = r.level_dimensions[0]
        self.level_count: int = r.level_count
        self.level_dimensions: list[tuple[int, int]] = list(r.level_dimensions)
        self.level_downsamples: list[float] = list(r.level_downsamples)

    # -- geometry ---------------------------------------------------------------------------

    def level_mpp(self, level: int) -> float:
        """µm/px of a pyramid level."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= ``downsample`` (+1% tolerance).

        Reading that level and resizing down never upsamples (beyond the 1% tolerance that makes
        DICOM's 2.0003x count as 2x).
        """
        limit = downsample * (1.0 + DOWNSAMPLE_TOL)
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= limit:
                best = level
        return best

    # -- pixels -----------------------------------------------------------------------------

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3), C-contiguous.

        (x, y) is the level-0 top-left; width/height are pixels of ``level``. Outside the slide
        and transparent pixels are white (255). Raises ``SlideError`` if the reader fails.
        """
        return self._reader.read_rgb(x, y, level, width, height)

    def read_at_mpp(
        self, x: int, y: int, size_level0: tuple[int, int], out_size: tuple[int, int]
    ) -> np.ndarray:
        """Level-0 region ``size_level0`` (w, h) at (x, y), read from the best level and resized
        to ``out_size`` (w, h) with area interpolation; RGB uint8 (h, w, 3).

        No resize happens when the chosen level already gives ``out_size`` (the common case of
        power-of-two pyramids), so such patches are pixel-exact.
        """
        w0, h0 = (int(v) for v in size_level0)
        out_w, out_h = (int(v) for v in out_size)
        if min(w0, h0, out_w, out_h) < 1:
            raise ValueError(
                f"sizes must be >= 1 px, got size_level0={size_level0}, out={out_size}"
            )
        level = self.best_level_for_downsample(min(w0 / out_w, h0 / out_h))
        ds = self.level_downsamples[level]
        read_w, read_h = max(1, round(w0 / ds)), max(1, round(h0 / ds))
        region = self.read_region(x, y, level, read_w, read_h)
        return _resize(region, out_w, out_h)

    def thumbnail_at_mpp(self, target_mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at about ``target_mpp`` µm/px, rendered from the pyramid.

        Never uses the associated thumbnail/label/macro images. Returns (RGB uint8 image, actual
        µm/px of the image = level-0 width / image width * mpp). A target finer than level 0 is
        clamped to level 0.
        """
        if not target_mpp > 0:
            raise ValueError(f"target_mpp must be > 0 µm/px, got {target_mpp}")
        downsample = max(1.0, target_mpp / self.mpp)
        width0, height0 = self.dimensions
        out_w = max(1, round(width0 / downsample))
        out_h = max(1, round(height0 / downsample))
        if out_w * out_h > _MAX_THUMBNAIL_PX:
            raise ValueError(
                f"{self.path}: a {out_w}x{out_h} px thumbnail at {target_mpp} µm/px is too large; "
                f"ask for a coarser µm/px"
            )
        level = self.best_level_for_downsample(downsample)
        image = self._read_level_resized(level, out_w, out_h)
        return image, width0 / out_w * self.mpp

    def _read_level_resized(self, level: int, out_w: int, out_h: int) -> np.ndarray:
        level_w, level_h = self.level_dimensions[level]
        if level_w * level_h <= _WHOLE_LEVEL_MAX_PX:
            return _resize(self.read_region(0, 0, level, level_w, level_h), out_w, out_h)
        # Row bands keep memory bounded for huge levels (e.g. a non-pyramidal slide).
        ds = self.level_downsamples[level]
        band_out = max(1, (_WHOLE_LEVEL_MAX_PX // level_w) * out_h // level_h)
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for r0 in range(0, out_h, band_out):
            r1 = min(out_h, r0 + band_out)
            ly0, ly1 = round(r0 * level_h / out_h), round(r1 * level_h / out_h)
            band = self.read_region(0, round(ly0 * ds), level, level_w, max(1, ly1 - ly0))
            out[r0:r1] = _resize(band, out_w, r1 - r0)
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        estimate = ", estimate" if self.info.mpp_is_estimate else ""
        return (
            f"Slide({str(self.path)!r}, reader={self.info.reader}, vendor={self.info.vendor}, "
            f"{w}x{h} px, {self.level_count} levels, mpp={self.mpp:.4g} "
            f"({self.info.mpp_source}{estimate}))"
        )


def _resize(image: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing); bilinear if any side must grow."""
    h, w = image.shape[:2]
    if (w, h) == (out_w, out_h):
        return image
    cv2 = _cv2()
    interpolation = cv2.INTER_AREA if out_w <= w and out_h <= h else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, (out_w, out_h), interpolation=interpolation))


def _cv2() -> Any:
    # Imported on first use: `slotspe-pipe preflight` starts ~60 ms faster without it.
    import cv2

    return cv2
