"""`slotspe-pipe tile SLIDE --tissue DIR -o TILES.zarr`: a patch grid at an exact physical size.

Users ask for patches of ``patch_px`` pixels at ``target_mpp`` µm/px; a patch then covers
``patch_px * target_mpp`` µm whatever the scanner, i.e. ``patch_px_level0 =
round(patch_px * target_mpp / slide_mpp)`` level-0 pixels (512 for a 0.25 µm/px slide, 487 for
0.263, 256 for 0.5 at 256 px / 0.5 µm/px). The pyramid level to read is the coarsest one that is
still at least as fine as the target (reading it and resizing down never invents detail), and the
resize factor from the region read to ``patch_px`` is recorded with everything else the
extractor needs, so the patches can be rebuilt exactly from the store alone.

The grid is aligned to the slide origin (patch x = k * stride), so the same settings always give
the same coordinates, and it never runs past the slide edge. Each patch's tissue fraction is
measured exactly on the tissue mask (area integral of the pixel mask via a bilinearly
interpolated integral image), vectorised over the whole grid. A slide without tissue gives a
valid store with zero patches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slotspe_pipe.slides import Slide, SlideError
from slotspe_pipe.store.atomic import atomic_path
from slotspe_pipe.store.tiles import write_tiles
from slotspe_pipe.store.zarr_group import StoreError
from slotspe_pipe.tissue import TissueError, TissueResult, draw_contours, load_tissue

log = logging.getLogger(__name__)

# Keep a patch when at least this fraction of its area is tissue: mostly-tissue patches make
# better features, and half a patch still reaches the edge of a thin biopsy core.
DEFAULT_MIN_TISSUE = 0.5
# A target finer than the slide by more than this would be upsampling: refused by default.
UPSAMPLE_TOLERANCE = 0.10


class TilingError(ValueError):
    """Tiling settings do not fit the slide (upsampling, overlap, mismatched tissue)."""


def patch_size_level0(slide_mpp: float, target_mpp: float, patch_px: int) -> int:
    """Level-0 side of a patch of ``patch_px`` px at ``target_mpp`` µm/px on a ``slide_mpp``
    slide: round(patch_px * target_mpp / slide_mpp)."""
    return max(1, int(round(patch_px * target_mpp / slide_mpp)))


def stride_level0(slide_mpp: float, target_mpp: float, patch_px: int, overlap: int) -> int:
    """Level-0 step between patches; ``overlap`` is in target px and shared by neighbours."""
    if not 0 <= overlap < patch_px:
        raise TilingError(f"overlap {overlap} px must be >= 0 and < patch_px {patch_px}")
    size = patch_size_level0(slide_mpp, target_mpp, patch_px)
    return max(1, size - int(round(overlap * target_mpp / slide_mpp)))


def grid_positions(start: float, end: float, size: int, stride: int, limit: int) -> np.ndarray:
    """Level-0 origins k*stride of patches overlapping [start, end) and inside [0, limit)."""
    k_min = max(0, math.floor((start - size) / stride) + 1)
    k_max = min((limit - size) // stride, math.ceil(end / stride) - 1)
    if k_max < k_min:
        return np.zeros(0, np.int64)
    return np.arange(k_min, k_max + 1, dtype=np.int64) * stride


def tissue_fractions(
    mask: np.ndarray,
    mask_downsample: tuple[float, float],
    xs: np.ndarray,
    ys: np.ndarray,
    size: int,
) -> np.ndarray:
    """(len(ys), len(xs)) fraction of each patch [x, x+size) x [y, y+size) (level-0) covered by
    the pixel mask.

    The integral image of a pixel mask is bilinear inside each pixel, so interpolating it at
    fractional mask coordinates gives the exact covered area, for any alignment of the grid
    to the mask.
    """
    h, w = mask.shape
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((len(ys), len(xs)), np.float64)
    integral = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)  # (h+1, w+1)
    sx, sy = mask_downsample

    def weights(coords: np.ndarray, scale: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        u = np.clip(coords / scale, 0.0, float(n))
        i0 = np.minimum(np.floor(u).astype(np.int64), n - 1)
        return i0, u - i0

    y0i, y0f = weights(ys.astype(np.float64), sy, h)
    y1i, y1f = weights(ys.astype(np.float64) + size, sy, h)
    x0i, x0f = weights(xs.astype(np.float64), sx, w)
    x1i, x1f = weights(xs.astype(np.float64) + size, sx, w)

    def rows(i: np.ndarray, f: np.ndarray) -> np.ndarray:
        return integral[i] * (1 - f)[:, None] + integral[i + 1] * f[:, None]

    def cols(r: np.ndarray, i: np.ndarray, f: np.ndarray) -> np.ndarray:
        return r[:, i] * (1 - f)[None, :] + r[:, i + 1] * f[None, :]

    top, bottom = rows(y0i, y0f), rows(y1i, y1f)
    area = (
        cols(bottom, x1i, x1f) - cols(bottom, x0i, x0f) - cols(top, x1i, x1f) + cols(top, x0i, x0f)
    )
    return np.clip(area / ((size / sx) * (size / sy)), 0.0, 1.0)


def _settings_hash(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def tile_slide(
    slide: Slide,
    tissue: TissueResult,
    target_mpp: float,
    patch_px: int,
    overlap: int = 0,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    *,
    allow_upsample: bool = False,
    slide_id: str | None = None,
    tissue_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Patch grid of ``slide`` over ``tissue``: (coords int32 (N, 2) level-0 top-left x, y in
    row-major order, tissue fractions float32 (N,), store attrs).

    ``target_mpp`` µm/px and ``patch_px`` px set the physical patch size; ``overlap`` is in
    target px; patches with tissue fraction >= ``min_tissue`` are kept. Raises ``TilingError``
    for a target finer than the slide by more than 10 % (unless ``allow_upsample``), a bad
    overlap, or a tissue result from a slide of other dimensions.
    """
    if not target_mpp > 0 or not math.isfinite(target_mpp):
        raise TilingError(f"target_mpp must be a positive µm/px, got {target_mpp}")
    if patch_px < 1:
        raise TilingError(f"patch_px must be >= 1, got {patch_px}")
    if not 0.0 <= min_tissue <= 1.0:
        raise TilingError(f"min_tissue must be within 0..1, got {min_tissue}")
    if target_mpp < slide.mpp * (1 - UPSAMPLE_TOLERANCE) and not allow_upsample:
        raise TilingError(
            f"{slide.path}: target {target_mpp} µm/px is finer than the slide's level 0 "
            f"({slide.mpp:.4g} µm/px, {slide.info.mpp_source}): upsampling invents detail. Use "
            f"--target-mpp >= {slide.mpp * (1 - UPSAMPLE_TOLERANCE):.3g} or --allow-upsample"
        )
    dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
    if tuple(tissue.level0_dimensions) != dims:
        raise TilingError(
            f"{tissue_dir or 'tissue'}: segmented a {tissue.level0_dimensions[0]}x"
            f"{tissue.level0_dimensions[1]} px slide, but {slide.path} is {dims[0]}x{dims[1]} px: "
            "the tissue directory belongs to another slide"
        )
    if abs(tissue.slide_mpp - slide.mpp) > 0.01 * slide.mpp:
        log.warning(
            "%s: segmented with %.4g µm/px, tiling with %.4g µm/px (different --mpp?)",
            slide.path,
            tissue.slide_mpp,
            slide.mpp,
        )

    size = patch_size_level0(slide.mpp, target_mpp, patch_px)
    stride = stride_level0(slide.mpp, target_mpp, patch_px, overlap)
    read_level = slide.best_level_for_downsample(size / patch_px)
    read_downsample = float(slide.level_downsamples[read_level])
    read_px = max(1, int(round(size / read_downsample)))

    mask = tissue.mask
    ys_m, xs_m = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if size > min(dims) or len(xs_m) == 0:
        coords = np.zeros((0, 2), np.int32)
        fractions = np.zeros(0, np.float32)
    else:
        sx, sy = tissue.mask_downsample
        xs = grid_positions(xs_m[0] * sx, (xs_m[-1] + 1) * sx, size, stride, dims[0])
        ys = grid_positions(ys_m[0] * sy, (ys_m[-1] + 1) * sy, size, stride, dims[1])
        frac = tissue_fractions(mask, (sx, sy), xs, ys, size)
        # A hair of tolerance so a patch exactly at the threshold is not lost to rounding.
        keep_y, keep_x = np.nonzero(frac >= min_tissue - 1e-9)
        coords = np.stack([xs[keep_x], ys[keep_y]], axis=1).astype(np.int32)
        fractions = frac[keep_y, keep_x].astype(np.float32)

    segmentation = {
        **tissue.settings_record,
        "tissue_dir": str(tissue_dir) if tissue_dir is not None else None,
        "tissue_area_mm2": round(tissue.tissue_area_mm2, 6),
        "n_regions": tissue.n_regions,
        "mask_mpp": tissue.mask_mpp,
        "mask_sha256": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest(),
    }
    hashed = {
        "target_mpp": float(target_mpp),
        "patch_px": int(patch_px),
        "overlap": int(overlap),
        "min_tissue": float(min_tissue),
        "mpp": float(slide.mpp),
        "patch_px_level0": size,
        "stride_px_level0": stride,
        "level0_dimensions": list(dims),
        "segmentation": {k: v for k, v in segmentation.items() if k != "tissue_dir"},
    }
    info = slide.info
    attrs: dict[str, Any] = {
        "slide_id": slide_id or _default_slide_id(slide.path),
        "slide_path": str(slide.path),
        "reader": info.reader,
        "mpp": float(slide.mpp),
        "mpp_source": info.mpp_source,
        "mpp_is_estimate": bool(info.mpp_is_estimate),
        "target_mpp": float(target_mpp),
        # What a patch really is after rounding to whole level-0 px (e.g. 0.50033 at 0.263).
        "effective_mpp": size * float(slide.mpp) / patch_px,
        "patch_px": int(patch_px),
        "patch_px_level0": size,
        "stride_px_level0": stride,
        "read_level": int(read_level),
        "read_downsample": read_downsample,
        "read_px": read_px,
        "resize": patch_px / read_px,  # factor applied to the read_px region to get patch_px
        "overlap": int(overlap),
        "min_tissue": float(min_tissue),
        "level0_dimensions": list(dims),
        "grid_origin": [0, 0],
        "segmentation": segmentation,
        "settings_hash": _settings_hash(hashed),
    }
    return coords, fractions, attrs


