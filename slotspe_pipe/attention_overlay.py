"""Attention heatmaps drawn over the slide's own tissue thumbnail, as squares of the true patch size.

A pathologist judges an attention map against the tissue: a scatter of patch centres says nothing
about whether the hot patches sit on tumour, stroma or a fold. So each patch is drawn as the
square it really covers (``patch_px_level0`` level-0 px from its top-left corner), mapped onto the
segmentation thumbnail through the thumbnail's scale (thumbnail px per level-0 px), blended
semi-transparently so the tissue stays visible underneath.

Attention weights sum to 1 over all of a patient's patches, so raw values are tiny and depend on
the patch count. Values are therefore shown as weight x N (N = the patient's patch count, 1 =
uniform attention), and colours are scaled per panel between percentiles of that panel's values,
so one extreme patch does not wash out the rest of the map.

Everything here is a pure function of arrays (plus a matplotlib ``Figure`` built without pyplot, so
nothing touches global plotting state); the report and the trainer's fallback plot both use it.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from slotspe_pipe.store.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_CMAP = "turbo"
# Opacity from the lowest to the highest colour: cold patches barely tint the tissue, hot ones
# are clearly coloured, and the tissue stays visible under both.
DEFAULT_ALPHA = (0.25, 0.65)
CLIP_PERCENTILES = (1.0, 99.0)
VALUE_LABEL = "attention × N (1 = uniform)"
# Scales from the thumbnail's size and from its µm/px may differ by rounding of the thumbnail
# size (< 1 px over the slide); a larger gap means the thumbnail is not of this slide.
SCALE_TOLERANCE = 0.02
COLOURBAR_PX = 84  # right margin of a panel figure: colour bar, its ticks and label
_MIN_PANEL_PX = 160  # a panel is at least this tall so the colour bar and its label fit
_DPI = 100


class AttentionRecordError(ValueError):
    """An attention record (.npz) is missing a field or has one of the wrong shape."""


@dataclass(frozen=True)
class AttentionRecord:
    """One patient's attention maps as written by ``evaluate.write_attention_record``.

    ``wsi_attention`` (S, N) holds each slot's weights over the patient's N patches (rows sum to
    1); a model with a single attention map (ABMIL's ``patch_attention``) gives S = 1 and no gate.
    ``coords`` are level-0 top-left corners; ``patch_slide`` indexes ``slide_ids``.
    """

    path: Path
    case_id: str
    slide_ids: tuple[str, ...]
    coords: np.ndarray | None  # int (N, 2), level-0 px
    patch_slide: np.ndarray | None  # int (N,)
    wsi_attention: np.ndarray | None  # float (S, N)
    wsi_gate: np.ndarray | None  # float (S,), non-zero on kept slots
    omics_attention: np.ndarray | None  # float (S, P)
    omics_gate: np.ndarray | None  # float (S,)
    pathways: tuple[str, ...]
    single_map: bool = False  # True when the model has one map (no slots)

    @property
    def n_patches(self) -> int:
        return 0 if self.coords is None else int(self.coords.shape[0])

    def slide_name(self, index: int) -> str:
        return self.slide_ids[index] if 0 <= index < len(self.slide_ids) else f"slide {index}"

    def slides_with_patches(self) -> list[int]:
        """Indices into ``slide_ids`` of the slides that contributed patches, in order."""
        if self.patch_slide is None:
            return []
        return [int(s) for s in np.unique(self.patch_slide)]


def load_attention_record(path: str | os.PathLike[str]) -> AttentionRecord:
    """Read and check a patient's attention .npz.

    Raises AttentionRecordError naming the file and the field when a map's shape does not match
    the patch list (e.g. a record written by a different model or a truncated file).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AttentionRecordError(f"{path}: not a readable .npz ({exc})") from exc

    def field(name: str, ndim: int) -> np.ndarray | None:
        value = arrays.get(name)
        if value is not None and value.ndim != ndim:
            raise AttentionRecordError(
                f"{path}: field {name!r} has shape {value.shape}, expected {ndim} dimension(s)"
            )
        return value

    coords = field("coords", 2)
    if coords is not None and coords.shape[1] != 2:
        raise AttentionRecordError(
            f"{path}: field 'coords' has shape {coords.shape}, expected (N, 2)"
        )
    patch_slide = field("patch_slide", 1)
    wsi = field("wsi_slot_attention", 2)
    single = False
    if wsi is None and "patch_attention" in arrays:
        wsi = np.atleast_2d(arrays["patch_attention"])
        single = True
    n = None if coords is None else coords.shape[0]
    if n is not None and patch_slide is not None and patch_slide.shape != (n,):
        raise AttentionRecordError(
            f"{path}: field 'patch_slide' has shape {patch_slide.shape}, expected ({n},) as coords"
        )
    if n is not None and wsi is not None and wsi.shape[1] != n:
        name = "patch_attention" if single else "wsi_slot_attention"
        raise AttentionRecordError(
            f"{path}: field {name!r} has shape {wsi.shape}, expected (slots, {n}) as coords"
        )
    wsi_gate = None if single else field("wsi_gate", 1)
    if wsi is not None and wsi_gate is not None and wsi_gate.shape != (wsi.shape[0],):
        raise AttentionRecordError(
            f"{path}: field 'wsi_gate' has shape {wsi_gate.shape}, expected ({wsi.shape[0]},)"
        )
    omics = field("omics_slot_attention", 2)
    omics_gate = field("omics_gate", 1)
    pathways = tuple(str(p) for p in arrays.get("pathways", np.zeros(0, str)).reshape(-1))
    if omics is not None and pathways and omics.shape[1] != len(pathways):
        raise AttentionRecordError(
            f"{path}: field 'omics_slot_attention' has shape {omics.shape}, expected "
            f"(slots, {len(pathways)}) as 'pathways'"
        )
    if omics is not None and omics_gate is not None and omics_gate.shape != (omics.shape[0],):
        raise AttentionRecordError(
            f"{path}: field 'omics_gate' has shape {omics_gate.shape}, expected ({omics.shape[0]},)"
        )
    case = arrays.get("case_id")
    return AttentionRecord(
        path=path,
        case_id=str(case.item()) if case is not None and case.size == 1 else path.stem,
        slide_ids=tuple(str(s) for s in arrays.get("slide_ids", np.zeros(0, str)).reshape(-1)),
        coords=None if coords is None else coords.astype(np.int64),
        patch_slide=None if patch_slide is None else patch_slide.astype(np.int64),
        wsi_attention=None if wsi is None else wsi.astype(np.float64),
        wsi_gate=None if wsi_gate is None else wsi_gate.astype(np.float64),
        omics_attention=None if omics is None else omics.astype(np.float64),
        omics_gate=None if omics_gate is None else omics_gate.astype(np.float64),
        pathways=pathways,
        single_map=single,
    )


def top_slots(n_slots: int, gate: np.ndarray | None, max_slots: int) -> list[int]:
    """The slots worth showing, most gated first: the kept ones (gate > 0) when any, at most
    ``max_slots``; without a gate, the first ``max_slots`` slots."""
    if gate is None:
        return list(range(min(max_slots, n_slots)))
    gate = np.nan_to_num(np.asarray(gate, dtype=float), nan=0.0)
    order = [int(i) for i in np.argsort(-gate, kind="stable")]
    kept = [i for i in order if gate[i] > 0]
    return (kept or order)[:max_slots]


def top_pathways(
    attention: np.ndarray,
    gate: np.ndarray | None,
    pathways: Sequence[str],
    *,
    max_slots: int = 2,
    top: int = 5,
) -> list[tuple[int, float | None, list[tuple[str, float]]]]:
    """For the most gated omics slots: (slot, gate, [(pathway, weight), ...] highest first).

    Weights are the slot's attention over pathways (a row sums to 1).
    """
    attention = np.asarray(attention, dtype=float)
    out = []
    for slot in top_slots(attention.shape[0], gate, max_slots):
        row = np.nan_to_num(attention[slot], nan=0.0)
        best = np.argsort(-row, kind="stable")[:top]
        names = [pathways[i] if i < len(pathways) else f"pathway {i}" for i in best]
        out.append(
            (
                slot,
                None if gate is None else float(gate[slot]),
                [(n, float(row[i])) for n, i in zip(names, best, strict=True)],
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Geometry: level-0 px -> canvas px
# ---------------------------------------------------------------------------------------------


def thumbnail_scale(
    thumbnail_wh: tuple[int, int],
    *,
    level0_wh: Sequence[float] | None = None,
    slide_mpp: float | None = None,
    thumbnail_mpp: float | None = None,
) -> tuple[tuple[float, float], str | None]:
    """Thumbnail px per level-0 px along (x, y), and a warning when the sources disagree.

    The exact scale is thumbnail size / level-0 size (it also holds for a thumbnail that was
    resized after it was written); without the level-0 size it is slide_mpp / thumbnail_mpp
    (thumbnail px = level-0 px x slide_mpp / thumbnail_mpp). Raises ValueError when neither is
    known.
    """
    w, h = thumbnail_wh
    by_mpp = None
    if slide_mpp and thumbnail_mpp and slide_mpp > 0 and thumbnail_mpp > 0:
        by_mpp = float(slide_mpp) / float(thumbnail_mpp)
    if level0_wh is not None and len(level0_wh) == 2 and min(level0_wh) > 0:
        scale = (w / float(level0_wh[0]), h / float(level0_wh[1]))
        warning = None
        if by_mpp is not None and abs(scale[0] / by_mpp - 1.0) > SCALE_TOLERANCE:
            warning = (
                f"thumbnail size {w}x{h} px for a {level0_wh[0]}x{level0_wh[1]} px slide gives "
                f"{scale[0]:.5g} px per level-0 px, but slide/thumbnail µm/px "
                f"{slide_mpp}/{thumbnail_mpp} give {by_mpp:.5g}: drawn by size"
            )
        return scale, warning
    if by_mpp is None:
        raise ValueError(
            "thumbnail scale unknown: need the slide's level-0 size or both the slide and "
            f"thumbnail µm/px (got slide_mpp={slide_mpp}, thumbnail_mpp={thumbnail_mpp})"
        )
    return (by_mpp, by_mpp), None


def infer_patch_px_level0(coords: np.ndarray) -> int | None:
    """The grid step of ``coords`` (smallest positive gap between patch corners along x or y).

    Equals the patch size for a grid without overlap; used only when the tiles store, which
    records the true size, is not available. None for fewer than two distinct positions.
    """
    coords = np.asarray(coords)
    steps = []
    for axis in (0, 1):
        values = np.unique(coords[:, axis]) if coords.size else np.zeros(0)
        gaps = np.diff(values)
        gaps = gaps[gaps > 0]
        if gaps.size:
            steps.append(int(gaps.min()))
    return min(steps) if steps else None


@dataclass(frozen=True)
class Canvas:
    """An RGB image that level-0 patches are drawn on: canvas px = (level-0 px - origin) * scale."""

    image: np.ndarray  # uint8 (H, W, 3)
    scale: tuple[float, float]  # canvas px per level-0 px along x, y
    origin: tuple[float, float] = (0.0, 0.0)  # level-0 x, y of the canvas's top-left corner
    kind: str = "thumbnail"  # "thumbnail" (the slide) or "blank" (no tissue image)

    @property
    def shape_hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def crop(
        self,
        box_level0: tuple[float, float, float, float],
        max_w: int,
        max_h: int,
        max_upscale: float = 4.0,
    ) -> Canvas:
        """The part of the canvas inside a level-0 box, resized to fit ``max_w`` x ``max_h`` px.

        Small crops (a biopsy on a 8 µm/px thumbnail) are enlarged, at most ``max_upscale``
        times, so patch squares stay visible on the page.
        """
        sx, sy = self.scale
        ox, oy = self.origin
        h, w = self.shape_hw
        x0 = int(np.clip(math.floor((box_level0[0] - ox) * sx), 0, w - 1))
        y0 = int(np.clip(math.floor((box_level0[1] - oy) * sy), 0, h - 1))
        x1 = int(np.clip(math.ceil((box_level0[2] - ox) * sx), x0 + 1, w))
        y1 = int(np.clip(math.ceil((box_level0[3] - oy) * sy), y0 + 1, h))
        part = self.image[y0:y1, x0:x1]
        cw, ch = x1 - x0, y1 - y0
        factor = min(max_w / cw, max_h / ch, max_upscale)
        out_w, out_h = max(1, round(cw * factor)), max(1, round(ch * factor))
        if (out_w, out_h) != (cw, ch):
            part = np.asarray(
                Image.fromarray(part).resize((out_w, out_h), Image.Resampling.LANCZOS)
            )
        return Canvas(
            image=np.ascontiguousarray(part),
            scale=(sx * out_w / cw, sy * out_h / ch),
            origin=(ox + x0 / sx, oy + y0 / sy),
            kind=self.kind,
        )


def blank_canvas(
    coords: np.ndarray, patch_px_level0: float, max_side_px: int = 480, margin_patches: float = 0.5
) -> Canvas:
    """A white canvas covering the patches (plus a margin), for slides without a thumbnail."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    size = float(patch_px_level0)
    margin = margin_patches * size
    if coords.size:
        x0, y0 = coords.min(axis=0) - margin
        x1, y1 = coords.max(axis=0) + size + margin
    else:
        x0, y0, x1, y1 = 0.0, 0.0, size, size
    extent = max(x1 - x0, y1 - y0, 1.0)
    scale = max_side_px / extent
    w = max(1, math.ceil((x1 - x0) * scale))
    h = max(1, math.ceil((y1 - y0) * scale))
    return Canvas(np.full((h, w, 3), 255, np.uint8), (scale, scale), (x0, y0), kind="blank")


def patch_boxes(canvas: Canvas, coords: np.ndarray, patch_px_level0: float) -> np.ndarray:
    """Each patch's square on the canvas as int (N, 4) x0, y0, x1, y1 (end exclusive), clipped.

    Edges are rounded to the nearest canvas px, so patches that touch at level 0 touch on the
    canvas without gaps or double-covered rows; every patch keeps at least one px. A patch
    outside the canvas gets an empty box.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    sx, sy = canvas.scale
    ox, oy = canvas.origin
    h, w = canvas.shape_hw
    x0 = np.round((coords[:, 0] - ox) * sx)
    y0 = np.round((coords[:, 1] - oy) * sy)
    x1 = np.maximum(np.round((coords[:, 0] + patch_px_level0 - ox) * sx), x0 + 1)
    y1 = np.maximum(np.round((coords[:, 1] + patch_px_level0 - oy) * sy), y0 + 1)
    boxes = np.stack([x0, y0, x1, y1], axis=1)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
    return boxes.astype(np.int64)


def attention_raster(
    shape_hw: tuple[int, int], boxes: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """float (H, W): each patch's value over its box, NaN where no patch lies.

    Where patches overlap (tiling with overlap), the larger value wins, so a hot patch is never
    hidden under a cold neighbour.
    """
    out = np.full(shape_hw, np.nan, dtype=np.float64)
    values = np.asarray(values, dtype=float)
    for i in np.argsort(values, kind="stable"):  # ascending: the last write is the maximum
        if not np.isfinite(values[i]):
            continue
        x0, y0, x1, y1 = boxes[i]
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = values[i]
    return out


def colour_limits(
    values: np.ndarray, percentiles: tuple[float, float] = CLIP_PERCENTILES
) -> tuple[float, float]:
    """(vmin, vmax) for one panel: the given percentiles of its finite values.

    Falls back to min/max when the percentiles coincide (e.g. one patch holds all attention),
    and to a band of +-50% around the value when every value is the same (uniform attention
    then sits mid-scale at 1).
    """
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        pad = abs(lo) * 0.5 or 1e-9
        lo, hi = lo - pad, hi + pad
    return lo, hi


def blend(
    image: np.ndarray,
    raster: np.ndarray,
    limits: tuple[float, float],
    *,
    cmap: str = DEFAULT_CMAP,
    alpha: float | tuple[float, float] = DEFAULT_ALPHA,
) -> np.ndarray:
    """``image`` with the raster's colours laid over it where the raster is finite; elsewhere the
    image is returned unchanged (uint8 RGB).

    ``alpha`` is the opacity of the colours: one value for all, or (low, high) rising with the
    value from vmin to vmax.
    """
    import matplotlib

    covered = np.isfinite(raster)
    out = np.array(image[..., :3], dtype=np.uint8, copy=True)
    if not covered.any():
        return out
    lo, hi = limits
    norm = np.clip((raster[covered] - lo) / (hi - lo), 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](norm)[:, :3] * 255.0
    if isinstance(alpha, tuple):
        opacity = (alpha[0] + (alpha[1] - alpha[0]) * norm)[:, None]
    else:
        opacity = np.full((norm.size, 1), float(alpha))
    mixed = out[covered].astype(np.float64) * (1.0 - opacity) + colours * opacity
    out[covered] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def draw_overlay(
    canvas: Canvas,
    coords: np.ndarray,
    values: np.ndarray,
    patch_px_level0: float,
    *,
    limits: tuple[float, float] | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float | tuple[float, float] = DEFAULT_ALPHA,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The canvas with every patch drawn as its square in the colour of its value.

    Returns (uint8 RGB image of the canvas's size, the (vmin, vmax) used; percentile-clipped
    per call unless ``limits`` is given).
    """
    values = np.asarray(values, dtype=float)
    limits = limits or colour_limits(values)
    boxes = patch_boxes(canvas, coords, patch_px_level0)
    raster = attention_raster(canvas.shape_hw, boxes, values)
    return blend(canvas.image, raster, limits, cmap=cmap, alpha=alpha), limits


def patches_box(
    coords: np.ndarray, patch_px_level0: float, margin_patches: float = 1.0
) -> tuple[float, float, float, float]:
    """Level-0 box around all patches plus a margin: what a panel is cropped to."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    margin = margin_patches * patch_px_level0
    x0, y0 = coords.min(axis=0) - margin
    x1, y1 = coords.max(axis=0) + patch_px_level0 + margin
    return float(x0), float(y0), float(x1), float(y1)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One rendered (slide, slot) panel and the facts its caption needs."""

    figure: Figure
    limits: tuple[float, float]
    n_patches: int
    clipped_high: int  # patches above vmax (drawn in the top colour)


def render_panel(
    canvas: Canvas,
    coords: np.ndarray,
    values: np.ndarray,
    patch_px_level0: float,
    *,
    max_px: tuple[int, int] = (480, 480),
    value_label: str = VALUE_LABEL,
    percentiles: tuple[float, float] = CLIP_PERCENTILES,
    cmap: str = DEFAULT_CMAP,
    alpha: float | tuple[float, float] = DEFAULT_ALPHA,
) -> Panel:
    """A figure of the canvas cropped to the patches, the overlay drawn 1:1 in screen px, and a
    colour bar of the panel's own (percentile-clipped) range on the right."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=float)
    limits = colour_limits(values, percentiles)
    if len(values):
        canvas = canvas.crop(patches_box(coords, patch_px_level0), *max_px)
    image, _ = draw_overlay(
        canvas, coords, values, patch_px_level0, limits=limits, cmap=cmap, alpha=alpha
    )
    h, w = image.shape[:2]
    fig_w, fig_h = w + COLOURBAR_PX, max(h, _MIN_PANEL_PX)
    fig = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI)
    # Axes placed in exact px so the image is shown 1:1 (no resampling blur of the squares).
    ax = fig.add_axes((0.0, (fig_h - h) / fig_h, w / fig_w, h / fig_h))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    bar_h = max(60, min(h, fig_h) - 16)
    cax = fig.add_axes(((w + 8) / fig_w, (fig_h - 8 - bar_h) / fig_h, 12 / fig_w, bar_h / fig_h))
    finite = values[np.isfinite(values)]
    below, above = bool((finite < limits[0]).any()), bool((finite > limits[1]).any())
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
        (below, above), "both"
    )
    bar = fig.colorbar(ScalarMappable(norm=Normalize(*limits), cmap=cmap), cax=cax, extend=extend)
    bar.ax.tick_params(labelsize=7, length=2, pad=1)
    bar.set_label(value_label, fontsize=7, labelpad=2)
    return Panel(fig, limits, int(len(values)), int((finite > limits[1]).sum()))


def figure_image(fig: Figure) -> Image.Image:
    """Render a figure to an RGB image (no file, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    agg = FigureCanvasAgg(fig)
    agg.draw()
    return Image.fromarray(np.asarray(agg.buffer_rgba())[..., :3].copy())


def image_bytes(image: Image.Image, fmt: str = "png", quality: int = 85) -> bytes:
    """PNG (lossless, for plots) or JPEG (``quality``, for tissue images) bytes of an image."""
    buf = io.BytesIO()
    if fmt.lower() in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    elif fmt.lower() == "png":
        image.save(buf, format="PNG", optimize=True)
    else:
        raise ValueError(f"image format {fmt!r}: expected png or jpeg")
    return buf.getvalue()


def save_figure(
    fig: Figure, path: str | os.PathLike[str], fmt: str | None = None, quality: int = 85
) -> Path:
    """Write a figure atomically; the format is ``fmt`` or the path's suffix (png, jpg/jpeg)."""
    path = Path(path)
    data = image_bytes(figure_image(fig), fmt or path.suffix.lstrip(".") or "png", quality)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def slide_panels(
    record: AttentionRecord,
    slide_index: int,
    canvas: Canvas | None,
    patch_px_level0: float | None,
    *,
    max_slots: int = 2,
    max_px: tuple[int, int] = (480, 480),
    **style: Any,
) -> list[tuple[int | None, float | None, Panel]]:
    """(slot, gate, panel) for the most gated WSI slots on one of the patient's slides.

    Values are weight x N (N = the patient's patch count). Without a canvas the patches are drawn
    on a blank one; without ``patch_px_level0`` the grid step stands in for the patch size.
    Raises ValueError when the record has no patch coordinates or no WSI attention.
    """
    if record.coords is None or record.patch_slide is None or record.wsi_attention is None:
        raise ValueError(f"{record.path}: no patch coordinates or WSI attention to draw")
    rows = record.patch_slide == slide_index
    coords = record.coords[rows]
    size = patch_px_level0 or infer_patch_px_level0(coords) or 1
    if canvas is None:
        canvas = blank_canvas(coords, size, max_side_px=max(max_px))
    n_total = record.wsi_attention.shape[1]
    slots = (
        [0]
        if record.single_map
        else top_slots(record.wsi_attention.shape[0], record.wsi_gate, max_slots)
    )
    out = []
    for slot in slots:
        values = record.wsi_attention[slot, rows] * n_total
        panel = render_panel(canvas, coords, values, size, max_px=max_px, **style)
        gate = None if record.wsi_gate is None else float(record.wsi_gate[slot])
        out.append((None if record.single_map else slot, gate, panel))
    return out
