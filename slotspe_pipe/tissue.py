"""`slotspe-pipe segment SLIDE -o DIR`: find the tissue on a slide, in physical units.

The work happens on a whole-slide thumbnail rendered from the pyramid at a working µm/px
(``work_mpp``, 8 µm/px by default = a 40x scan's /32), never on a pyramid level picked by index,
so a 20x and a 40x scan of the same glass give the same mask. Every size is physical: the
morphology radii are in µm, the smallest kept region and the largest filled hole in mm².

Brightfield (H&E): tissue is coloured and glass is grey, so the score is the saturation of the
thumbnail after dividing out the glass colour; its threshold is Otsu's, clamped to a band so that
an almost-empty slide does not turn JPEG noise into tissue and an all-tissue crop is not split in
two. Pen marks (green/blue/black ink) are removed by hue before morphology. Fluorescence (dark
background): tissue is signal above the background, thresholded on the brightest channel and
closed over the gaps between nuclei.

A user-drawn GeoJSON (``--annotation``, e.g. a QuPath export) replaces the automatic mask.

Outputs in DIR (each written atomically, ``summary.json`` last so that its presence means the
set is whole; it records the sha256 of the others): ``tissue.geojson`` (QuPath-importable
polygons with holes, level-0 px), ``mask.png`` (binary mask at ``mask_mpp``, also stored in the
PNG text chunk), ``thumbnail.png`` (the slide with contours drawn, from the pyramid only, never a
label/macro image) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
from PIL import Image, PngImagePlugin
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from slotspe_pipe import __version__
from slotspe_pipe.slides import Slide, SlideError
from slotspe_pipe.store.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

METHODS = ("auto", "brightfield", "fluorescence")
FILES = ("tissue.geojson", "mask.png", "thumbnail.png")
SUMMARY = "summary.json"
# Thumbnails of small slides are rendered finer than work_mpp so the long side has at least
# this many pixels (a 1.5 mm biopsy crop at 8 µm/px would be 185 px: too coarse to trace).
MIN_WORK_SIDE_PX = 512
# Median luminance (0-255) below which an image is a dark-background (fluorescence) scan.
FLUORESCENCE_MEDIAN_LUMINANCE = 50.0
# Glass is grey: pixels this unsaturated and this bright estimate the background colour.
_GLASS_MAX_SATURATION = 0.08
_GLASS_MIN_LUMINANCE = 170
_PNG_MPP_KEY = "slotspe:mask_mpp"


@dataclass(frozen=True)
class TissueSettings:
    """Segmentation settings; all sizes physical. ``preset`` names where they started from."""

    preset: str = "default"
    method: str = "auto"  # "auto" | "brightfield" | "fluorescence"
    work_mpp: float = 8.0  # µm/px of the working thumbnail (and of mask.png)
    min_region_mm2: float = 0.005  # smaller connected tissue pieces are dropped
    min_hole_mm2: float = 0.05  # smaller holes inside tissue are filled
    close_um: float = 16.0  # morphological closing radius (bridges gaps)
    open_um: float = 8.0  # morphological opening radius (removes specks)
    # Brightfield saturation threshold (0-1, after dividing out the glass colour): Otsu's
    # value clamped to [floor, cap].
    saturation_floor: float = 0.06
    saturation_cap: float = 0.15
    remove_pen: bool = True  # drop green/blue/black ink
    pen_min_mm2: float = 0.02  # smaller ink-coloured specks are not pen strokes
    pen_margin_um: float = 24.0  # ink halo also dropped
    # Fluorescence: threshold is max(Otsu, background mode + this many grey levels).
    fluorescence_min_signal: float = 3.0
    simplify_um: float = 4.0  # polygon simplification tolerance (level-0 µm)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        for name in ("work_mpp",):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 µm/px, got {getattr(self, name)}")
        non_negative = ("min_region_mm2", "min_hole_mm2", "close_um", "open_um", "pen_min_mm2")
        for name in (*non_negative, "pen_margin_um", "simplify_um", "fluorescence_min_signal"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


PRESETS: dict[str, TissueSettings] = {
    # Any section: keeps fragments down to ~0.07 mm across (crumbs then get no patches).
    "default": TissueSettings(),
    # Large resections: ignore crumbs and small debris, bridge wider tears.
    "resection": TissueSettings(
        preset="resection", min_region_mm2=0.5, min_hole_mm2=0.2, close_um=32.0, open_um=16.0
    ),
    # Needle cores and small biopsies: finer thumbnail, keep tiny fragments and small holes.
    "biopsy": TissueSettings(
        preset="biopsy",
        work_mpp=4.0,
        min_region_mm2=0.002,
        min_hole_mm2=0.01,
        close_um=8.0,
        open_um=4.0,
        pen_margin_um=12.0,
    ),
    # Dark background: signal above the background; closing merges the nuclei of a DAPI image.
    "fluorescence": TissueSettings(
        preset="fluorescence",
        method="fluorescence",
        work_mpp=4.0,
        close_um=80.0,
        open_um=4.0,
        remove_pen=False,
    ),
}


class TissueError(ValueError):
    """A tissue directory or annotation is missing, malformed or does not fit the slide."""


@dataclass(frozen=True)
class TissueResult:
    """Tissue of one slide: geometry in level-0 px plus the mask the tiler measures against.

    ``mask`` is boolean (h, w) at ``mask_mpp``; mask pixel (i, j) covers level-0
    [j*ds_x, (j+1)*ds_x) x [i*ds_y, (i+1)*ds_y) with ``(ds_x, ds_y) = mask_downsample``.
    """

    geometry: BaseGeometry  # Polygon / MultiPolygon / empty, level-0 px
    mask: np.ndarray
    mask_mpp: float
    level0_dimensions: tuple[int, int]
    slide_mpp: float
    settings: TissueSettings
    method: str  # "brightfield" | "fluorescence" | "annotation"
    details: dict[str, Any] = field(default_factory=dict)  # thresholds, modality source, ...
    annotation: dict[str, Any] | None = None  # {"path", "sha256"} when user-drawn
    thumbnail: np.ndarray | None = None  # RGB at mask resolution (QC drawing only)
    pen_mask: np.ndarray | None = None  # ink removed (brightfield), mask resolution

    @property
    def mask_downsample(self) -> tuple[float, float]:
        """Level-0 px per mask px along (x, y)."""
        h, w = self.mask.shape
        return self.level0_dimensions[0] / w, self.level0_dimensions[1] / h

    @property
    def tissue_area_mm2(self) -> float:
        return float(self.geometry.area) * (self.slide_mpp * 1e-3) ** 2

    @property
    def n_regions(self) -> int:
        return len(_polygons(self.geometry))

    @property
    def settings_record(self) -> dict[str, Any]:
        """What defines this segmentation (goes into tiles' settings hash)."""
        record: dict[str, Any] = asdict(self.settings)
        record["method_setting"] = record.pop("method")  # "auto" etc., as configured
        record["method"] = self.method  # what actually ran
        if self.annotation is not None:
            record["annotation_sha256"] = self.annotation["sha256"]
        return record


# --------------------------------------------------------------------------------------------
# Settings


def resolve_settings(preset: str = "default", **overrides: Any) -> TissueSettings:
    """A preset's settings with individual fields overridden (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - set(TissueSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown tissue settings: {sorted(unknown)}")
    return replace(PRESETS[preset], **changes)


def working_mpp(slide: Slide, work_mpp: float) -> float:
    """µm/px for the thumbnail: ``work_mpp``, finer for slides too small to trace at it,
    never finer than level 0."""
    long_side_um = max(slide.dimensions) * slide.mpp
    return max(slide.mpp, min(work_mpp, long_side_um / MIN_WORK_SIDE_PX))


# --------------------------------------------------------------------------------------------
# Segmentation


def segment_slide(
    slide: Slide,
    preset: str = "default",
    annotation: str | os.PathLike[str] | None = None,
    *,
    modality: str | None = None,
    **overrides: Any,
) -> TissueResult:
    """Segment the tissue of an opened slide.

    ``preset`` is a key of ``PRESETS``; ``overrides`` replace single settings (e.g.
    ``min_region_mm2=0.1``). ``modality`` ("brightfield" | "fluorescence", e.g. from the
    preflight record) decides the method when the settings say ``auto``; otherwise a dark
    thumbnail means fluorescence. ``annotation`` is a GeoJSON file whose polygons replace the
    automatic mask. Raises ``TissueError`` for an unusable annotation, ``SlideError`` for reads.
    """
    settings = resolve_settings(preset, **overrides)
    mpp_work = working_mpp(slide, settings.work_mpp)
    thumb, mask_mpp = slide.thumbnail_at_mpp(mpp_work)
    dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
    ds = (dims[0] / thumb.shape[1], dims[1] / thumb.shape[0])
    details: dict[str, Any] = {"work_mpp_requested": settings.work_mpp}

    if annotation is not None:
        geometry, ann = read_annotation(annotation, dims)
        mask = rasterize(geometry, thumb.shape[:2], ds)
        return TissueResult(
            geometry=geometry,
            mask=mask,
            mask_mpp=mask_mpp,
            level0_dimensions=dims,
            slide_mpp=slide.mpp,
            settings=settings,
            method="annotation",
            details=details,
            annotation=ann,
            thumbnail=thumb,
        )

    method, source = _choose_method(settings.method, modality, thumb)
    details["method_source"] = source
    if method == "fluorescence" and settings.method == "auto":
        # Brightfield radii would leave a DAPI image as scattered nuclei: use the fluorescence
        # preset, keeping what the caller set explicitly.
        details["preset_requested"] = settings.preset
        settings = resolve_settings("fluorescence", **{**overrides, "method": None})
        details["work_mpp_requested"] = settings.work_mpp
        if working_mpp(slide, settings.work_mpp) != mpp_work:
            mpp_work = working_mpp(slide, settings.work_mpp)
            thumb, mask_mpp = slide.thumbnail_at_mpp(mpp_work)
            ds = (dims[0] / thumb.shape[1], dims[1] / thumb.shape[0])
    pen = None
    if method == "fluorescence":
        raw, thr = fluorescence_mask(thumb, settings.fluorescence_min_signal)
        details.update(thr)
    else:
        raw, thr = brightfield_mask(thumb, settings.saturation_floor, settings.saturation_cap)
        details.update(thr)
        if settings.remove_pen:
            pen = pen_mask(thumb, mask_mpp, settings.pen_min_mm2)
            margin = _radius_px(settings.pen_margin_um, mask_mpp)
            if margin and pen.any():
                pen = cv2.dilate(pen.astype(np.uint8), _disk(margin)).astype(bool)
            raw &= ~pen
            details["pen_fraction"] = round(float(pen.mean()), 6)
    mask = clean_mask(raw, mask_mpp, settings)
    geometry = mask_to_geometry(mask, ds, simplify_px=settings.simplify_um / slide.mpp)
    return TissueResult(
        geometry=geometry,
        mask=mask,
        mask_mpp=mask_mpp,
        level0_dimensions=dims,
        slide_mpp=slide.mpp,
        settings=settings,
        method=method,
        details=details,
        thumbnail=thumb,
        pen_mask=pen,
    )


def _choose_method(method: str, modality: str | None, thumb: np.ndarray) -> tuple[str, str]:
    if method != "auto":
        return method, "settings"
    if modality in ("brightfield", "fluorescence"):
        return modality, "preflight"
    luminance = float(np.median(thumb.mean(axis=2)))
    if luminance < FLUORESCENCE_MEDIAN_LUMINANCE:
        return "fluorescence", "dark-background"
    return "brightfield", "bright-background"


def brightfield_mask(
    rgb: np.ndarray, floor: float = 0.06, cap: float = 0.15
) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue = saturated (coloured) pixels once the glass colour is divided out.

    The threshold is Otsu's on the saturation histogram, clamped to [``floor``, ``cap``]:
    the floor stops glass noise on an almost-empty slide from becoming tissue; the cap stops an
    all-tissue image (no glass mode) from being split into pale and dark tissue.
    Returns (bool mask, record of the glass colour and threshold used).
    """
    glass = _glass_colour(rgb)
    levels = np.arange(256, dtype=np.float32)[:, None]
    # Per-channel lookup tables: dividing out the glass colour and optical density.
    to_norm = np.clip(np.round(levels * (255.0 / glass[None, :])), 0, 255).astype(np.uint8)
    norm = cv2.LUT(rgb, to_norm.reshape(1, 256, 3))
    sat = cv2.cvtColor(norm, cv2.COLOR_RGB2HSV)[..., 1]
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = float(np.clip(otsu / 255.0, floor, cap))
    # Glass-bright pixels are never tissue even if tinted (mounting medium, JPEG chroma): mean
    # optical density over the channels must reach 0.03.
    od_lut = (-np.log(np.maximum(levels, 1.0) / 255.0)).astype(np.float32)
    od_sum = cv2.transform(cv2.LUT(norm, od_lut), np.ones((1, 3), np.float32))
    mask = (sat >= math.ceil(thr * 255.0)) & (od_sum >= 3 * 0.03)
    return mask, {
        "glass_rgb": [round(float(c), 1) for c in glass],
        "saturation_otsu": round(float(otsu) / 255.0, 4),
        "saturation_threshold": round(thr, 4),
    }


def _glass_colour(rgb: np.ndarray, max_samples: int = 200_000) -> np.ndarray:
    """Per-channel glass colour: median of bright grey pixels, or white if there are too few.

    Estimated on a regular subsample: the glass colour is a property of the whole slide.
    """
    flat = rgb.reshape(-1, 3)
    flat = flat[:: max(1, flat.shape[0] // max_samples)].astype(np.int16)
    mx, mn = flat.max(axis=1), flat.min(axis=1)
    grey = (mx >= _GLASS_MIN_LUMINANCE) & ((mx - mn) <= _GLASS_MAX_SATURATION * mx)
    if grey.sum() < max(16, 0.01 * flat.shape[0]):
        return np.array([255.0, 255.0, 255.0], np.float32)
    return np.maximum(np.median(flat[grey], axis=0), 1.0).astype(np.float32)


def pen_mask(rgb: np.ndarray, mask_mpp: float, min_area_mm2: float = 0.02) -> np.ndarray:
    """Pen ink: saturated green/cyan/blue (hue 70-236°, outside H&E's pink-purple) or neutral
    near-black, in connected pieces of at least ``min_area_mm2`` (strokes, not the odd bluish
    nucleus cluster or speck of marking dye inside tissue).

    Red ink shares eosin's hue and is not detected; draw an annotation for such slides.
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured = (h >= 35) & (h < 118) & (s >= 50) & (v < 250)
    black = (v < 50) & (s < 100)
    ink = (coloured | black).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    if n <= 1:
        return np.zeros(ink.shape, bool)
    big = stats[:, cv2.CC_STAT_AREA] * (mask_mpp * 1e-3) ** 2 >= min_area_mm2
    big[0] = False
    return big[labels]


def fluorescence_mask(rgb: np.ndarray, min_signal: float = 3.0) -> tuple[np.ndarray, dict]:
    """Tissue = signal above the dark background on the brightest channel.

    The background level is the histogram mode (the background dominates, or at least is the
    largest single level, even when tissue covers most of the field). The threshold is
    max(Otsu, background + ``min_signal``): Otsu separates dim signal from the background peak,
    the floor stops an empty field (noise only) from being split in two.
    Returns (bool mask, record of the levels used).
    """
    smooth = cv2.GaussianBlur(rgb.max(axis=2), (0, 0), 1.0)
    background = int(np.bincount(smooth.ravel(), minlength=256).argmax())
    otsu, _ = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(otsu), background + min_signal)
    return smooth >= thr, {
        "background_level": background,
        "intensity_otsu": float(otsu),
        "intensity_threshold": round(thr, 2),
    }


def clean_mask(mask: np.ndarray, mask_mpp: float, settings: TissueSettings) -> np.ndarray:
    """Close, open, fill small holes and drop small regions; all sizes physical."""
    m = mask.astype(np.uint8)
    # A structuring element wider than a tiny crop would erase it: cap radii at 1/8 of it.
    r_cap = min(m.shape) // 8
    r_close = min(_radius_px(settings.close_um, mask_mpp), r_cap)
    if r_close:
        # Pad so that closing does not glue tissue to the image border.
        m = cv2.copyMakeBorder(m, r_close, r_close, r_close, r_close, cv2.BORDER_CONSTANT, 0)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(r_close))
        m = m[r_close:-r_close, r_close:-r_close]
    r_open = min(_radius_px(settings.open_um, mask_mpp), r_cap)
    if r_open:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(r_open))
    px_mm2 = (mask_mpp * 1e-3) ** 2
    # Holes: background components not touching the border, smaller than min_hole_mm2.
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - m, connectivity=4)
    if n > 1:
        h, w = m.shape
        x, y, bw, bh, area = (stats[:, i] for i in range(5))
        inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
        fill = inner & (area * px_mm2 < settings.min_hole_mm2)
        fill[0] = False  # label 0 is the tissue itself
        m[fill[labels]] = 1
    # Regions smaller than min_region_mm2.
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n > 1:
        keep = stats[:, cv2.CC_STAT_AREA] * px_mm2 >= settings.min_region_mm2
        keep[0] = False
        m = keep[labels].astype(np.uint8)
    return m.astype(bool)


def _radius_px(um: float, mpp: float) -> int:
    return int(round(um / mpp)) if um > 0 else 0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


# --------------------------------------------------------------------------------------------
# Geometry: mask <-> polygons


def mask_to_geometry(
    mask: np.ndarray, downsample: tuple[float, float], simplify_px: float = 0.0
) -> BaseGeometry:
    """Polygons (with holes) tracing the mask's pixel edges, in level-0 px.

    cv2 contours run through boundary pixel centres; growing them by half a pixel (mitred)
    puts them on the pixel edges, so the polygon area matches the mask area.
    """
    m = np.ascontiguousarray(mask.astype(np.uint8))
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return Polygon()
    hierarchy = hierarchy[0]
    polys: list[BaseGeometry] = []
    for i, (_next, _prev, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        outer = _ring_geometry(contours[i])
        holes = []
        c = child
        while c != -1:
            holes.append(_ring_geometry(contours[c]))
            c = hierarchy[c][0]
        for hole in holes:
            outer = outer.difference(hole.buffer(-1.0, join_style="mitre"))
        polys.append(outer)
    geom = shapely.union_all(polys)
    sx, sy = downsample
    geom = shapely.affinity.affine_transform(geom, [sx, 0, 0, sy, 0.5 * sx, 0.5 * sy])
    if simplify_px > 0:
        geom = geom.simplify(simplify_px, preserve_topology=True)
    return _as_polygonal(geom)


def _ring_geometry(contour: np.ndarray) -> BaseGeometry:
    """Area covered by the pixels of a cv2 contour (pixel-centre coords), grown to pixel edges."""
    pts = contour.reshape(-1, 2).astype(np.float64)
    if len(pts) >= 3:
        base = shapely.make_valid(Polygon(pts))
        base = shapely.union_all([base, shapely.LineString(np.vstack([pts, pts[:1]]))])
    elif len(pts) == 2:
        base = shapely.LineString(pts)
    else:
        base = shapely.Point(pts[0])
    return base.buffer(0.5, cap_style="square", join_style="mitre")


def _as_polygonal(geom: BaseGeometry) -> BaseGeometry:
    """Keep only the polygonal parts (GeometryCollections from make_valid), as (Multi)Polygon."""
    polys = _polygons(geom)
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    if geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    out: list[Polygon] = []
    for part in getattr(geom, "geoms", []):
        out.extend(_polygons(part))
    return out


def rasterize(
    geometry: BaseGeometry, shape_hw: tuple[int, int], downsample: tuple[float, float]
) -> np.ndarray:
    """Boolean mask (h, w) of ``geometry`` (level-0 px): a mask pixel is set when at least half
    of it is covered.

    Each polygon is filled at 4x resolution on its own bounding box and area-averaged down:
    OpenCV fills boundary pixels on both sides of an edge, which at 1x would grow every shape
    by up to a pixel on its right and bottom.
    """
    h, w = shape_hw
    out = np.zeros((h, w), bool)
    sx, sy = downsample
    k = 4
    for poly in _polygons(geometry):
        minx, miny, maxx, maxy = poly.bounds
        x0, y0 = max(0, int(minx / sx)), max(0, int(miny / sy))
        x1, y1 = min(w, int(math.ceil(maxx / sx))), min(h, int(math.ceil(maxy / sy)))
        if x1 <= x0 or y1 <= y0:
            continue
        fine = np.zeros(((y1 - y0) * k, (x1 - x0) * k), np.uint8)
        for ring in [poly.exterior, *poly.interiors]:
            pts = np.asarray(ring.coords, dtype=np.float64)
            pts = ((pts / (sx, sy) - (x0, y0)) * k - 0.5) * 16  # 4-bit fixed point
            one = np.zeros_like(fine)
            cv2.fillPoly(one, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8, 4)
            fine ^= one  # even-odd: holes cancel
        cover = cv2.resize(fine * np.uint8(255), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        out[y0:y1, x0:x1] |= cover > 127
    return out


# --------------------------------------------------------------------------------------------
# GeoJSON (QuPath-compatible)


def to_geojson(geometry: BaseGeometry, slide_mpp: float) -> dict[str, Any]:
    """FeatureCollection of one Polygon feature per tissue region, level-0 px coordinates.

    Properties follow QuPath's GeoJSON import: objectType "annotation", classification
    "Tissue". Areas are also given in mm² for people reading the file.
    """
    features = []
    for i, poly in enumerate(sorted(_polygons(geometry), key=lambda p: -p.area)):
        poly = orient(poly, sign=1.0)
        features.append(
            {
                "type": "Feature",
                "id": f"tissue-{i + 1}",
                "geometry": _rounded(mapping(poly)),
                "properties": {
                    "objectType": "annotation",
                    "name": f"Tissue {i + 1}",
                    "classification": {"name": "Tissue", "color": [0, 160, 0]},
                    "isLocked": False,
                    "area_mm2": round(poly.area * (slide_mpp * 1e-3) ** 2, 6),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _rounded(geo: dict[str, Any]) -> dict[str, Any]:
    # Level-0 px to 0.01 px: plenty, and keeps the file small.
    def rnd(coords: Any) -> Any:
        if isinstance(coords[0], (int, float)):
            return [round(float(c), 2) for c in coords]
        return [rnd(c) for c in coords]

    return {"type": geo["type"], "coordinates": rnd(geo["coordinates"])}


# QuPath's convention: annotations classified "Ignore*" mark areas to leave out.
_EXCLUDE_CLASSES = ("ignore", "exclude", "background")


def read_annotation(
    path: str | os.PathLike[str], level0_dimensions: tuple[int, int]
) -> tuple[BaseGeometry, dict[str, Any]]:
    """Tissue geometry from a user GeoJSON (QuPath export: Feature, FeatureCollection, a list
    of Features, or a bare geometry; Polygon/MultiPolygon; level-0 px).

    Features classified "Ignore*"/"Exclude"/"Background" are subtracted. The result is clipped
    to the slide. Raises ``TissueError`` naming the file when it holds no usable polygon or
    lies outside the slide (e.g. drawn on a downsampled image).
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TissueError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(doc, list):
        features = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and "coordinates" in doc:
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise TissueError(
            f"{path}: expected a GeoJSON FeatureCollection, Feature or geometry, got "
            f"{type(doc).__name__} with type {doc.get('type') if isinstance(doc, dict) else None!r}"
        )
    keep: list[BaseGeometry] = []
    drop: list[BaseGeometry] = []
    skipped = 0
    for k, feat in enumerate(features):
        geo = feat.get("geometry") if isinstance(feat, dict) else None
        if not geo or geo.get("type") not in ("Polygon", "MultiPolygon"):
            skipped += 1
            continue
        try:
            g = shapely.make_valid(shape(geo))
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise TissueError(f"{path}: feature {k}: geometry cannot be read ({exc})") from exc
        props = feat.get("properties") or {}
        cls = props.get("classification") or {}
        name = str(cls.get("name", "") if isinstance(cls, dict) else cls).lower()
        (drop if name.startswith(_EXCLUDE_CLASSES) else keep).append(g)
    if not keep:
        raise TissueError(
            f"{path}: no Polygon or MultiPolygon feature to use as tissue "
            f"({len(features)} features, {skipped} not polygons)"
        )
    geom = shapely.union_all(keep)
    if drop:
        geom = geom.difference(shapely.union_all(drop))
    w, h = level0_dimensions
    inside = geom.intersection(shapely.box(0, 0, w, h))
    if inside.is_empty or inside.area < 0.5 * geom.area:
        minx, miny, maxx, maxy = geom.bounds
        raise TissueError(
            f"{path}: annotation bounds x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f} px lie "
            f"mostly outside the slide (level-0 {w}x{h} px): coordinates must be level-0 pixels "
            f"(export from QuPath with the full-resolution image)"
        )
    if skipped:
        log.warning("%s: %d non-polygon features ignored", path, skipped)
    return _as_polygonal(inside), {
        "path": str(path),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


# --------------------------------------------------------------------------------------------
# Writing and loading the tissue directory


def draw_contours(result: TissueResult, thumbnail: np.ndarray | None = None) -> np.ndarray:
    """RGB QC image: the thumbnail with tissue outlines (green), holes (orange) and removed ink
    (blue) drawn on it."""
    img = thumbnail if thumbnail is not None else result.thumbnail
    if img is None:
        raise ValueError("draw_contours needs the slide thumbnail")
    out = np.ascontiguousarray(img.copy())
    h, w = out.shape[:2]
    sx, sy = result.level0_dimensions[0] / w, result.level0_dimensions[1] / h
    thickness = max(2, round(max(h, w) / 500))
    if result.pen_mask is not None and result.pen_mask.any():
        ink = result.pen_mask.astype(np.uint8)
        if ink.shape != (h, w):
            ink = cv2.resize(ink, (w, h), interpolation=cv2.INTER_NEAREST)
        cs, _ = cv2.findContours(ink, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cs, -1, (40, 90, 255), thickness)
    for poly in _polygons(result.geometry):
        for ring, colour in [(poly.exterior, (0, 200, 0))] + [
            (r, (255, 140, 0)) for r in poly.interiors
        ]:
            pts = np.asarray(ring.coords) / (sx, sy)
            cv2.polylines(out, [np.round(pts).astype(np.int32)], True, colour, thickness)
    return out


def write_tissue_dir(
    result: TissueResult, out_dir: str | os.PathLike[str], slide: Slide, **extra: Any
) -> Path:
    """Write tissue.geojson, mask.png, thumbnail.png and summary.json into ``out_dir``.

    Each file is written atomically; the old summary.json is removed first and the new one is
    written last with the sha256 of the others, so a directory that ``load_tissue`` accepts is
    always one whole, consistent result. ``extra`` goes into summary.json (e.g. timings).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)
    geojson = to_geojson(result.geometry, result.slide_mpp)
    blobs = {
        "tissue.geojson": (json.dumps(geojson, separators=(",", ":")) + "\n").encode(),
        "mask.png": _png_bytes(result.mask.astype(np.uint8) * 255, {_PNG_MPP_KEY: result.mask_mpp}),
    }
    thumb = result.thumbnail
    if thumb is None:
        thumb, _ = slide.thumbnail_at_mpp(result.mask_mpp)
    blobs["thumbnail.png"] = _png_bytes(draw_contours(result, thumb), {})
    for name, data in blobs.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    info = slide.info
    summary = {
        "tissue_area_mm2": round(result.tissue_area_mm2, 6),
        "n_regions": result.n_regions,
        "mask_mpp": result.mask_mpp,
        "mask_shape_hw": list(result.mask.shape),
        "level0_dimensions": list(result.level0_dimensions),
        "method": result.method,
        "settings": asdict(result.settings),
        "details": result.details,
        "annotation": result.annotation,
        "slide": {
            "path": str(slide.path),
            "reader": info.reader,
            "vendor": info.vendor,
            "mpp": info.mpp,
            "mpp_source": info.mpp_source,
            "mpp_is_estimate": info.mpp_is_estimate,
            "objective_power": info.objective_power,
        },
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()},
        "package_version": __version__,
        **extra,
    }
    if result.n_regions == 0:
        summary.setdefault("warnings", []).append(
            "no tissue found: check thumbnail.png; try --preset biopsy, another --method, or "
            "pass --annotation"
        )
    write_json(out / SUMMARY, summary)
    return out


def _png_bytes(image: np.ndarray, text: dict[str, Any]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, repr(v) if isinstance(v, float) else str(v))
    buf = io.BytesIO()
    # Level 1: these are QC images and masks; speed matters more than a few kB.
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()


def load_tissue(tissue_dir: str | os.PathLike[str]) -> TissueResult:
    """Read a tissue directory written by ``write_tissue_dir``.

    Raises ``TissueError`` if it is missing, incomplete (no summary.json: interrupted), or its
    files do not match the checksums in summary.json (mixed runs).
    """
    d = Path(tissue_dir)
    summary_path = d / SUMMARY
    if not summary_path.is_file():
        raise TissueError(
            f"{d}: no {SUMMARY}: not a finished tissue directory (run `slotspe-pipe segment` "
            "first; an interrupted run leaves no summary)"
        )
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise TissueError(f"{summary_path}: not valid JSON ({exc})") from exc
    data: dict[str, bytes] = {}
    for name in ("tissue.geojson", "mask.png"):
        p = d / name
        if not p.is_file():
            raise TissueError(f"{d}: {name} is missing")
        data[name] = p.read_bytes()
        want = summary.get("files", {}).get(name)
        if want != hashlib.sha256(data[name]).hexdigest():
            raise TissueError(
                f"{p}: does not match the sha256 in {SUMMARY} (files from different runs?); "
                "rerun `slotspe-pipe segment`"
            )
    doc = json.loads(data["tissue.geojson"])
    geoms = [shape(f["geometry"]) for f in doc.get("features", [])]
    geometry = _as_polygonal(shapely.union_all(geoms)) if geoms else Polygon()
    mask = np.asarray(Image.open(io.BytesIO(data["mask.png"]))) > 0
    settings_fields = set(TissueSettings.__dataclass_fields__)
    settings = TissueSettings(
        **{k: v for k, v in summary["settings"].items() if k in settings_fields}
    )
    dims = summary["level0_dimensions"]
    return TissueResult(
        geometry=geometry,
        mask=mask,
        mask_mpp=float(summary["mask_mpp"]),
        level0_dimensions=(int(dims[0]), int(dims[1])),
        slide_mpp=float(summary["slide"]["mpp"]),
        settings=settings,
        method=summary["method"],
        details=summary.get("details") or {},
        annotation=summary.get("annotation"),
    )


# --------------------------------------------------------------------------------------------
# CLI


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="slide file (or DICOM series directory)")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--mpp", type=_positive, help="level-0 µm/px override")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--annotation", help="GeoJSON (level-0 px) that replaces the mask")
    parser.add_argument("--preflight", help="preflight record JSON (modality, µm/px override)")
    parser.add_argument("--method", choices=METHODS, help="override the preset's method")
    parser.add_argument("--work-mpp", type=_positive, help="working thumbnail µm/px")
    parser.add_argument("--min-region-mm2", type=_non_negative, help="smallest region kept, mm²")
    parser.add_argument("--min-hole-mm2", type=_non_negative, help="largest hole filled, mm²")
    parser.add_argument("--close-um", type=_non_negative, help="closing radius, µm")
    parser.add_argument("--open-um", type=_non_negative, help="opening radius, µm")
    parser.add_argument(
        "--keep-pen", action="store_true", help="do not remove green/blue/black ink"
    )


def _read_preflight(path: str) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TissueError(f"{path}: cannot read preflight record ({exc})") from exc
    if record.get("status") != "ok":
        raise TissueError(
            f"{path}: preflight status is {record.get('status')!r} "
            f"({record.get('reason')}); this slide cannot be segmented"
        )
    return record


def run_cli(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        record = _read_preflight(args.preflight) if args.preflight else {}
        mpp = args.mpp
        if mpp is None and record.get("mpp_source") == "override":
            mpp = record.get("mpp")  # the sample sheet's value travels through the record
        overrides = {
            "method": args.method,
            "work_mpp": args.work_mpp,
            "min_region_mm2": args.min_region_mm2,
            "min_hole_mm2": args.min_hole_mm2,
            "close_um": args.close_um,
            "open_um": args.open_um,
            "remove_pen": False if args.keep_pen else None,
        }
        with Slide(args.slide, mpp=mpp) as slide:
            result = segment_slide(
                slide,
                args.preset,
                args.annotation,
                modality=record.get("modality"),
                **overrides,
            )
            seconds = round(time.perf_counter() - started, 3)
            write_tissue_dir(result, args.out, slide, seconds=seconds)
    except (SlideError, TissueError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "%s: %s, %d region(s), %.3f mm² tissue (mask %.2f µm/px) -> %s in %.2f s",
        args.slide,
        result.method,
        result.n_regions,
        result.tissue_area_mm2,
        result.mask_mpp,
        args.out,
        time.perf_counter() - started,
    )
    return 0
