"""Synthetic H&E-like whole-slide images with known tissue, µm/px and objective power.

Tests, benchmarks and the demo cohort need slides whose truth is known exactly: where the tissue
is (a shapely geometry in level-0 pixels), the µm/px and the magnification. Real slides cannot
give that, and they are too large to ship. The files written here are pyramidal tiled JPEG TIFFs
in the Aperio SVS layout (level 0, a stripped thumbnail page, then levels downsampled by 4), so
OpenSlide reports ``vendor=aperio`` and TiffSlide reads the same pages and metadata.

Pixels are produced tile by tile and each pyramid level is rendered procedurally at its own
resolution (the content is a function of level-0 position, not a decoded image), so a
100k x 100k px slide never sits in memory. Glass-only tiles are JPEG-encoded once per level and
reused. No label or macro image is ever written.

Texture model: optical densities (Beer-Lambert) of haematoxylin and eosin, using the stain
vectors of Ruifrok & Johnston; stroma is eosin with slowly varying density, nuclei are
haematoxylin ellipses on a jittered lattice in physical units (µm), so the look does not depend on
the chosen µm/px. Where a nucleus would be smaller than a pixel, its mean contribution is blended.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import shapely
import tifffile
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from slotspe_pipe.store.atomic import atomic_path

log = logging.getLogger(__name__)

# Ruifrok & Johnston stain optical-density vectors (R, G, B), unit length.
_H_OD = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_E_OD = np.array([0.072, 0.990, 0.105], dtype=np.float32)
# Pen inks (OD per channel): green and blue markers absorb red strongly.
_PEN_OD = {
    "green": np.array([1.6, 0.35, 1.1], dtype=np.float32),
    "blue": np.array([1.5, 1.0, 0.25], dtype=np.float32),
}

_NUCLEUS_SPACING_UM = 9.0  # lattice pitch of candidate nuclei
_NUCLEUS_RADIUS_UM = (2.5, 4.0)  # semi-major axis range
_NUCLEUS_PRESENCE = 0.55  # fraction of lattice sites holding a nucleus at density 1.0
_STROMA_NOISE_UM = (160.0, 28.0)  # value-noise scales for eosin density
_LEVEL_FACTOR = 4  # Aperio pyramids step by 4
_MIN_LEVEL_SIDE = 1000  # stop adding levels once the coarsest side is below this
_THUMB_MAX_SIDE = 768
_MAX_SIDE = 150_000  # tiled BigTIFF copes; the bound only catches unit mistakes

LAYOUTS = ("blobs", "multi", "sparse", "empty")


@dataclass(frozen=True)
class TissueRegion:
    """One piece of tissue: its outline and how it stains.

    ``polygon_level0`` is in level-0 pixels (holes allowed). ``nuclei_density`` is relative
    (1.0 = typical cellularity), ``hematoxylin`` and ``eosin`` scale the stain optical densities
    (1.0 = typical H&E).
    """

    polygon_level0: Polygon
    nuclei_density: float = 1.0
    hematoxylin: float = 1.0
    eosin: float = 1.0


@dataclass(frozen=True)
class SyntheticSlide:
    """What was written and the ground truth to test against (all geometry in level-0 px)."""

    path: Path
    width: int
    height: int
    mpp: float
    objective_power: float
    tissue: BaseGeometry  # union of all region polygons: the ground-truth tissue
    regions: tuple[TissueRegion, ...]
    pen_mark: BaseGeometry | None  # inked area, or None
    level_dimensions: tuple[tuple[int, int], ...] = field(default=())
    tile_size: int = 256
    seed: int = 0
    nuclei_density: float = 1.0
    background: tuple[int, int, int] = (240, 240, 240)

    @property
    def tissue_area_mm2(self) -> float:
        """Ground-truth tissue area in mm²."""
        return float(self.tissue.area) * (self.mpp * 1e-3) ** 2


# --------------------------------------------------------------------------------------------
# Deterministic hashing: the texture must be a pure function of (seed, level-0 position) so
# every pyramid level and every tile agree without sharing state.


def _hash_uniform(seed: int, salt: int, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) floats from integer lattice coordinates (splitmix64-style mixing)."""
    with np.errstate(over="ignore"):
        h = (
            ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ np.uint64((seed * 0x165667B19E3779F9 + salt * 0x27D4EB2F165667C5) % (1 << 64))
        )
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _value_noise(
    seed: int, salt: int, xs: np.ndarray, ys: np.ndarray, scale_px: float
) -> np.ndarray:
    """Smooth value noise in [0, 1) at level-0 positions ``xs`` (W,) x ``ys`` (H,)."""
    gx, gy = xs / scale_px, ys / scale_px
    ix0, iy0 = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - ix0, gy - iy0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    bx, by = int(ix0.min()), int(iy0.min())
    lx = np.arange(bx, int(ix0.max()) + 2)
    ly = np.arange(by, int(iy0.max()) + 2)
    lattice = _hash_uniform(seed, salt, lx[None, :], ly[:, None])
    cx, cy = ix0 - bx, iy0 - by
    top = lattice[cy][:, cx] * (1 - fx) + lattice[cy][:, cx + 1] * fx
    bot = lattice[cy + 1][:, cx] * (1 - fx) + lattice[cy + 1][:, cx + 1] * fx
    return (top * (1 - fy[:, None]) + bot * fy[:, None]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Default tissue layouts


def _blob(cx: float, cy: float, rx: float, ry: float, angle: float, rng: np.random.Generator):
    """A smooth irregular closed outline around an ellipse (radius modulated by low harmonics)."""
    t = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    wobble = np.ones_like(t)
    for k in (2, 3, 5):
        wobble += rng.uniform(0.02, 0.08) * np.sin(k * t + rng.uniform(0, 2 * np.pi))
    x, y = rx * wobble * np.cos(t), ry * wobble * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def default_regions(
    width: int, height: int, *, mpp: float = 0.25, layout: str = "blobs", seed: int = 0
) -> list[TissueRegion]:
    """Tissue regions placed deterministically from ``seed``, in level-0 px.

    Layouts: ``blobs`` (two sections, the larger with a hole), ``multi`` (six small serial
    sections in a 3 x 2 grid, as on a multi-section slide), ``sparse`` (one fragment of about
    0.1 % of the slide: an almost-empty slide), ``empty`` (glass only).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    rng = np.random.default_rng(seed)
    w, h = float(width), float(height)
    regions: list[TissueRegion] = []
    if layout == "blobs":
        big = _blob(0.33 * w, 0.53 * h, 0.2 * w, 0.33 * h, rng.uniform(-0.12, 0.12), rng)
        hole = _blob(
            0.30 * w, 0.48 * h, 0.05 * min(w, h), 0.07 * min(w, h), rng.uniform(0, np.pi), rng
        )
        regions.append(TissueRegion(Polygon(big, [hole[::-1]]), nuclei_density=1.0))
        small = _blob(0.76 * w, 0.5 * h, 0.11 * w, 0.22 * h, rng.uniform(-0.2, 0.2), rng)
        regions.append(TissueRegion(Polygon(small), nuclei_density=1.8, hematoxylin=1.1))
    elif layout == "multi":
        for row in range(2):
            for col in range(3):
                cx = (col + 0.5) / 3 * w + rng.uniform(-0.02, 0.02) * w
                cy = (0.33 + 0.42 * row) * h + rng.uniform(-0.02, 0.02) * h
                outline = _blob(cx, cy, 0.11 * w, 0.14 * h, rng.uniform(-0.15, 0.15), rng)
                regions.append(
                    TissueRegion(Polygon(outline), nuclei_density=float(rng.uniform(0.7, 1.6)))
                )
    elif layout == "sparse":
        r = math.sqrt(0.001 * w * h / math.pi)
        outline = _blob(0.6 * w, 0.4 * h, r * 1.2, r / 1.2, rng.uniform(0, np.pi), rng)
        regions.append(TissueRegion(Polygon(outline), nuclei_density=1.2))
    for region in regions:
        if not region.polygon_level0.is_valid:
            raise ValueError(f"default layout {layout!r} produced an invalid polygon")
    return regions


def _default_pen_mark(width: int, height: int, mpp: float, seed: int) -> BaseGeometry:
    """A wavy ink stroke (0.6 mm wide, narrower on small slides) along the top edge, over glass.

    The default layouts keep the top 8 % of the slide free of tissue, so the stroke can be
    checked as "not tissue" against the ground truth.
    """
    rng = np.random.default_rng(seed + 7919)
    xs = np.linspace(0.08 * width, 0.92 * width, 60)
    ys = 0.04 * height + 0.012 * height * np.sin(xs / width * 2 * np.pi * rng.uniform(1.5, 2.5))
    half_width_px = min(0.3e3 / mpp, 0.015 * height)  # 0.3 mm in level-0 px at most
    return LineString(np.stack([xs, ys], axis=1)).buffer(half_width_px, quad_segs=4)


# --------------------------------------------------------------------------------------------
# Rendering


class _Renderer:
    """Renders any window of the slide at any downsample from the region definitions."""

    def __init__(
        self,
        regions: Sequence[TissueRegion],
        *,
        mpp: float,
        seed: int,
        nuclei_density: float,
        background: tuple[int, int, int],
        pen: BaseGeometry | None,
    ) -> None:
        self.regions = list(regions)
        self.mpp = mpp
        self.seed = seed
        self.nuclei_density = nuclei_density
        self.background = np.array(background, dtype=np.float32)
        self.pen = pen
        self.pen_od = _PEN_OD["green"]
        self.spacing_px = _NUCLEUS_SPACING_UM / mpp
        self.radius_px = (_NUCLEUS_RADIUS_UM[0] / mpp, _NUCLEUS_RADIUS_UM[1] / mpp)
        self.region_rings = [_rings(r.polygon_level0) for r in self.regions]
        self.pen_rings = _rings(pen) if pen is not None else []
        self.region_bounds = [r.polygon_level0.bounds for r in self.regions]
        # Per-label stain parameters (label 0 = glass).
        self.density = np.array([0.0] + [r.nuclei_density for r in self.regions], np.float32)
        self.hema = np.array([0.0] + [r.hematoxylin for r in self.regions], np.float32)
        self.eosin = np.array([0.0] + [r.eosin for r in self.regions], np.float32)
        self.ink_geom = shapely.union_all(
            [r.polygon_level0 for r in self.regions] + ([pen] if pen is not None else [])
        )
        shapely.prepare(self.ink_geom)
        self._grain_cache: np.ndarray | None = None
        self._tables: dict[bool, np.ndarray] = {}
        self._glass_cache: np.ndarray | None = None
        self._nucleus_luts: dict[int, np.ndarray] = {}

    def blank(self, width: int, height: int) -> np.ndarray:
        """A glass-only tile (the same grain as rendered glass, so no seams show)."""
        return cv2.convertScaleAbs(cv2.add(self._glass(width, height), self._grain(width, height)))

    def is_blank(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """True when the level-0 box [x0, x1) x [y0, y1) holds neither tissue nor ink."""
        return not self.ink_geom.intersects(shapely.box(x0, y0, x1, y1))

    def render(self, x0: int, y0: int, width: int, height: int, ds: float) -> np.ndarray:
        """RGB uint8 (height, width, 3) of the window whose top-left level-pixel is (x0, y0)
        at downsample ``ds`` (level pixel i covers level-0 [i*ds, (i+1)*ds))."""
        pad = int(math.ceil(self.radius_px[1] / ds)) + 2
        labels = np.zeros((height + 2 * pad, width + 2 * pad), np.uint8)
        ox, oy = (x0 - pad) * ds, (y0 - pad) * ds
        ex, ey = ox + labels.shape[1] * ds, oy + labels.shape[0] * ds
        for idx, (rings, b) in enumerate(zip(self.region_rings, self.region_bounds, strict=True)):
            if b[2] >= ox and b[3] >= oy and b[0] <= ex and b[1] <= ey:
                _fill_rings(labels, rings, ox, oy, ds, idx + 1)
        inner = labels[pad : pad + height, pad : pad + width]
        if not inner.any():
            rgb = np.empty((height, width, 3), np.float32)
            rgb[...] = self.background
        else:
            # Beer-Lambert: transmitted light = background x product of per-stain factors.
            rgb = self._eosin_transmission(inner, x0, y0, ds)
            rgb *= cv2.LUT(cv2.merge([inner, inner, inner]), self._label_table(ds))
            if 0.5 * (self.radius_px[0] + self.radius_px[1]) / ds >= 1.0:
                cover = self._nuclei_cover(labels, pad, x0, y0, ds)
                rgb *= self._nucleus_transmission(cover, inner)
            rgb *= self.background
            cv2.copyTo(self._glass(width, height), (inner == 0).view(np.uint8), rgb)
        if self.pen_rings:
            ink = np.zeros((height, width), np.uint8)
            _fill_rings(ink, self.pen_rings, x0 * ds, y0 * ds, ds, 1)
            if ink.any():
                rgb[ink > 0] *= np.exp(-self.pen_od)
        # convertScaleAbs rounds and saturates to uint8; values are never negative here.
        return cv2.convertScaleAbs(cv2.add(rgb, self._grain(width, height)))

    def _glass(self, width: int, height: int) -> np.ndarray:
        """Background colour as a float32 (height, width, 3) array (cached)."""
        if self._glass_cache is None or self._glass_cache.shape[:2] != (height, width):
            self._glass_cache = np.empty((height, width, 3), np.float32)
            self._glass_cache[...] = self.background
        return self._glass_cache

    def _label_table(self, ds: float) -> np.ndarray:
        """(1, 256, 3) float32 transmission per region label: haematoxylin counterstain of the
        stroma, and at coarse levels the mean darkening by sub-pixel nuclei. Label 0 = 1."""
        key = 0.5 * (self.radius_px[0] + self.radius_px[1]) / ds >= 1.0
        table = self._tables.get(key)
        if table is not None:
            return table
        n = len(self.regions) + 1
        trans = np.exp(-(0.06 * self.hema[:, None]) * _H_OD[None, :])
        if not key:
            r_mean = 0.5 * (self.radius_px[0] + self.radius_px[1])
            area = np.pi * r_mean * r_mean * 0.8 / (self.spacing_px**2)
            presence = np.clip(_NUCLEUS_PRESENCE * self.density * self.nuclei_density, 0, 1)
            coverage = np.clip(area * presence, 0, 0.9)[:, None]
            nucleus = np.exp(-(0.85 * self.hema[:, None]) * _H_OD[None, :])
            trans = trans * ((1 - coverage) + coverage * nucleus)
        table = np.ones((1, 256, 3), np.float32)
        table[0, :n] = trans
        table[0, 0] = 1.0
        self._tables[key] = table
        return table

    def _nucleus_transmission(self, cover: np.ndarray, inner: np.ndarray) -> np.ndarray:
        """Transmission of drawn nuclei from their coverage mask (uint8, 255 = full nucleus)."""
        present = np.flatnonzero(np.bincount(inner.ravel(), minlength=len(self.hema))[1:]) + 1
        cover3 = cv2.merge([cover, cover, cover])
        out = None
        for label in present.tolist():
            trans = cv2.LUT(cover3, self._nucleus_lut(label))
            if out is None:
                out = trans
            else:
                sel = inner == label
                out[sel] = trans[sel]
        return out if out is not None else np.float32(1.0)

    def _nucleus_lut(self, label: int) -> np.ndarray:
        """(1, 256, 3) transmission of a nucleus of region ``label`` by coverage 0..255."""
        lut = self._nucleus_luts.get(label)
        if lut is None:
            levels = np.arange(256, dtype=np.float32)[:, None] / 255.0
            lut = np.exp(-(0.85 * self.hema[label] * levels) * _H_OD[None, :])
            lut = np.ascontiguousarray(lut.reshape(1, 256, 3).astype(np.float32))
            self._nucleus_luts[label] = lut
        return lut

    def _eosin_transmission(self, inner: np.ndarray, x0: int, y0: int, ds: float) -> np.ndarray:
        """(h, w, 3) float32 transmission of eosin-stained stroma with smooth density changes.

        Density is value noise in physical units, evaluated every ``step`` pixels and
        bilinearly upsampled after the exponential: it varies over tens of µm, so this looks
        the same as per-pixel evaluation at a fraction of the cost.
        """
        height, width = inner.shape
        step = max(1, min(16, int(_STROMA_NOISE_UM[1] / self.mpp / ds / 4)))
        gxi = np.arange(0, width + step, step)
        gyi = np.arange(0, height + step, step)
        gx, gy = (x0 + gxi + 0.5) * ds, (y0 + gyi + 0.5) * ds
        density = np.full((gyi.size, gxi.size), 0.62, np.float32)
        weight = 0.38
        for salt, scale_um in enumerate(_STROMA_NOISE_UM):
            scale = scale_um / self.mpp
            if scale / ds >= 2.0:  # finer than 2 px it would only alias
                density += weight * (_value_noise(self.seed, 10 + salt, gx, gy, scale) - 0.5)
            weight *= 0.6
        lab = inner[np.minimum(gyi, height - 1)][:, np.minimum(gxi, width - 1)]
        od = (0.45 * density * self.eosin[lab])[..., None] * _E_OD
        coarse = np.exp(-od).astype(np.float32)
        if step == 1:
            return np.ascontiguousarray(coarse[:height, :width])
        full = cv2.resize(
            coarse, (coarse.shape[1] * step, coarse.shape[0] * step), interpolation=cv2.INTER_LINEAR
        )
        return np.ascontiguousarray(full[:height, :width])

    def _grain(self, width: int, height: int) -> np.ndarray:
        """Fixed sensor-like noise (±3 grey levels), periodic per tile: cheap and deterministic."""
        if self._grain_cache is None or self._grain_cache.shape[:2] != (height, width):
            rng = np.random.default_rng(self.seed + 104729)
            grey = rng.uniform(-3, 3, (height, width, 1)).astype(np.float32)
            self._grain_cache = np.ascontiguousarray(np.repeat(grey, 3, axis=2))
        return self._grain_cache

    def _nuclei_cover(
        self, labels: np.ndarray, pad: int, x0: int, y0: int, ds: float
    ) -> np.ndarray:
        """uint8 mask of nucleus coverage per pixel (255 = fully inside; anti-aliased)."""
        height, width = labels.shape[0] - 2 * pad, labels.shape[1] - 2 * pad
        s = self.spacing_px
        # Candidate lattice sites touching this window (with margin for nucleus radius).
        lx0 = int(math.floor(((x0 - pad) * ds) / s)) - 1
        ly0 = int(math.floor(((y0 - pad) * ds) / s)) - 1
        lx1 = int(math.ceil(((x0 + width + pad) * ds) / s)) + 1
        ly1 = int(math.ceil(((y0 + height + pad) * ds) / s)) + 1
        ix, iy = np.meshgrid(np.arange(lx0, lx1), np.arange(ly0, ly1))
        ix, iy = ix.ravel(), iy.ravel()
        u = [_hash_uniform(self.seed, k, ix, iy) for k in range(6)]
        # Centres in padded-window pixels; the region under the centre sets the density.
        px = ((ix + 0.5 + 0.8 * (u[0] - 0.5)) * s) / ds - (x0 - pad)
        py = ((iy + 0.5 + 0.8 * (u[1] - 0.5)) * s) / ds - (y0 - pad)
        inside = (px >= 0) & (py >= 0) & (px < labels.shape[1]) & (py < labels.shape[0])
        lab = np.zeros(ix.shape, np.uint8)
        lab[inside] = labels[py[inside].astype(int), px[inside].astype(int)]
        presence = np.clip(_NUCLEUS_PRESENCE * self.density[lab] * self.nuclei_density, 0, 1)
        keep = (lab > 0) & (u[2] < presence)
        mask = np.zeros(labels.shape, np.uint8)
        scale = 16.0  # cv2 fixed-point shift of 4 bits: sub-pixel centres and axes
        r0, r1 = self.radius_px
        a = (r0 + (r1 - r0) * u[3][keep]) / ds
        b = a * (0.55 + 0.45 * u[4][keep])
        params = np.stack(
            [px[keep] * scale, py[keep] * scale, a * scale, b * scale, u[5][keep] * 180.0], axis=1
        )
        for cx, cy, ax, bx, ang in params.tolist():
            cv2.ellipse(
                mask, (int(cx), int(cy)), (int(ax), int(bx)), ang, 0, 360, 255, -1, cv2.LINE_AA, 4
            )
        return np.ascontiguousarray(mask[pad : pad + height, pad : pad + width])


def _rings(geom: BaseGeometry | None) -> list[np.ndarray]:
    """All exterior and interior rings of a (multi)polygon as float64 (K, 2) arrays."""
    if geom is None or geom.is_empty:
        return []
    rings: list[np.ndarray] = []
    for poly in getattr(geom, "geoms", [geom]):
        rings.append(np.asarray(poly.exterior.coords, dtype=np.float64))
        rings.extend(np.asarray(r.coords, dtype=np.float64) for r in poly.interiors)
    return rings


def _fill_rings(
    canvas: np.ndarray, rings: list[np.ndarray], ox: float, oy: float, ds: float, value: int
) -> None:
    """Even-odd fill of rings (level-0 coords) into ``canvas`` whose pixel (0,0) is at (ox, oy)."""
    shift = 4
    pts = [
        np.round(((ring - (ox, oy)) / ds - 0.5) * (1 << shift)).astype(np.int32) for ring in rings
    ]
    # Even-odd rule via XOR of per-ring fills so holes come out right.
    acc = np.zeros(canvas.shape, np.uint8)
    for p in pts:
        one = np.zeros(canvas.shape, np.uint8)
        cv2.fillPoly(one, [p], 1, cv2.LINE_8, shift)
        acc ^= one
    canvas[acc > 0] = value


# --------------------------------------------------------------------------------------------
# Writing


def _level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) >= _MIN_LEVEL_SIDE:
        w, h = dims[-1]
        dims.append((max(1, w // _LEVEL_FACTOR), max(1, h // _LEVEL_FACTOR)))
    return dims


def _encode(tile: np.ndarray, quality: int) -> bytes:
    # Same parameters tifffile uses for compression='jpeg' on RGB: YCbCr 4:2:0 in the JPEG.
    return imagecodecs.jpeg8_encode(
        tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
    )


def _level_tiles(
    renderer: _Renderer, dims: tuple[int, int], ds: float, tile_size: int, quality: int
) -> Iterator[bytes]:
    """JPEG tiles of one level in TIFF order (rows of tiles, left to right)."""
    w, h = dims
    blank = _encode(renderer.blank(tile_size, tile_size), quality)
    n_rendered = 0
    for ty in range(0, h, tile_size):
        for tx in range(0, w, tile_size):
            if renderer.is_blank(tx * ds, ty * ds, (tx + tile_size) * ds, (ty + tile_size) * ds):
                yield blank
                continue
            n_rendered += 1
            yield _encode(renderer.render(tx, ty, tile_size, tile_size, ds), quality)
    log.debug("level %dx%d: %d tiles rendered", w, h, n_rendered)


def write_synthetic_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    mpp: float = 0.25,
    objective_power: float = 40,
    regions: Sequence[TissueRegion] | None = None,
    layout: str = "blobs",
    seed: int = 0,
    tile_size: int = 256,
    jpeg_quality: int = 80,
    nuclei_density: float = 1.0,
    pen_mark: bool | BaseGeometry = False,
    background: tuple[int, int, int] = (240, 240, 240),
) -> SyntheticSlide:
    """Write a pyramidal tiled-JPEG Aperio-style TIFF (.svs) at ``path``; return its truth.

    ``width``/``height`` are level-0 pixels (up to about 150k a side), ``mpp`` is µm/px at
    level 0 and goes with ``objective_power`` into the Aperio ImageDescription (``AppMag``,
    ``MPP``). ``regions`` are the tissue pieces in level-0 px; when ``None`` they come from
    :func:`default_regions` with ``layout`` and ``seed``. ``nuclei_density`` scales every
    region's cellularity. ``pen_mark`` True draws a green marker stroke along the top of the
    slide (mostly over glass); a shapely geometry draws ink exactly there. Written atomically.
    """
    if not (16 <= width <= _MAX_SIDE and 16 <= height <= _MAX_SIDE):
        raise ValueError(f"{path}: width/height {width}x{height} px outside 16..{_MAX_SIDE}")
    if not (0.05 <= mpp <= 50):
        raise ValueError(f"{path}: mpp {mpp} µm/px is not a plausible slide resolution")
    if tile_size % 16:
        raise ValueError(f"{path}: tile_size {tile_size} must be a multiple of 16 (JPEG MCU)")
    path = Path(path)
    if regions is None:
        regions = default_regions(width, height, mpp=mpp, layout=layout, seed=seed)
    regions = tuple(regions)
    if pen_mark is True:
        pen: BaseGeometry | None = _default_pen_mark(width, height, mpp, seed)
    elif isinstance(pen_mark, BaseGeometry):
        pen = pen_mark
    else:
        pen = None
    renderer = _Renderer(
        regions, mpp=mpp, seed=seed, nuclei_density=nuclei_density, background=background, pen=pen
    )
    dims = _level_dimensions(width, height)
    started = time.perf_counter()
    header = f"Aperio Image Library v12.0.15 synthetic (slotspe-pipe seed={seed})"
    base_desc = (
        f"{header}\r\n{width}x{height} ({tile_size}x{tile_size}) JPEG/RGB Q={jpeg_quality}"
        f"|AppMag = {objective_power:g}|MPP = {mpp:.6g}|Filename = synthetic-{seed}"
    )
    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per cm: generic TIFF readers get µm/px too
    thumb_ds = max(width, height) / _THUMB_MAX_SIDE
    thumb_dims = (max(1, round(width / thumb_ds)), max(1, round(height / thumb_ds)))
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for level, (lw, lh) in enumerate(dims):
            ds = width / lw
            tw.write(
                _level_tiles(renderer, (lw, lh), ds, tile_size, jpeg_quality),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": jpeg_quality},
                description=base_desc if level == 0 else f"{header}\r\n{lw}x{lh}",
                resolution=resolution if level == 0 else None,
                resolutionunit="CENTIMETER" if level == 0 else None,
                subfiletype=0,
                metadata=None,
                software=False,
            )
            if level == 0:
                # Page 1 of an SVS is the stripped thumbnail; readers (tifffile's SVS series,
                # OpenSlide) count tiled levels from page 2 on.
                thumb = renderer.render(0, 0, thumb_dims[0], thumb_dims[1], thumb_ds)
                tw.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": jpeg_quality},
                    rowsperstrip=16,
                    description=f"{header}\r\n{width}x{height} -> {thumb_dims[0]}x{thumb_dims[1]}",
                    subfiletype=0,
                    metadata=None,
                    software=False,
                )
    log.info(
        "wrote synthetic slide %s (%dx%d px, %d levels) in %.1f s",
        path,
        width,
        height,
        len(dims),
        time.perf_counter() - started,
    )
    tissue = shapely.union_all([r.polygon_level0 for r in regions]) if regions else Polygon()
    return SyntheticSlide(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        objective_power=float(objective_power),
        tissue=tissue,
        regions=regions,
        pen_mark=pen,
        level_dimensions=tuple(dims),
        tile_size=tile_size,
        seed=seed,
        nuclei_density=nuclei_density,
        background=tuple(background),
    )


def render_region(
    slide: SyntheticSlide, x: int, y: int, width: int, height: int, *, downsample: float = 1.0
) -> np.ndarray:
    """Pixels of a window of ``slide`` rendered from its definition, without reading the file.

    (x, y) is the top-left in pixels at ``downsample`` (1.0 = level 0). The file holds exactly
    this, up to JPEG error, so tests can compare what a reader decodes with what was encoded.
    """
    renderer = _Renderer(
        slide.regions,
        mpp=slide.mpp,
        seed=slide.seed,
        nuclei_density=slide.nuclei_density,
        background=slide.background,
        pen=slide.pen_mark,
    )
    return renderer.render(x, y, width, height, downsample)
