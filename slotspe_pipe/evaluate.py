"""Survival metrics per fold and pooled, Kaplan-Meier plots, and interpretability outputs.

Metrics come from scikit-survival (Harrell's and Uno's C-index, integrated Brier score,
cumulative/dynamic AUC) and lifelines (Kaplan-Meier, log-rank). The one thing done here by hand
is turning a model's output into survival probabilities S(t) at the exact times the metrics are
evaluated at (``SurvivalCurves.at``): the reference code scored Brier/AUC with survival values
taken at the bin indices rather than at the evaluation times.

Discrete-time models (SlotSPE, SNN, ABMIL) give S at each bin's upper edge,
S(edge_{j+1}) = prod_{i <= j} (1 - h_i). Between edges S is interpolated linearly (a bin's deaths
spread over the bin; S(0) = 1), and the open last bin is taken to end at the training fold's
longest follow-up. The step reading (S drops only when a bin has ended) is available as
``interpolation="step"``; it predicts S = 1 for every time in the first bin, which makes every
early death a maximal Brier error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slotspe_pipe.store.atomic import atomic_path

log = logging.getLogger(__name__)

DEFAULT_EVAL_QUANTILES = (0.1, 0.9)  # evaluation times span these quantiles of val follow-up
DEFAULT_EVAL_POINTS = 20


# ----------------------------------------------------------------------------------------------
# Survival curves at arbitrary times
# ----------------------------------------------------------------------------------------------


INTERPOLATIONS = ("linear", "step")


@dataclass(frozen=True)
class SurvivalCurves:
    """Per-patient survival functions S(t) sharing knots (times in months).

    ``knots`` (K,) strictly increasing; ``values`` (n, K) = S at each knot.
    - "step": right-continuous steps, S(t) = values[:, j] for knots[j] <= t < knots[j + 1] and
      1 before knots[0] (a Breslow/Kaplan-Meier style curve).
    - "linear": S interpolated linearly between knots, from S(0) = 1 to the first knot; after
      the last knot S stays at its last value.
    """

    knots: np.ndarray
    values: np.ndarray
    interpolation: str = "step"

    def __post_init__(self) -> None:
        knots = np.asarray(self.knots, dtype=float)
        values = np.asarray(self.values, dtype=float)
        if knots.ndim != 1 or values.ndim != 2 or values.shape[1] != knots.shape[0]:
            raise ValueError(
                f"SurvivalCurves: values {values.shape} must be (n, len(knots)={knots.shape[0]})"
            )
        if knots.size and not np.all(np.diff(knots) > 0):
            raise ValueError("SurvivalCurves: knots must be strictly increasing")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"SurvivalCurves: interpolation must be one of {INTERPOLATIONS}")
        if self.interpolation == "linear" and knots.size and knots[0] <= 0:
            raise ValueError("SurvivalCurves: linear curves start at S(0) = 1; knots must be > 0")
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def at(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """S at ``times`` (T,) for every patient -> (n, T)."""
        times = np.asarray(times, dtype=float).reshape(-1)
        padded = np.concatenate([np.ones((len(self), 1)), self.values], axis=1)
        if self.interpolation == "step":
            idx = np.searchsorted(self.knots, times, side="right") - 1
            return padded[:, idx + 1]
        grid = np.concatenate([[0.0], self.knots])
        t = np.clip(times, 0.0, grid[-1])
        right = np.clip(np.searchsorted(grid, t, side="right"), 1, grid.size - 1)
        left = right - 1
        span = grid[right] - grid[left]
        w = np.where(span > 0, (t - grid[left]) / np.where(span > 0, span, 1.0), 0.0)
        return padded[:, left] * (1.0 - w) + padded[:, right] * w

    def subset(self, rows: np.ndarray) -> SurvivalCurves:
        return SurvivalCurves(self.knots, self.values[rows], self.interpolation)

    @classmethod
    def from_discrete(
        cls,
        hazards: np.ndarray,
        edges: np.ndarray,
        *,
        last_edge: float | None = None,
        interpolation: str = "linear",
    ) -> SurvivalCurves:
        """Curves of a discrete-time model: hazards (n, C) over bins with ``edges`` (C + 1,).

        The model gives S at each bin's upper edge: S(edges[j + 1]) = prod_{i <= j} (1 - h_i).
        An infinite last edge is replaced by ``last_edge`` (the training fold's longest
        follow-up: the last bin's hazard is spread up to it) or dropped when None. Between edges
        S is linear ("linear", default: a bin's deaths are spread over the bin) or drops at the
        upper edge ("step": no death is credited before its bin has ended).
        """
        hazards = np.asarray(hazards, dtype=float)
        edges = np.asarray(edges, dtype=float)
        if hazards.ndim != 2 or edges.shape != (hazards.shape[1] + 1,):
            raise ValueError(
                f"hazards {hazards.shape} need edges of length C + 1, got {edges.shape}"
            )
        upper = edges[1:].copy()
        if last_edge is not None and not np.isfinite(upper[-1]):
            upper[-1] = max(float(last_edge), float(edges[-2]) + 1e-6)
        finite = np.isfinite(upper)
        survival = np.cumprod(1.0 - hazards, axis=1)
        return cls(upper[finite], survival[:, finite], interpolation)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _surv(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(time, dtype=float))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index (higher risk = earlier event); NaN when no pair is comparable."""
    from sksurv.metrics import concordance_index_censored

    event = np.asarray(event).astype(bool)
    if not event.any():
        return math.nan
    try:
        return float(
            concordance_index_censored(event, np.asarray(time, float), np.asarray(risk, float))[0]
        )
    except (ValueError, ZeroDivisionError) as exc:
        log.warning("Harrell's C-index undefined: %s", exc)
        return math.nan


def censoring_horizon(train_time: np.ndarray, train_event: np.ndarray) -> float:
    """Last time at which the training fold's censoring survival G(t) is still > 0.

    IPCW metrics divide by G; beyond this time they are undefined, so validation follow-up is
    truncated here (administrative censoring) before computing them.
    """
    from sksurv.nonparametric import CensoringDistributionEstimator

    cens = CensoringDistributionEstimator().fit(_surv(train_event, train_time))
    positive = cens.unique_time_[cens.prob_ > 0]
    return float(positive[-1]) if positive.size else float(np.max(train_time))


def truncate_follow_up(
    time: np.ndarray, event: np.ndarray, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up beyond ``horizon`` becomes censored at ``horizon``."""
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    beyond = time > horizon
    return np.where(beyond, horizon, time), event & ~beyond


def evaluation_times(
    val_time: np.ndarray,
    val_event: np.ndarray,
    horizon: float,
    quantiles: tuple[float, float] = DEFAULT_EVAL_QUANTILES,
    n_points: int = DEFAULT_EVAL_POINTS,
) -> np.ndarray:
    """Unique sorted times (months) for Brier score and time-dependent AUC.

    Evenly spaced quantiles of the validation follow-up between ``quantiles``, kept inside
    [first validation event, max validation time) - before the first event the AUC has no case,
    and scikit-survival needs times below the last follow-up - and below the training censoring
    horizon. May be empty for tiny folds.
    """
    val_time = np.asarray(val_time, float)
    val_event = np.asarray(val_event).astype(bool)
    if val_time.size < 2 or not val_event.any():
        return np.zeros(0)
    grid = np.quantile(val_time, np.linspace(quantiles[0], quantiles[1], n_points))
    grid = np.unique(grid)
    first_event = val_time[val_event].min()
    keep = (grid >= first_event) & (grid < val_time.max()) & (grid < horizon)
    return grid[keep]


def survival_metrics(
    train_time: np.ndarray,
    train_event: np.ndarray,
    val_time: np.ndarray,
    val_event: np.ndarray,
    risk: np.ndarray,
    curves: SurvivalCurves | None,
    n_points: int = DEFAULT_EVAL_POINTS,
) -> dict[str, Any]:
    """All validation metrics of one fold.

    - c_index: Harrell's, on the full validation follow-up.
    - c_index_ipcw: Uno's, censoring weights from the TRAINING fold, tau = last evaluation time.
    - ibs: integrated Brier score of ``curves`` at ``eval_times`` (S taken at exactly those times).
    - ibs_km_reference: the same score for the training fold's Kaplan-Meier curve given to every
      patient (a model without information scores about this; lower IBS is better).
    - auc_mean / auc: cumulative-dynamic AUC with 1 - S(t) as the time-dependent risk, at the same
      times.
    A metric that cannot be computed (no events, too few distinct times) is NaN with a warning.
    """
    from sksurv.metrics import (
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )

    val_time = np.asarray(val_time, float)
    val_event = np.asarray(val_event).astype(bool)
    risk = np.asarray(risk, float)
    out: dict[str, Any] = {
        "n_val": int(val_time.size),
        "events_val": int(val_event.sum()),
        "c_index": harrell_c(val_time, val_event, risk),
        "c_index_ipcw": math.nan,
        "ibs": math.nan,
        "auc_mean": math.nan,
        "eval_times": [],
        "auc": [],
    }
    if not val_event.any():
        log.warning("validation fold has no events: IPCW metrics undefined")
        return out
    horizon = censoring_horizon(train_time, train_event)
    t_val, e_val = truncate_follow_up(val_time, val_event, horizon)
    y_train = _surv(train_event, train_time)
    y_val = _surv(e_val, t_val)
    times = evaluation_times(t_val, e_val, horizon, n_points=n_points)
    out["censoring_horizon"] = horizon
    out["eval_times"] = times.tolist()
    if times.size == 0 or not e_val.any():
        log.warning("no usable evaluation times inside the validation follow-up")
        return out
    try:
        out["c_index_ipcw"] = float(
            concordance_index_ipcw(y_train, y_val, risk, tau=float(times[-1]))[0]
        )
    except (ValueError, ZeroDivisionError) as exc:
        log.warning("Uno's C-index undefined: %s", exc)
    out["ibs_km_reference"] = _km_reference_ibs(train_time, train_event, y_train, y_val, times)
    if curves is not None:
        surv_at = curves.at(times)
        try:
            out["ibs"] = float(integrated_brier_score(y_train, y_val, surv_at, times))
        except ValueError as exc:
            log.warning("integrated Brier score undefined: %s", exc)
        try:
            auc, mean_auc = cumulative_dynamic_auc(y_train, y_val, 1.0 - surv_at, times)
            out["auc"] = [float(a) for a in auc]
            out["auc_mean"] = float(mean_auc)
        except ValueError as exc:
            log.warning("time-dependent AUC undefined: %s", exc)
    return out


def _km_reference_ibs(
    train_time: np.ndarray,
    train_event: np.ndarray,
    y_train: np.ndarray,
    y_val: np.ndarray,
    times: np.ndarray,
) -> float:
    from sksurv.metrics import integrated_brier_score
    from sksurv.nonparametric import kaplan_meier_estimator

    knots, surv = kaplan_meier_estimator(
        np.asarray(train_event).astype(bool), np.asarray(train_time, float)
    )
    km = SurvivalCurves(knots, np.broadcast_to(surv, (len(y_val), surv.size)))
    try:
        return float(integrated_brier_score(y_train, y_val, km.at(times), times))
    except ValueError as exc:
        log.warning("reference integrated Brier score undefined: %s", exc)
        return math.nan


# ----------------------------------------------------------------------------------------------
# Kaplan-Meier
# ----------------------------------------------------------------------------------------------


def risk_groups(risk: np.ndarray, threshold: float) -> np.ndarray:
    """True = high risk (risk above the threshold, which comes from the TRAINING fold)."""
    return np.asarray(risk, float) > threshold


def logrank_p(time: np.ndarray, event: np.ndarray, high: np.ndarray) -> float:
    """Log-rank p-value between the high and low groups (NaN when a group is empty)."""
    from lifelines.statistics import logrank_test

    high = np.asarray(high, bool)
    if high.all() or not high.any():
        return math.nan
    res = logrank_test(
        time[high], time[~high], event_observed_A=event[high], event_observed_B=event[~high]
    )
    return float(res.p_value)


def plot_km(
    path: str | os.PathLike[str],
    time: np.ndarray,
    event: np.ndarray,
    high: np.ndarray,
    title: str,
) -> float:
    """Kaplan-Meier curves of the low/high risk groups with the log-rank p-value -> PNG.

    Returns the p-value. Time axis in months.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    time = np.asarray(time, float)
    event = np.asarray(event).astype(int)
    high = np.asarray(high, bool)
    p = logrank_p(time, event, high)
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for label, rows, color in (("low risk", ~high, "tab:blue"), ("high risk", high, "tab:red")):
        if rows.any():
            kmf = KaplanMeierFitter(label=f"{label} (n={int(rows.sum())})")
            kmf.fit(time[rows], event[rows])
            kmf.plot_survival_function(ax=ax, ci_show=True, color=color, show_censors=True)
    ax.set_xlabel("time (months)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    p_text = "n/a" if math.isnan(p) else f"{p:.2g}"
    ax.set_title(f"{title}\nlog-rank p = {p_text}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return p


# ----------------------------------------------------------------------------------------------
# Interpretability outputs
# ----------------------------------------------------------------------------------------------


def write_attention_record(
    path: str | os.PathLike[str],
    *,
    case_id: str,
    arrays: Mapping[str, np.ndarray],
    slide_ids: Sequence[str] = (),
    pathways: Sequence[str] = (),
) -> None:
    """One patient's interpretability maps as .npz (atomic).

    Typical keys: ``coords`` int32 (N, 2) level-0 top-left of each patch, ``patch_slide`` int32
    (N,) index into ``slide_ids``, ``wsi_slot_attention`` (S, N), ``wsi_gate``/``omics_gate``
    (S,), ``omics_slot_attention`` (S, P) whose columns are ``pathways``.
    """
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["case_id"] = np.asarray(case_id)
    payload["slide_ids"] = np.asarray(list(slide_ids), dtype=str)
    payload["pathways"] = np.asarray(list(pathways), dtype=str)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **payload)


def plot_slot_attention(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    patch_slide: np.ndarray,
    slide_ids: Sequence[str],
    slot_attention: np.ndarray,
    gate: np.ndarray | None,
    title: str,
    max_slots: int = 2,
    patch_px_level0: int | None = None,
) -> None:
    """Attention of the most gated slots as patch squares on a blank background -> PNG.

    One panel per (slide, slot), each with its own percentile-clipped colour scale (values are
    weight x N patches, 1 = uniform). This is the trainer's quick look and the fallback when no
    tissue thumbnail exists; the report draws the same squares over the slide's thumbnail
    (``attention_overlay``). Squares are ``patch_px_level0`` level-0 px, or the grid step of
    ``coords`` when not given (the patch size for tiling without overlap).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from slotspe_pipe import attention_overlay as ov

    coords = np.asarray(coords).reshape(-1, 2)
    patch_slide = np.asarray(patch_slide).reshape(-1)
    slot_attention = np.atleast_2d(np.asarray(slot_attention, dtype=float))
    order = ov.top_slots(slot_attention.shape[0], gate, max_slots)
    slides = [int(s) for s in np.unique(patch_slide)] or [0]
    n_total = slot_attention.shape[1]
    fig = Figure(figsize=(3.4 * len(order), 3.2 * len(slides)), dpi=100)
    axes = fig.subplots(len(slides), len(order), squeeze=False)
    for r, s in enumerate(slides):
        rows = patch_slide == s
        size = patch_px_level0 or ov.infer_patch_px_level0(coords[rows]) or 1
        canvas = ov.blank_canvas(coords[rows], size, max_side_px=300)
        name = slide_ids[s] if 0 <= s < len(slide_ids) else ""
        for c, slot in enumerate(order):
            ax = axes[r, c]
            values = slot_attention[slot, rows] * n_total
            image, limits = ov.draw_overlay(canvas, coords[rows], values, size, alpha=1.0)
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            mappable = ScalarMappable(norm=Normalize(*limits), cmap=ov.DEFAULT_CMAP)
            bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            g = f", gate {gate[slot]:.2f}" if gate is not None else ""
            ax.set_title(f"{name[:23]}\nslot {slot}{g}", fontsize=7)
    fig.suptitle(f"{title}\n(colours: {ov.VALUE_LABEL}, 1st-99th percentile per panel)", fontsize=8)
    fig.tight_layout()
    ov.save_figure(fig, path, "png")


# ----------------------------------------------------------------------------------------------
# Pooling folds into a run summary
# ----------------------------------------------------------------------------------------------


def _finite_stats(values: Sequence[float]) -> tuple[float, float, int]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=0)), int(arr.size)


def summarize_folds(
    fold_metrics: Sequence[Mapping[str, Any]],
    predictions: pd.DataFrame,
) -> dict[str, Any]:
    """Mean/std over folds of every scalar fold metric, plus pooled Harrell's C.

    ``fold_metrics``: each fold's metrics (``c_index`` etc.). ``predictions``: concatenated
    validation predictions with columns fold, time, event, risk (and risk_missing_omics). The
    pooled C-index compares patients across folds, whose models differ; it is reported beside,
    never instead of, the mean over folds. std is the population std over folds (ddof 0).
    """
    out: dict[str, Any] = {"n_folds": len(fold_metrics)}
    keys = (
        "c_index",
        "c_index_ipcw",
        "ibs",
        "ibs_km_reference",
        "auc_mean",
        "c_index_best_epoch_selected_on_val",
        "c_index_missing_omics",
        "c_index_ipcw_missing_omics",
        "ibs_missing_omics",
        "km_logrank_p",
    )
    for key in keys:
        values = [m.get(key) for m in fold_metrics if key in m]
        if not values:
            continue
        mean, std, n = _finite_stats(values)
        out[f"{key}_mean"] = mean
        out[f"{key}_std"] = std
        if n != len(values):
            out[f"{key}_n_defined"] = n
    if len(predictions):
        out["c_index_pooled"] = harrell_c(
            predictions.time.to_numpy(), predictions.event.to_numpy(), predictions.risk.to_numpy()
        )
        if "risk_missing_omics" in predictions and predictions.risk_missing_omics.notna().all():
            out["c_index_missing_omics_pooled"] = harrell_c(
                predictions.time.to_numpy(),
                predictions.event.to_numpy(),
                predictions.risk_missing_omics.to_numpy(),
            )
    return out


def json_clean(value: Any) -> Any:
    """NaN/inf -> None recursively, numpy scalars -> Python (strict JSON for summary files)."""
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