def _default_slide_id(path: Path) -> str:
    # A DICOM series is a directory or one of its files: name it by the directory.
    if path.is_dir() or path.suffix.lower() in (".dcm", ".dicom"):
        return path.name if path.is_dir() else path.parent.name
    return path.stem


def write_tile_store(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    fractions: np.ndarray,
    attrs: dict[str, Any],
) -> Path:
    """Write the tiles store atomically (an interrupted write leaves nothing readers accept)."""
    return write_tiles(path, coords, fractions, attrs)


def draw_grid_thumbnail(
    slide: Slide,
    tissue: TissueResult,
    coords: np.ndarray,
    patch_px_level0: int,
    out_png: str | os.PathLike[str],
) -> Path:
    """QC picture: the slide thumbnail (pyramid only) with tissue outlines and the kept patches
    drawn as boxes. Written atomically to ``out_png``."""
    from PIL import Image

    thumb, _ = slide.thumbnail_at_mpp(tissue.mask_mpp)
    img = draw_contours(tissue, thumb)
    h, w = img.shape[:2]
    sx, sy = slide.dimensions[0] / w, slide.dimensions[1] / h
    boxes = np.zeros_like(img)
    for x, y in np.asarray(coords).tolist():
        p0 = (int(round(x / sx)), int(round(y / sy)))
        p1 = (
            int(round((x + patch_px_level0) / sx)) - 1,
            int(round((y + patch_px_level0) / sy)) - 1,
        )
        cv2.rectangle(boxes, p0, p1, (255, 210, 0), 1)
    drawn = boxes.any(axis=2)
    img[drawn] = (0.35 * img[drawn] + 0.65 * boxes[drawn]).astype(np.uint8)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return out


