"""The ``builtin`` encoder: a weights-free, CPU-fast H&E patch descriptor (64 numbers per patch).

Why it exists: hospitals often cannot download gated foundation-model weights onto compute
nodes, and demo/test runs need features without any weights at all. This descriptor needs only
numpy, OpenCV and scikit-image's stain matrix (no torch import), is deterministic, and
summarises what a pathologist's eye picks up first: how much haematoxylin / eosin there is
(Ruifrok & Johnston colour deconvolution), how many nuclei per mm² and how large, texture at
three scales, and colour moments.

Speed: each patch goes through a short chain of OpenCV kernels while it sits in the CPU cache.
Whole-batch numpy expressions were measured ~15x slower here because every step streams the
full (B, H, W, 3) float array through memory. Stain, colour and nuclear statistics are computed
on the patch area-downsampled to about 1 µm/px (2x for the usual 0.5 µm/px input): nuclei of
5-10 µm stay several pixels wide, means and percentiles barely move, and the same tissue read at
0.25 or 0.5 µm/px gives comparable counts per mm². Grey-level texture keeps the full resolution
as its finest scale.

Physical quantities use the µm/px of the patch pixels that the caller passes (``mpp``): density
is per mm² of patch and nuclear areas are in µm², so they do not depend on patch size in pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.color import hed_from_rgb

# Order and meaning of the 64 output columns (units in the names; "od" = optical density).
FEATURE_NAMES: tuple[str, ...] = (
    *(
        f"{stain}_od_{stat}"
        for stain in ("h", "e", "dab")
        for stat in ("mean", "std", "p10", "p50", "p90")
    ),
    "h_over_e_ratio",
    "od_total_mean",
    "od_total_std",
    "tissue_fraction",
    "h_positive_fraction",
    "e_positive_fraction",
    "dab_positive_fraction",
    *(f"{ch}_{stat}" for ch in ("red", "green", "blue") for stat in ("mean", "std", "skew")),
    "saturation_mean",
    "saturation_std",
    "value_mean",
    "value_std",
    "nuclei_count",
    "nuclei_per_mm2",
    "nucleus_area_um2_mean",
    "nucleus_area_um2_std",
    "nucleus_area_um2_p90",
    "nuclear_area_fraction_of_tissue",
    "nucleus_extent_mean",
    "nucleus_elongation_mean",
    "nucleus_h_od_mean",
    *(f"laplacian_abs_mean_x{s}" for s in (1, 2, 4)),
    *(f"gradient_mean_x{s}" for s in (1, 2, 4)),
    "gradient_std_x1",
    *(
        f"glcm_{stat}_d{d}"
        for d in (1, 4)
        for stat in ("contrast", "homogeneity", "energy", "correlation")
    ),
    "grey_mean",
    "grey_std",
    "grey_entropy_bits",
    "blue_ratio_mean",
    "dark_fraction",
)
N_FEATURES = len(FEATURE_NAMES)

# Optical density of each 8-bit value: OD = -log10((v + 1) / 256), so white glass is ~0.
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
# cv2.transform applies dst = M @ src per pixel: rows of M map RGB OD to H, E, DAB amounts.
_HED_FROM_OD = np.ascontiguousarray(np.asarray(hed_from_rgb).T, dtype=np.float32)
_TISSUE_OD = 0.12  # summed RGB OD above this = tissue (glass with JPEG noise stays below ~0.05)
_POSITIVE_OD = (0.15, 0.15, 0.10)  # per-stain thresholds for the "positive fraction" columns
_NUCLEUS_H_OD_MIN = 0.18  # floor for the per-patch Otsu threshold on the H channel
_NUCLEUS_AREA_UM2 = (6.0, 400.0)  # plausible nuclear areas; smaller blobs are noise
_HIST_BINS = 128
_WORK_MPP = 1.0  # µm/px of the image the stain and nuclear statistics are computed on
_HIST_MAX = (1.0, 1.0, 0.5)  # H, E, DAB amount range for the percentile histograms
_GLCM_LEVELS = 8  # grey levels of the co-occurrence matrix (values >> 5)
_GLCM_I, _GLCM_J = np.meshgrid(np.arange(_GLCM_LEVELS), np.arange(_GLCM_LEVELS), indexing="ij")
_MORPH_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_SUM3 = np.ones((1, 3), np.float32)


def describe(patches: np.ndarray, mpp: float) -> np.ndarray:
    """64 descriptor values per patch: float32 ``(B, 64)`` in the order of ``FEATURE_NAMES``.

    ``patches``: uint8 RGB ``(B, H, W, 3)`` with H, W >= 16. ``mpp``: µm/px of those pixels,
    used for nuclear areas (µm²) and density (per mm²). Raises ValueError on a wrong shape,
    dtype or mpp.
    """
    patches = np.asarray(patches)
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(
            f"builtin encoder: expected uint8 RGB patches (B, H, W, 3), got {patches.dtype} "
            f"{patches.shape}"
        )
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"builtin encoder: mpp must be a positive µm/px, got {mpp}")
    if patches.shape[0] and min(patches.shape[1:3]) < 16:
        raise ValueError(f"builtin encoder: patches of {patches.shape[1:3]} px are too small")
    out = np.zeros((patches.shape[0], N_FEATURES), np.float32)
    for i in range(patches.shape[0]):
        out[i] = _describe_one(np.ascontiguousarray(patches[i]), float(mpp))
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class BuiltinDescriptor:
    """Callable form of :func:`describe` used by the extractor (picklable for worker processes)."""

    embed_dim = N_FEATURES
    feature_names = FEATURE_NAMES

    def __call__(self, patches: np.ndarray, mpp: float) -> np.ndarray:
        return describe(patches, mpp)


def _describe_one(rgb: np.ndarray, mpp: float) -> list[float]:
    h, w = rgb.shape[:2]
    # Stain and nuclear statistics at ~_WORK_MPP whatever the input µm/px, so that nuclei
    # (5-10 µm) are seen at the same physical scale and counts per mm² agree across inputs.
    factor = max(1, min(int(round(_WORK_MPP / mpp)), min(h, w) // 16))
    if factor > 1:
        small = cv2.resize(rgb, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    else:
        small = rgb
    small_mpp = mpp * w / small.shape[1]
    n_small = small.shape[0] * small.shape[1]

    od = cv2.LUT(small, _OD_LUT)
    od_total = cv2.transform(od, _SUM3)
    tissue = (od_total > _TISSUE_OD).astype(np.uint8)
    n_tissue = cv2.countNonZero(tissue)
    hed = cv2.transform(od, _HED_FROM_OD)
    np.maximum(hed, 0.0, out=hed)

    feats: list[float] = []
    if n_tissue:
        mean, std = (v.ravel() for v in cv2.meanStdDev(hed, mask=tissue))
        od_mean, od_std = (float(v.ravel()[0]) for v in cv2.meanStdDev(od_total, mask=tissue))
    else:
        mean = std = np.zeros(3)
        od_mean = od_std = 0.0
    for c in range(3):
        feats += [mean[c], std[c], *_hist_percentiles(hed, c, tissue, n_tissue)]
    feats += [mean[0] / (mean[1] + 0.05), od_mean, od_std, n_tissue / n_small]
    for c in range(3):
        positive = cv2.countNonZero(((hed[..., c] > _POSITIVE_OD[c]) & (tissue > 0)).view(np.uint8))
        feats.append(positive / max(n_tissue, 1))

    # Colour moments over the whole (downsampled) patch on a 0..1 scale.
    sf = small.astype(np.float32) * np.float32(1.0 / 255.0)
    cmean, cstd = (v.ravel() for v in cv2.meanStdDev(sf))
    cen = sf - cmean.astype(np.float32)
    cskew = np.asarray(cv2.mean(cen * cen * cen)[:3]) / np.maximum(cstd, 1e-3) ** 3
    for c in range(3):
        feats += [cmean[c], cstd[c], cskew[c]]
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hsv_mean, hsv_std = (v.ravel() / 255.0 for v in cv2.meanStdDev(hsv))
    feats += [hsv_mean[1], hsv_std[1], hsv_mean[2], hsv_std[2]]

    feats += _nuclei(hed, tissue, n_tissue, small_mpp)

    # Grey-level texture: full resolution, then 2x and 4x coarser.
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    lap_means, grad_means = [], []
    g = grey
    for scale in (1, 2, 4):
        if scale > 1:
            g = cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_AREA)
        lap = cv2.Laplacian(g, cv2.CV_16S, ksize=1)
        lap_means.append(cv2.norm(lap, cv2.NORM_L1) / (lap.size * 255.0))
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=1)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=1)
        gm_mean, gm_std = (
            float(v.ravel()[0]) / 510.0 for v in cv2.meanStdDev(cv2.magnitude(gx, gy))
        )
        grad_means.append(gm_mean)
        if scale == 1:
            grad_std = gm_std
    feats += lap_means + grad_means + [grad_std]
    q = grey >> 5
    for d in (1, 4):
        feats += _glcm(q, d)
    g_mean, g_std = (float(v.ravel()[0]) / 255.0 for v in cv2.meanStdDev(grey))
    hist = cv2.calcHist([grey], [0], None, [32], [0, 256]).ravel()
    p = hist[hist > 0] / grey.size
    entropy = float(-(p * np.log2(p)).sum())
    r, g_, b = cv2.split(sf)
    rg = 1.0 + r + g_
    blue_ratio = (100.0 * b / rg) * (256.0 / (rg + b))
    dark = (grey.size - cv2.countNonZero((grey >= 100).view(np.uint8))) / grey.size
    feats += [g_mean, g_std, entropy, cv2.mean(blue_ratio)[0] / 100.0, dark]
    return feats


def _hist_percentiles(hed: np.ndarray, c: int, tissue: np.ndarray, n_tissue: int) -> list[float]:
    """10th, 50th, 90th percentile of stain ``c`` over tissue, from a 128-bin histogram
    (resolution 1/128 of the range: far below stain noise, and one C call instead of a sort)."""
    if not n_tissue:
        return [0.0, 0.0, 0.0]
    top = _HIST_MAX[c]
    hist = cv2.calcHist([hed], [c], tissue, [_HIST_BINS], [0.0, top]).ravel()
    # Values above the range fall outside calcHist's bins; count them in the last bin.
    hist[-1] += n_tissue - hist.sum()
    cum = np.cumsum(hist)
    idx = np.searchsorted(cum, np.array([0.1, 0.5, 0.9]) * n_tissue)
    return list((np.minimum(idx, _HIST_BINS - 1) + 0.5) * (top / _HIST_BINS))


def _nuclei(hed: np.ndarray, tissue: np.ndarray, n_tissue: int, mpp: float) -> list[float]:
    """Nine nuclear statistics from the H channel: Otsu threshold (with a floor), opening,
    connected components filtered by plausible nuclear area."""
    h, w = tissue.shape
    px_um2 = mpp * mpp
    min_px = max(2, int(round(_NUCLEUS_AREA_UM2[0] / px_um2)))
    max_px = int(round(_NUCLEUS_AREA_UM2[1] / px_um2))
    if n_tissue < min_px:
        return [0.0] * 9
    scale = 255.0 / _HIST_MAX[0]
    hema = hed[..., 0]
    h8 = cv2.convertScaleAbs(hema, alpha=scale)
    otsu, _ = cv2.threshold(h8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(otsu), _NUCLEUS_H_OD_MIN * scale)
    binary = cv2.bitwise_and((h8 > thr).view(np.uint8), tissue)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _MORPH_KERNEL)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero((areas >= min_px) & (areas <= max_px))
    if keep.size == 0:
        return [0.0] * 9
    a = areas[keep].astype(np.float64)
    bw = stats[1:, cv2.CC_STAT_WIDTH][keep].astype(np.float64)
    bh = stats[1:, cv2.CC_STAT_HEIGHT][keep].astype(np.float64)
    lut = np.zeros(len(areas) + 1, np.uint8)
    lut[keep + 1] = 1
    kept_mask = lut[labels]
    a_um2 = a * px_um2
    area_mm2 = h * w * px_um2 * 1e-6
    return [
        float(keep.size),
        keep.size / area_mm2,
        float(a_um2.mean()),
        float(a_um2.std()),
        float(np.percentile(a_um2, 90)),
        float(a.sum()) / n_tissue,
        float((a / (bw * bh)).mean()),
        float((np.maximum(bw, bh) / np.minimum(bw, bh)).mean()),
        float(cv2.mean(hema, mask=kept_mask)[0]),
    ]


def _glcm(q: np.ndarray, d: int) -> list[float]:
    """Contrast, homogeneity, energy (ASM) and correlation of the symmetric grey-level
    co-occurrence matrix at distance ``d`` px, horizontal and vertical offsets pooled."""
    lv = _GLCM_LEVELS
    glcm = np.zeros((lv * lv,), np.float64)
    for a, b in ((q[:, :-d], q[:, d:]), (q[:-d, :], q[d:, :])):
        pair = (a << 3) | b  # a * 8 + b in one uint8
        glcm += cv2.calcHist(
            [np.ascontiguousarray(pair)], [0], None, [lv * lv], [0, lv * lv]
        ).ravel()
    m = glcm.reshape(lv, lv)
    m = m + m.T
    m /= max(m.sum(), 1.0)
    i, j = _GLCM_I, _GLCM_J
    contrast = float((m * (i - j) ** 2).sum())
    homogeneity = float((m / (1.0 + np.abs(i - j))).sum())
    energy = float((m * m).sum())
    mu = float((m * i).sum())
    var = float((m * (i - mu) ** 2).sum())
    corr = float((m * (i - mu) * (j - mu)).sum() / var) if var > 1e-9 else 1.0
    return [contrast, homogeneity, energy, corr]