# --------------------------------------------------------------------------------------------
# CLI


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction within 0..1, got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="slide file (or DICOM series directory)")
    parser.add_argument("--tissue", required=True, help="tissue directory from `segment`")
    parser.add_argument("-o", "--out", required=True, help="output tiles store (.zarr)")
    parser.add_argument("--target-mpp", type=_positive, default=0.5, help="µm/px of patches")
    parser.add_argument("--patch-px", type=int, default=256, help="patch side in target px")
    parser.add_argument("--overlap", type=int, default=0, help="overlap in target px")
    parser.add_argument(
        "--min-tissue",
        type=_fraction,
        default=DEFAULT_MIN_TISSUE,
        help=f"keep patches at least this fraction tissue (default {DEFAULT_MIN_TISSUE})",
    )
    parser.add_argument("--mpp", type=_positive, help="level-0 µm/px override")
    parser.add_argument("--preflight", help="preflight record JSON (µm/px override)")
    parser.add_argument("--slide-id", help="slide identifier (default: file stem)")
    parser.add_argument("--allow-upsample", action="store_true", help="permit target < slide mpp")
    parser.add_argument("--grid-png", help="also write a QC picture of the grid here")


def run_cli(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        mpp = args.mpp
        if mpp is None and args.preflight:
            record = json.loads(Path(args.preflight).read_text())
            if record.get("mpp_source") == "override":
                mpp = record.get("mpp")
        tissue = load_tissue(args.tissue)
        with Slide(args.slide, mpp=mpp) as slide:
            coords, fractions, attrs = tile_slide(
                slide,
                tissue,
                args.target_mpp,
                args.patch_px,
                args.overlap,
                args.min_tissue,
                allow_upsample=args.allow_upsample,
                slide_id=args.slide_id,
                tissue_dir=args.tissue,
            )
            write_tile_store(args.out, coords, fractions, attrs)
            if args.grid_png:
                draw_grid_thumbnail(slide, tissue, coords, attrs["patch_px_level0"], args.grid_png)
    except (SlideError, TissueError, TilingError, StoreError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "%s: %d patches of %d px @ %.4g µm/px (%d px level 0, read level %d, resize %.4g) "
        "-> %s in %.2f s",
        args.slide,
        len(coords),
        args.patch_px,
        args.target_mpp,
        attrs["patch_px_level0"],
        attrs["read_level"],
        attrs["resize"],
        args.out,
        time.perf_counter() - started,
    )
    return 0
