"""`slotspe-pipe cv`: cross-validated training and evaluation of a survival model.

Per fold: the model is trained on the training patients (time bins and gene normalisation fitted
on them alone), evaluated at the FIXED LAST EPOCH on the validation patients (the headline; the
best epoch is reported only labelled as selected on validation), and everything is written under
``RUN_DIR/fold_K/``. ``--fold K`` runs one fold (one Snakemake job per fold); ``--aggregate`` pools
finished folds into ``RUN_DIR/summary.json``; plain ``cv`` does both.

Training: Adam/AdamW with a per-step cosine schedule down to ``min_lr``, patch sampling per patient
per epoch read lazily from the feature stores, mixed precision on CUDA, checkpoints after every
epoch (an interrupted fold resumes from its last epoch), seeds for every random draw.

RUN_DIR layout (several ``--seed`` values: one such directory per seed under RUN_DIR/seed_S, and
a RUN_DIR/summary.json pooling all folds x seeds):
- summary.json: model, config, seeds, c_index_mean/std (fixed last epoch), c_index_pooled,
  c_index_ipcw/ibs/auc means, the best-epoch figure labelled ``..._selected_on_val``, ``folds``;
- predictions.csv: fold, seed, case_id, time, event, risk, high_risk, split, hazards
  [, risk_missing_omics]; km.png: pooled validation Kaplan-Meier by training-median risk;
- fold_K/: checkpoint.pt (weights, configs, normaliser, time-bin edges; ``load_checkpoint``),
  metrics.json, history.csv (epoch, loss, val_c_index, lr, seconds, samples/s), predictions.csv,
  km.png, attention/{case_id}.npz (+ a few PNGs) for models that expose attention.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slotspe_pipe.calibration import (
    MIN_HOLDOUT_EVENTS,
    HazardCalibration,
    fit_calibration,
    holdout_mask,
    risk_from_hazards,
)
from slotspe_pipe.dataset import (
    OMICS_INPUTS,
    EpochBatchSampler,
    FoldData,
    SurvivalDataset,
    TokenBudgetBatchSampler,
    build_fold_data,
    cohort_patch_counts,
    collate_patients,
)
from slotspe_pipe.evaluate import (
    SurvivalCurves,
    harrell_c,
    json_clean,
    plot_km,
    plot_slot_attention,
    risk_groups,
    summarize_folds,
    survival_metrics,
    write_attention_record,
)
from slotspe_pipe.store.atomic import atomic_path, write_json

log = logging.getLogger(__name__)

CV_MODELS = ("slotspe", "snn", "abmil", "coxph")
OPTIMIZERS = ("adam", "adamw")
TIME_BIN_METHODS = ("quantile", "equal")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


# ----------------------------------------------------------------------------------------------
# Training configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How a neural model is trained (the model's own hyperparameters live in its config).

    lr/min_lr: cosine schedule from lr to min_lr over all steps. patches: patches drawn per
    patient per step (evaluation uses all). n_bins/time_bins: discrete time bins, fitted on the
    training fold. omics_input: "genes" (z-scored genes) or "pathway_scores" (omics-only
    models). grad_clip: max gradient norm, 0 = off. amp: bfloat16 autocast on CUDA; cpu_amp: the
    same on CPU (fast only on CPUs with native bfloat16, e.g. AVX512-BF16/AMX). eval_tokens: padded patches per evaluation
    batch. val_every: epochs between validation C-index computations (the last epoch always).
    cox_weight: weight of the Cox partial-likelihood ranking term on the model's risk score
    (``-sum_t S(t)``) added to the discrete-time NLL; 0 = the NLL alone (the paper's objective).
    calibration_holdout: share of the training fold (stratified by event) held out to recalibrate
    the hazards: a second model trains on the rest, a temperature and per-bin offsets are fitted
    to its held-out predictions and applied to the main model (``calibration.py``); 0 = off.
    It doubles the training cost.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    optimizer: str = "adam"
    patches: int = 4096
    n_bins: int = 4
    time_bins: str = "quantile"
    omics_input: str = "genes"
    grad_clip: float = 0.0
    amp: bool = True
    cpu_amp: bool = False
    eval_tokens: int = 1 << 16
    val_every: int = 1
    cox_weight: float = 0.0
    calibration_holdout: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = type(f.default)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ok = (
                isinstance(value, bool)
                if kind is bool
                else (number and (kind is float or isinstance(value, int)))
                if kind in (int, float)
                else isinstance(value, str)
            )
            if not ok:
                raise ValueError(
                    f"TrainConfig.{f.name}: expected {kind.__name__}, got {value!r} "
                    f"({type(value).__name__})"
                )
            if kind is float:
                object.__setattr__(self, f.name, float(value))
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "min_lr": 0 <= self.min_lr <= self.lr,
            "weight_decay": self.weight_decay >= 0,
            "optimizer": self.optimizer in OPTIMIZERS,
            "patches": self.patches >= 1,
            "n_bins": self.n_bins >= 1,
            "time_bins": self.time_bins in TIME_BIN_METHODS,
            "omics_input": self.omics_input in OMICS_INPUTS,
            "grad_clip": self.grad_clip >= 0,
            "eval_tokens": self.eval_tokens >= 1,
            "val_every": self.val_every >= 1,
            "cox_weight": self.cox_weight >= 0,
            "calibration_holdout": 0 <= self.calibration_holdout <= 0.5,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"TrainConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                f"(optimizer in {OPTIMIZERS}, time_bins in {TIME_BIN_METHODS}, omics_input in "
                f"{OMICS_INPUTS}, min_lr <= lr, counts >= 1, calibration_holdout in [0, 0.5])"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TrainConfig:
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"TrainConfig: unknown key(s) {unknown}; expected a subset of {sorted(fields)}"
            )
        for key, value in values.items():
            default = fields[key].default
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                values[key] = float(value)
        return cls(**values)


# Training recipes per model, as data: the paper's for SlotSPE/ABMIL. The SNN recipe (with the
# ELU block of the MCAT/SurvPath code) was selected on the published TCGA-BLCA 5-fold splits over
# lr, epochs, weight decay, dropout, width, activation, batch size, time bins and gene vs pathway-
# score input; every variant landed within 0.59-0.62 mean C-index, so those choices hardly
# matter. What did matter is the Cox ranking term (cox_weight): on BLCA's published DSS splits
# it lifted the SNN by ~0.03, and on endpoints and folds never used for tuning (BLCA OS, PFI and
# DSS with freshly drawn folds) it helped or was neutral (docs/design-notes.md). The held-out
# recalibration (calibration_holdout) brings its integrated Brier score from worse than the
# Kaplan-Meier curve's back to it; it is cheap for the SNN, so on by default there only.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "slotspe": {},
    "abmil": {},
    "snn": {
        "epochs": 20,
        "lr": 1e-3,
        "min_lr": 1e-6,
        "weight_decay": 1e-2,
        "optimizer": "adamw",
        "batch_size": 32,
        "cox_weight": 1.0,
        "calibration_holdout": 0.2,
    },
    "coxph": {},
}
# Model-config defaults of the harness that differ from the model package's own defaults.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "slotspe": {},
    "abmil": {},
    "snn": {"activation": "elu"},
    "coxph": {},
}


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, fold, epoch...), stable across runs."""
    return int(
        np.random.SeedSequence([int(p) for p in parts])
        .generate_state(2, np.uint32)
        .view(np.uint64)[0]
        >> 1
    )


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return name


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _save_torch(path: Path, payload: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A fold checkpoint, loaded safely (``weights_only=True``: tensors and plain containers)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
# Running a model over a dataset
# ----------------------------------------------------------------------------------------------


def _model_batch(batch: Mapping[str, Any], device: str, *, omics_absent: bool = False) -> Any:
    """Collated batch -> ``ModelBatch`` on ``device`` (patches cast to float32 there).

    ``omics_absent`` marks every patient's RNA as missing (the model must not read it).
    """
    import torch

    from slotspe_pipe.model import ModelBatch

    wsi = batch.get("wsi")
    omics = batch.get("omics")
    present = batch.get("omics_present")
    if omics_absent and present is not None:
        present = torch.zeros_like(present, dtype=torch.bool)
    return ModelBatch(
        wsi=None if wsi is None else wsi.to(device, non_blocking=True).float(),
        wsi_mask=None if wsi is None else batch["wsi_mask"].to(device, non_blocking=True),
        omics=None if omics is None else omics.to(device, non_blocking=True),
        omics_present=None if present is None else present.to(device, non_blocking=True),
    )


class _Autocast:
    """bfloat16 autocast (no loss scaling needed, unlike float16) on CUDA when ``amp``, on CPU
    when ``cpu_amp``; otherwise a no-op."""

    def __init__(self, device: str, amp: bool, cpu_amp: bool = False):
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.enabled = amp if self.device_type == "cuda" else cpu_amp

    def __call__(self) -> Any:
        import contextlib

        import torch

        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)


@dataclass
class Predictions:
    """Model outputs for a dataset, in dataset order: risk (n,), hazards (n, C)."""

    risk: np.ndarray
    hazards: np.ndarray


def inference_settings(cfg: TrainConfig, device: str, workers: int) -> dict[str, Any]:
    """The keyword arguments of ``predict`` that a training run fixes (one place for all calls)."""
    return {
        "device": device,
        "eval_tokens": cfg.eval_tokens,
        "amp": cfg.amp,
        "cpu_amp": cfg.cpu_amp,
        "workers": workers,
    }


def predict(
    model: Any,
    dataset: SurvivalDataset,
    *,
    device: str,
    eval_tokens: int,
    amp: bool = True,
    cpu_amp: bool = False,
    workers: int = 0,
    omics_absent: bool = False,
    on_patient: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> Predictions:
    """Deterministic evaluation (``model.eval()``) with every patch of every patient.

    Patients are grouped by bag size into padded batches of at most ``eval_tokens`` patches.
    ``omics_absent`` marks every patient's RNA as missing (the missing-omics evaluation).
    ``on_patient(index, attention)`` receives each patient's attention maps with padding cut
    off (last axis of patch maps = that patient's patches).
    """
    import torch
    from torch.utils.data import DataLoader

    from slotspe_pipe.model import survival_from_logits

    sizes = [dataset.total_patches(i) for i in range(len(dataset))]
    sampler = TokenBudgetBatchSampler(sizes, eval_tokens)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_patients,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
    )
    autocast = _Autocast(device, amp, cpu_amp)
    n = len(dataset)
    risk = np.zeros(n)
    hazards: np.ndarray | None = None
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            mb = _model_batch(batch, device, omics_absent=omics_absent)
            with autocast():
                out = model(mb)
            h, _, r = survival_from_logits(out.logits.float())
            idx = batch["index"].numpy()
            if hazards is None:
                hazards = np.zeros((n, h.shape[1]))
            hazards[idx] = h.cpu().numpy()
            risk[idx] = r.cpu().numpy()
            if on_patient is not None:
                _emit_attention(out.attention, batch, idx, on_patient)
    model.train(was_training)
    return Predictions(risk=risk, hazards=hazards if hazards is not None else np.zeros((0, 0)))


def _emit_attention(
    attention: Mapping[str, Any],
    batch: Mapping[str, Any],
    idx: np.ndarray,
    on_patient: Callable[[int, dict[str, np.ndarray]], None],
) -> None:
    mask = batch.get("wsi_mask")
    n_pad = None if mask is None else mask.shape[1]
    lengths = None if mask is None else mask.sum(dim=1).numpy()
    maps = {k: v.float().cpu().numpy() for k, v in attention.items()}
    for row, index in enumerate(idx):
        arrays = {}
        for key, value in maps.items():
            a = value[row]
            # Patch-indexed maps end in the padded patch axis; omics maps end in pathways.
            if n_pad is not None and "omics" not in key and a.ndim >= 1 and a.shape[-1] == n_pad:
                a = a[..., : int(lengths[row])]
            arrays[key] = a
        on_patient(int(index), arrays)


# ----------------------------------------------------------------------------------------------
# One fold
# ----------------------------------------------------------------------------------------------


@dataclass
class FoldRun:
    """What a fold run needs besides the data."""

    model_name: str
    model_config: dict[str, Any]
    train_config: TrainConfig
    seed: int
    device: str = "cpu"
    workers: int = 0
    missing_omics: bool = False
    attention_png: int = 4
    write_attention: bool = True
    # Cohort.fingerprint(): a fold is resumed or reused only on the same data.
    data_fingerprint: str = ""
    # A fold directory left by other settings or data: refuse (False) or discard and retrain.
    replace_stale: bool = False

    def run_key(self) -> dict[str, Any]:
        """What must match for a fold directory to be resumed rather than refused."""
        train = self.train_config.to_dict()
        for runtime_only in ("eval_tokens", "val_every"):  # change no weight
            train.pop(runtime_only)
        return {
            "model": self.model_name,
            "model_config": self.model_config,
            "train": train,
            "seed": self.seed,
            "data": self.data_fingerprint,
        }


@dataclass
class FoldOutcome:
    """Validation predictions of a finished model, plus training risks for the KM threshold."""

    val_risk: np.ndarray
    val_curves: SurvivalCurves
    train_risk: np.ndarray
    val_risk_missing_omics: np.ndarray | None
    val_curves_missing_omics: SurvivalCurves | None
    extra_metrics: dict[str, Any]
    resolved_config: dict[str, Any]
    val_hazards: np.ndarray | None = None


def run_fold(
    cohort: Any, fold: int, run: FoldRun, fold_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Train (or resume) and evaluate fold ``fold``; returns its metrics (also in metrics.json).

    A fold whose metrics.json exists for the same run settings and data is not recomputed; a
    fold directory from other settings or data is refused, or with ``run.replace_stale``
    discarded and retrained.
    """
    fold_dir = Path(fold_dir)
    metrics_path = fold_dir / METRICS
    state = _current_checkpoint(fold_dir, run)
    if metrics_path.is_file():
        log.info("fold %d: already evaluated in %s, skipping", fold, fold_dir)
        return json.loads(metrics_path.read_text())
    fold_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if run.model_name == "coxph":
        data = build_fold_data(
            cohort, fold, modalities=frozenset({"omics"}), n_bins=1, omics_input="genes"
        )
        outcome = _coxph_fold(data, run, fold_dir)
    else:
        outcome, data = _torch_fold(cohort, fold, run, fold_dir, state)
    metrics = _evaluate_fold(data, outcome, run, fold_dir)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(metrics_path, json_clean(metrics))
    log.info(
        "fold %d: C-index %.4f (Uno %.4f, IBS %.4f) on %d patients / %d events [last epoch]",
        fold,
        metrics["c_index"],
        metrics["c_index_ipcw"] if metrics["c_index_ipcw"] is not None else math.nan,
        metrics["ibs"] if metrics["ibs"] is not None else math.nan,
        metrics["n_val"],
        metrics["events_val"],
    )
    return json.loads(metrics_path.read_text())


def _current_checkpoint(fold_dir: Path, run: FoldRun) -> dict[str, Any] | None:
    """The fold's checkpoint when it belongs to this run (loaded once, for resuming), else None.

    A fold directory whose metrics or checkpoint came from other settings or data is refused,
    or with ``run.replace_stale`` deleted: mixing them would silently report a model that was
    not trained on what the run says.
    """
    key = json_clean(run.run_key())
    stale = []
    metrics_path, ckpt_path = fold_dir / METRICS, fold_dir / CHECKPOINT
    if metrics_path.is_file() and json.loads(metrics_path.read_text()).get("run_key") != key:
        stale.append(metrics_path)
    state = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if state is not None and state.get("run_key") != key:
        stale.append(ckpt_path)
    if not stale:
        return state
    if not run.replace_stale:
        raise ValueError(
            f"{stale[0]}: this fold was run with different settings or data; write to a new "
            "RUN_DIR, delete the fold directory, or pass --replace-stale"
        )
    log.warning("fold directory %s: from other settings or data, discarding it", fold_dir)
    shutil.rmtree(fold_dir)
    return None


def _coxph_fold(data: FoldData, run: FoldRun, fold_dir: Path) -> FoldOutcome:
    from slotspe_pipe.coxph import CoxConfig, cox_features, fit_cox

    config = CoxConfig.from_dict({"seed": run.seed, **run.model_config})
    x_train = cox_features(data.train.omics, data.membership, config)
    x_val = cox_features(data.val.omics, data.membership, config)
    fit = fit_cox(x_train, data.train.time, data.train.event, config)
    names = data.pathways if config.features == "pathways" else list(data.normalizer.genes or [])
    coef = np.asarray(fit.model.coef_).reshape(-1) / fit.feature_scale
    _write_csv(
        fold_dir / "cox_coefficients.csv",
        pd.DataFrame({"feature": names, "coef_per_unit": coef}).sort_values(
            "coef_per_unit", key=np.abs, ascending=False
        ),
    )
    return FoldOutcome(
        val_risk=fit.risk(x_val),
        val_curves=fit.curves(x_val),
        train_risk=fit.risk(x_train),
        val_risk_missing_omics=None,
        val_curves_missing_omics=None,
        extra_metrics={"alpha": fit.alpha, "inner_cv_c_index": fit.inner_c_index},
        resolved_config=config.to_dict(),
    )


def _build_fold_model(run: FoldRun, data: FoldData) -> Any:
    from slotspe_pipe.model import build_model

    return build_model(
        run.model_name,
        wsi_dim=data.wsi_dim,
        pathways=data.membership or None,
        n_genes=data.omics_width,
        n_bins=len(data.time_bin_edges) - 1,
        config=run.model_config,
    ).to(run.device)


def _calibrated(pred: Predictions, calibration: HazardCalibration) -> Predictions:
    if calibration.is_identity:
        return pred
    hazards = calibration.apply(pred.hazards)
    return Predictions(risk=risk_from_hazards(hazards), hazards=hazards)


CALIBRATION_DIR = "calibration"
_CALIBRATION_SALT = 7919  # seeds the held-out draw and the calibration model apart from the fold's


def _fold_calibration(
    run: FoldRun, data: FoldData, fold: int, fold_dir: Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Fit the hazard calibration of ``calibration.py`` on a held-out share of the TRAINING fold.

    A second model (same configuration, its own seed) trains on the rest of the training fold
    and scores the held-out patients; the map is fitted to those scores: on all inputs, and for
    models reading both modalities also with the RNA withheld (missing-omics predictions are
    calibrated by their own map). The model checkpoint and the fitted maps live in
    ``fold_dir/calibration/`` (resumed and reused like the main model). Returns
    {"all": map, "missing_omics": map or None}.
    """
    out_dir = fold_dir / CALIBRATION_DIR
    maps_path = out_dir / "calibration.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    if maps_path.is_file():
        saved = json.loads(maps_path.read_text())
        return {k: None if v is None else HazardCalibration.from_dict(v) for k, v in saved.items()}
    cfg = run.train_config
    seed = derived_seed(run.seed, fold, _CALIBRATION_SALT)
    held = holdout_mask(data.train.event, cfg.calibration_holdout, seed)
    fit_part, held_part = data.train.subset(~held), data.train.subset(held)
    held_events = int(held_part.event.sum())
    if held_events < MIN_HOLDOUT_EVENTS:
        reason = (
            f"{held_events} deaths among the {len(held_part)} held-out training patients "
            f"(< {MIN_HOLDOUT_EVENTS}): too few to fit a calibration; hazards left as trained"
        )
        log.warning("fold %d: %s", fold, reason)
        skipped = HazardCalibration(details={"skipped": reason})
        write_json(maps_path, {"all": skipped.to_dict(), "missing_omics": None})
        return {"all": skipped, "missing_omics": None}
    seed_everything(seed)
    model = _build_fold_model(run, data)
    inner_run = dataclasses.replace(run, seed=seed)
    fit_ds = SurvivalDataset(fit_part, n_patches=cfg.patches, seed=seed, wsi_scaler=data.wsi_scaler)
    held_ds = SurvivalDataset(held_part, n_patches=None, seed=seed, wsi_scaler=data.wsi_scaler)
    ckpt_path = out_dir / CHECKPOINT
    state = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    log.info(
        "fold %d: calibration model on %d training patients, %d held out (%d deaths)",
        fold,
        len(fit_part),
        len(held_part),
        held_events,
    )
    if state is None or state.get("status") != "complete":
        fit_model(
            model, fit_ds, held_ds, inner_run, {**meta, "role": "calibration"}, ckpt_path, state
        )
    else:
        model.load_state_dict(state["model_state"])
    workers = run.workers if held_ds.records.feature_paths is not None else 0
    predict_held = functools.partial(
        predict, model, held_ds, **inference_settings(cfg, run.device, workers)
    )
    maps: dict[str, Any] = {
        "all": fit_calibration(predict_held().hazards, held_part.bin_index, held_part.event),
        "missing_omics": None,
    }
    if run.missing_omics and model_modalities()[run.model_name] >= {"wsi", "omics"}:
        maps["missing_omics"] = fit_calibration(
            predict_held(omics_absent=True).hazards, held_part.bin_index, held_part.event
        )
    for name, fitted in maps.items():
        if fitted is not None:
            log.info("fold %d: %s hazard calibration %s", fold, name, fitted.to_dict())
    write_json(maps_path, {k: None if v is None else v.to_dict() for k, v in maps.items()})
    return maps


def _torch_fold(
    cohort: Any, fold: int, run: FoldRun, fold_dir: Path, state: dict[str, Any] | None
) -> tuple[FoldOutcome, FoldData]:
    """Train (or resume from ``state``, the fold's current checkpoint) and predict one fold."""
    cfg = run.train_config
    modalities = model_modalities()[run.model_name]
    data = build_fold_data(
        cohort,
        fold,
        modalities=modalities,
        n_bins=cfg.n_bins,
        time_bins=cfg.time_bins,
        omics_input=cfg.omics_input,
        patch_counts=_patch_counts(cohort) if "wsi" in modalities else None,
    )
    fold_seed = derived_seed(run.seed, fold)
    seed_everything(fold_seed)
    model = _build_fold_model(run, data)
    resolved = model.config.to_dict()
    ckpt_path = fold_dir / CHECKPOINT
    train_ds = SurvivalDataset(
        data.train, n_patches=cfg.patches, seed=fold_seed, wsi_scaler=data.wsi_scaler
    )
    val_ds = SurvivalDataset(data.val, n_patches=None, seed=fold_seed, wsi_scaler=data.wsi_scaler)
    meta = {
        "run_key": json_clean(run.run_key()),
        "model_name": run.model_name,
        "model_config": resolved,
        "train_config": cfg.to_dict(),
        "seed": run.seed,
        "fold": fold,
        "normalizer": data.normalizer.to_dict() if data.normalizer is not None else None,
        "wsi_scaler": None
        if data.wsi_scaler is None
        else {"mean": data.wsi_scaler[0].tolist(), "std": data.wsi_scaler[1].tolist()},
        "pathway_score_scale": None
        if data.score_scale is None
        else [float(v) for v in data.score_scale],
        "time_bin_edges": [float(e) for e in data.time_bin_edges],
        "pathways": list(data.pathways),
        "omics_input": data.omics_input,
        "wsi_dim": data.wsi_dim,
    }
    if state is None or state.get("status") != "complete":
        history = fit_model(model, train_ds, val_ds, run, meta, ckpt_path, state)
    else:
        log.info("fold %d: training already complete in %s; evaluating", fold, ckpt_path)
        model.load_state_dict(state["model_state"])
        history = list(state["history"])
    _write_csv(fold_dir / "history.csv", pd.DataFrame(history))

    workers = run.workers if "wsi" in modalities else 0
    attention_dir = fold_dir / "attention"
    png_left = [run.attention_png]

    def on_patient(index: int, arrays: dict[str, np.ndarray]) -> None:
        _write_patient_attention(val_ds, data, index, arrays, attention_dir, png_left)

    want_attention = run.write_attention and _has_attention(model, val_ds, run.device, cfg)
    # Every prediction of this fold uses the same device and inference settings.
    predict_fold = functools.partial(predict, model, **inference_settings(cfg, run.device, workers))
    val_pred = predict_fold(val_ds, on_patient=on_patient if want_attention else None)
    train_eval_ds = SurvivalDataset(
        data.train, n_patches=None, seed=fold_seed, wsi_scaler=data.wsi_scaler
    )
    train_pred = predict_fold(train_eval_ds)
    missing_pred = None
    if run.missing_omics:
        if modalities >= {"wsi", "omics"}:
            missing_pred = predict_fold(val_ds, omics_absent=True)
        else:
            log.warning(
                "--missing-omics applies to models reading WSI and omics; skipped for %s",
                run.model_name,
            )
    extra = _history_metrics(history)
    if cfg.calibration_holdout > 0:
        maps = _fold_calibration(run, data, fold, fold_dir, meta)
        val_pred = _calibrated(val_pred, maps["all"])
        train_pred = _calibrated(train_pred, maps["all"])
        if missing_pred is not None:
            missing_pred = _calibrated(missing_pred, maps["missing_omics"] or maps["all"])
        extra["calibration"] = {k: None if v is None else v.to_dict() for k, v in maps.items()}
    edges = data.time_bin_edges
    last_edge = float(np.max(data.train.time))  # the open last bin ends at the longest follow-up
    return (
        FoldOutcome(
            val_risk=val_pred.risk,
            val_curves=SurvivalCurves.from_discrete(val_pred.hazards, edges, last_edge=last_edge),
            train_risk=train_pred.risk,
            val_risk_missing_omics=None if missing_pred is None else missing_pred.risk,
            val_curves_missing_omics=None
            if missing_pred is None
            else SurvivalCurves.from_discrete(missing_pred.hazards, edges, last_edge=last_edge),
            val_hazards=val_pred.hazards,
            extra_metrics=extra,
            resolved_config=resolved,
        ),
        data,
    )


def model_modalities() -> dict[str, frozenset[str]]:
    """Model name -> the inputs it reads, as the model classes declare them."""
    from slotspe_pipe.model import ABMILSurvival, SlotSPE, SNNSurvival

    return {cls.name: cls.modalities for cls in (SlotSPE, SNNSurvival, ABMILSurvival)}


_PATCH_COUNT_CACHE: dict[str, dict[str, tuple[int, int]]] = {}


def _patch_counts(cohort: Any) -> dict[str, tuple[int, int]]:
    # One pass over the stores' metadata per cohort per process, shared by its folds.
    key = str(cohort.path)
    if key not in _PATCH_COUNT_CACHE:
        _PATCH_COUNT_CACHE[key] = cohort_patch_counts(cohort)
    return _PATCH_COUNT_CACHE[key]


def _has_attention(model: Any, dataset: SurvivalDataset, device: str, cfg: TrainConfig) -> bool:
    """Whether the model returns attention maps (checked on one patient)."""
    import torch

    if len(dataset) == 0:
        return False
    probe = collate_patients([dataset[0]])
    was_training = model.training
    model.eval()
    with torch.inference_mode(), _Autocast(device, cfg.amp, cfg.cpu_amp)():
        out = model(_model_batch(probe, device))
    model.train(was_training)
    return bool(out.attention)


def _write_patient_attention(
    dataset: SurvivalDataset,
    data: FoldData,
    index: int,
    arrays: dict[str, np.ndarray],
    attention_dir: Path,
    png_left: list[int],
) -> None:
    case_id = dataset.records.case_ids[index]
    payload = dict(arrays)
    slide_ids: tuple[str, ...] = ()
    if dataset.records.feature_paths is not None:
        coords, patch_slide, slide_ids = dataset.patch_locations(index)
        payload["coords"] = coords
        payload["patch_slide"] = patch_slide
    write_attention_record(
        attention_dir / f"{case_id}.npz",
        case_id=case_id,
        arrays=payload,
        slide_ids=slide_ids,
        pathways=data.pathways,
    )
    slot_map = arrays.get("wsi_slot_attention")
    if png_left[0] > 0 and slot_map is not None and "coords" in payload:
        png_left[0] -= 1
        plot_slot_attention(
            attention_dir / f"{case_id}.png",
            payload["coords"],
            payload["patch_slide"],
            slide_ids,
            slot_map,
            arrays.get("wsi_gate"),
            f"{case_id}: WSI slot attention (top gated slots)",
        )


def _history_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    scored = [
        h for h in history if h.get("val_c_index") is not None and np.isfinite(h["val_c_index"])
    ]
    out: dict[str, Any] = {"epochs": len(history)}
    if scored:
        best = max(scored, key=lambda h: h["val_c_index"])
        out["c_index_best_epoch_selected_on_val"] = float(best["val_c_index"])
        out["best_epoch_selected_on_val"] = int(best["epoch"])
    if history:
        out["final_train_loss"] = float(history[-1]["loss"])
    return out


def fit_model(
    model: Any,
    train_ds: SurvivalDataset,
    val_ds: SurvivalDataset,
    run: FoldRun,
    meta: dict[str, Any],
    ckpt_path: Path,
    state: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The training loop; resumes from ``state`` (an in-progress checkpoint) when given.

    Every epoch: one pass over shuffled training patients, then (every ``val_every`` epochs and
    at the last) the validation C-index with all patches; a checkpoint of model, optimizer,
    schedule and history is written atomically. Returns the per-epoch history.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from slotspe_pipe.model import cox_partial_likelihood_loss, survival_from_logits

    cfg = run.train_config
    device = run.device
    fold_seed = derived_seed(run.seed, meta["fold"])
    sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, fold_seed)
    workers = run.workers if train_ds.records.feature_paths is not None else 0
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        collate_fn=collate_patients,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=workers > 0,
    )
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(sampler)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps), eta_min=cfg.min_lr
    )
    autocast = _Autocast(device, cfg.amp, cfg.cpu_amp)
    history: list[dict[str, Any]] = []
    start = 0
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        history = list(state["history"])
        start = int(state["epoch"])
        log.info("fold %d: resuming after epoch %d from %s", meta["fold"], start, ckpt_path)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "fold %d: training %s (%.2fM parameters) on %d patients, %d validation, %d epochs x %d steps, device %s",
        meta["fold"],
        run.model_name,
        n_params / 1e6,
        len(train_ds),
        len(val_ds),
        cfg.epochs,
        len(sampler),
        device,
    )
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(derived_seed(run.seed, meta["fold"], epoch))
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum, n_seen, parts_sum = 0.0, 0, {}
        bar = tqdm(
            loader,
            desc=f"fold {meta['fold']} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None,
        )
        for batch in bar:
            mb = _model_batch(batch, device)
            bin_index = batch["bin_index"].to(device)
            event = batch["event"].to(device)
            with autocast():
                out = model(mb)
            out.logits = out.logits.float()
            out.aux_logits = {k: v.float() for k, v in out.aux_logits.items()}
            out.aux = {k: v.float() for k, v in out.aux.items()}
            loss, parts = model.loss(out, bin_index, event)
            if cfg.cox_weight > 0:
                ranking = cfg.cox_weight * cox_partial_likelihood_loss(
                    survival_from_logits(out.logits)[2], batch["time"], event
                )
                loss = loss + ranking
                parts = {**parts, "cox": float(ranking.detach()), "total": float(loss.detach())}
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"fold {meta['fold']} epoch {epoch + 1}: loss is {float(loss)} ({parts}); "
                    "lower the learning rate or check the inputs for NaN"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            b = int(batch["index"].numel())
            loss_sum += float(loss.detach()) * b
            n_seen += b
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * b
            bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}")
        train_seconds = time.perf_counter() - t0
        val_c = math.nan
        last = epoch + 1 == cfg.epochs
        if last or (epoch + 1) % cfg.val_every == 0:
            pred = predict(model, val_ds, **inference_settings(cfg, device, workers))
            val_c = harrell_c(val_ds.records.time, val_ds.records.event, pred.risk)
        row = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, n_seen),
            "val_c_index": val_c,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": round(time.perf_counter() - t0, 3),
            "train_seconds": round(train_seconds, 3),
            "samples_per_s": round(n_seen / max(train_seconds, 1e-9), 2),
            **{f"loss_{k}": v / max(1, n_seen) for k, v in parts_sum.items() if k != "total"},
        }
        history.append(row)
        log.info(
            "fold %d epoch %d/%d: loss %.4f, val C-index %.4f, %.1f s (%.1f patients/s), lr %.2e",
            meta["fold"],
            epoch + 1,
            cfg.epochs,
            row["loss"],
            val_c,
            row["seconds"],
            row["samples_per_s"],
            row["lr"],
        )
        complete = last
        payload = {
            **meta,
            "status": "complete" if complete else "in_progress",
            "epoch": epoch + 1,
            "history": json_clean(history),
            "model_state": model.state_dict(),
        }
        if not complete:  # the finished checkpoint keeps the weights, not the optimizer
            payload["optimizer_state"] = optimizer.state_dict()
            payload["scheduler_state"] = scheduler.state_dict()
        _save_torch(ckpt_path, payload)
        _write_csv(ckpt_path.parent / "history.csv", pd.DataFrame(history))
    return history


# ----------------------------------------------------------------------------------------------
# Fold evaluation and outputs
# ----------------------------------------------------------------------------------------------


def _evaluate_fold(
    data: FoldData, outcome: FoldOutcome, run: FoldRun, fold_dir: Path
) -> dict[str, Any]:
    val, train = data.val, data.train
    metrics: dict[str, Any] = {
        "fold": data.fold,
        "seed": run.seed,
        "model": run.model_name,
        "headline": "fixed last epoch (no model selection on the validation fold)",
        "run_key": json_clean(run.run_key()),
        "model_config": outcome.resolved_config,
        "train_config": run.train_config.to_dict() if run.model_name != "coxph" else None,
        "n_train": len(train),
        "events_train": int(np.sum(train.event)),
        "excluded": data.excluded,
        "time_bin_edges": [float(e) for e in data.time_bin_edges]
        if run.model_name != "coxph"
        else None,
    }
    metrics.update(
        survival_metrics(
            train.time, train.event, val.time, val.event, outcome.val_risk, outcome.val_curves
        )
    )
    threshold = float(np.median(outcome.train_risk))
    high = risk_groups(outcome.val_risk, threshold)
    metrics["km_threshold_train_median_risk"] = threshold
    metrics["km_logrank_p"] = plot_km(
        fold_dir / "km.png",
        val.time,
        val.event,
        high,
        f"{run.model_name} fold {data.fold}: validation, split at training median risk",
    )
    pred = pd.DataFrame(
        {
            "fold": data.fold,
            "seed": run.seed,
            "case_id": list(val.case_ids),
            "time": val.time,
            "event": val.event,
            "risk": outcome.val_risk,
            "high_risk": high.astype(int),
            "split": "val",
        }
    )
    if outcome.val_hazards is not None:
        for j in range(outcome.val_hazards.shape[1]):
            pred[f"hazard_{j}"] = outcome.val_hazards[:, j]
    if outcome.val_risk_missing_omics is not None:
        miss = survival_metrics(
            train.time,
            train.event,
            val.time,
            val.event,
            outcome.val_risk_missing_omics,
            outcome.val_curves_missing_omics,
        )
        for key in ("c_index", "c_index_ipcw", "ibs", "auc_mean"):
            metrics[f"{key}_missing_omics"] = miss[key]
        pred["risk_missing_omics"] = outcome.val_risk_missing_omics
    metrics.update(outcome.extra_metrics)
    _write_csv(fold_dir / "predictions.csv", pred)
    return metrics


# ----------------------------------------------------------------------------------------------
# Aggregation over folds (and seeds)
# ----------------------------------------------------------------------------------------------

FOLD_FIELDS = (
    "fold",
    "seed",
    "c_index",
    "c_index_ipcw",
    "ibs",
    "ibs_km_reference",
    "auc_mean",
    "n_val",
    "events_val",
    "n_train",
    "events_train",
    "km_logrank_p",
    "c_index_best_epoch_selected_on_val",
    "best_epoch_selected_on_val",
    "c_index_missing_omics",
    "c_index_ipcw_missing_omics",
    "ibs_missing_omics",
    "epochs",
    "seconds",
)


def aggregate_run(run_dir: str | os.PathLike[str], n_folds: int) -> dict[str, Any]:
    """Pool ``run_dir/fold_0..n_folds-1`` into summary.json, predictions.csv and km.png.

    Raises ``FileNotFoundError`` naming the folds that have no metrics.json yet.
    """
    run_dir = Path(run_dir)
    missing = [k for k in range(n_folds) if not (run_dir / f"fold_{k}" / METRICS).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: folds {missing} have no {METRICS} yet (run `slotspe-pipe cv ... --fold K` "
            "for each, or plain `cv` for all)"
        )
    fold_metrics = [
        json.loads((run_dir / f"fold_{k}" / METRICS).read_text()) for k in range(n_folds)
    ]
    preds = pd.concat(
        [
            pd.read_csv(run_dir / f"fold_{k}" / "predictions.csv", dtype={"case_id": str})
            for k in range(n_folds)
        ],
        ignore_index=True,
    )
    first = fold_metrics[0]
    keys = {json.dumps(m["run_key"], sort_keys=True) for m in fold_metrics}
    if len(keys) > 1:
        raise ValueError(f"{run_dir}: folds were run with different settings; cannot pool them")
    summary: dict[str, Any] = {
        "model": first["model"],
        "headline": "c_index_mean: Harrell's C-index at the FIXED LAST EPOCH, mean over folds",
        "config": {"model": first["model_config"], "train": first.get("train_config")},
        "seeds": [first["seed"]],
        **summarize_folds(fold_metrics, preds),
        "folds": [{k: m.get(k) for k in FOLD_FIELDS if k in m} for m in fold_metrics],
    }
    summary["km_logrank_p_pooled"] = plot_km(
        run_dir / "km.png",
        preds.time.to_numpy(),
        preds.event.to_numpy(),
        preds.high_risk.to_numpy().astype(bool),
        f"{first['model']}: pooled validation folds (each split at its training median risk)",
    )
    _write_csv(run_dir / "predictions.csv", preds)
    write_json(run_dir / "summary.json", json_clean(summary))
    return summary


def aggregate_seeds(
    run_dir: Path, seed_dirs: Sequence[Path], seeds: Sequence[int]
) -> dict[str, Any]:
    """Pool several seeds' runs: statistics over all (fold, seed) pairs, plus each seed's mean."""
    summaries = [json.loads((d / "summary.json").read_text()) for d in seed_dirs]
    folds = [f for s in summaries for f in s["folds"]]
    fold_metrics = [dict(f) for f in folds]
    preds = pd.concat(
        [pd.read_csv(d / "predictions.csv", dtype={"case_id": str}) for d in seed_dirs],
        ignore_index=True,
    )
    pooled = summarize_folds(fold_metrics, preds.iloc[0:0])
    pooled.pop("n_folds", None)
    summary = {
        "model": summaries[0]["model"],
        "headline": "c_index_mean: Harrell's C-index at the FIXED LAST EPOCH, mean over folds x seeds",
        "config": summaries[0]["config"],
        "seeds": list(seeds),
        "n_folds": summaries[0]["n_folds"],
        **pooled,
        "c_index_pooled_mean_over_seeds": float(
            np.nanmean([x.get("c_index_pooled", np.nan) for x in summaries])
        ),
        "c_index_pooled_per_seed": {
            str(s): x.get("c_index_pooled") for s, x in zip(seeds, summaries, strict=True)
        },
        "c_index_mean_per_seed": {
            str(s): x.get("c_index_mean") for s, x in zip(seeds, summaries, strict=True)
        },
        "folds": folds,
        "seed_dirs": [d.name for d in seed_dirs],
    }
    _write_csv(run_dir / "predictions.csv", preds)
    first_km = seed_dirs[0] / "km.png"
    if first_km.is_file():
        with atomic_path(run_dir / "km.png") as tmp:
            tmp.write_bytes(first_km.read_bytes())
        summary["km_png_from_seed"] = int(seeds[0])
    write_json(run_dir / "summary.json", json_clean(summary))
    return summary


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """A --set value: JSON first (so 3e-05 is a number, which YAML 1.1 reads as text), then
    YAML (bare words, lists), else the text itself."""
    import yaml

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def resolve_configs(
    model: str,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    train_flags: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], TrainConfig]:
    """Model-config overrides and the training config, in increasing precedence: the harness
    defaults for ``model``, ``config_file`` (YAML/JSON; either a flat model config or sections
    ``model:`` and ``train:``), ``--set key=value`` (``train.key=value`` for training keys),
    then explicit training flags (non-None values)."""
    import yaml

    model_cfg: dict[str, Any] = dict(MODEL_DEFAULTS.get(model, {}))
    train_cfg: dict[str, Any] = dict(TRAIN_DEFAULTS.get(model, {}))
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the model config ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{path}: expected a mapping of config keys, got {type(loaded).__name__}"
            )
        if set(loaded) <= {"model", "train"}:
            model_cfg.update(loaded.get("model") or {})
            train_cfg.update(loaded.get("train") or {})
        else:
            model_cfg.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value (train.key=value for training)")
        if key.startswith("train."):
            train_cfg[key[len("train.") :]] = _parse_value(value)
        else:
            model_cfg[key.removeprefix("model.")] = _parse_value(value)
    for key, value in (train_flags or {}).items():
        if value is not None:
            train_cfg[key] = value
    return model_cfg, TrainConfig.from_dict(train_cfg)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "cohort_dir",
        type=Path,
        metavar="COHORT_DIR",
        help="directory written by `slotspe-pipe cohort`",
    )
    parser.add_argument("--model", required=True, choices=CV_MODELS, help="survival model")
    parser.add_argument(
        "-o", "--out", type=Path, required=True, metavar="RUN_DIR", help="run directory"
    )
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[1],
        metavar="S",
        help="seed(s); several -> RUN_DIR/seed_S each (default 1)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--fold", type=int, nargs="+", metavar="K", help="train/evaluate only these folds"
    )
    mode.add_argument(
        "--aggregate", action="store_true", help="only pool finished folds into summary.json"
    )
    parser.add_argument(
        "--missing-omics",
        action="store_true",
        help="also evaluate with every validation patient's RNA withheld",
    )
    t = parser.add_argument_group("training (defaults: the model's recipe)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--min-lr", type=float, help="cosine schedule floor")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--batch-size", type=int, help="patients per step")
    t.add_argument("--patches", type=int, help="patches sampled per patient per step (paper: 4096)")
    t.add_argument("--n-bins", type=int, help="discrete time bins (default 4)")
    t.add_argument(
        "--time-bins", choices=TIME_BIN_METHODS, help="quantile (default) or equal-width bins"
    )
    t.add_argument(
        "--omics-input",
        choices=OMICS_INPUTS,
        help="omics-only models: genes (default) or pathway_scores",
    )
    t.add_argument("--val-every", type=int, help="epochs between validation C-index logs")
    t.add_argument(
        "--cox-weight",
        type=float,
        help="weight of the Cox ranking term added to the NLL (snn default 1, others 0)",
    )
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    t.add_argument(
        "--cpu-amp",
        action="store_true",
        help="bfloat16 autocast on CPU (fast on CPUs with AVX512-BF16/AMX only)",
    )
    m = parser.add_argument_group("model configuration")
    m.add_argument(
        "--model-config",
        type=Path,
        metavar="FILE",
        help="YAML/JSON model config (or model:/train: sections)",
    )
    m.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (train.KEY for training)",
    )
    o = parser.add_argument_group("runtime and outputs")
    o.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers for feature reads (default: min(4, CPUs - 1))",
    )
    o.add_argument(
        "--attention-png", type=int, default=4, help="patients per fold with an attention PNG"
    )
    o.add_argument(
        "--no-attention", action="store_true", help="do not write per-patient attention records"
    )
    o.add_argument(
        "--replace-stale",
        action="store_true",
        help="retrain fold directories left by other settings or cohort data (default: refuse); "
        "the workflow passes it, since Snakemake only reruns a fold when something changed",
    )


def run_cli(args: argparse.Namespace) -> int:
    from slotspe_pipe.cohort import CohortError, load_cohort
    from slotspe_pipe.store.zarr_group import StoreError

    try:
        cohort = load_cohort(args.cohort_dir)
        model_cfg, train_cfg = resolve_configs(
            args.model,
            config_file=args.model_config,
            overrides=args.overrides,
            train_flags={
                "epochs": args.epochs,
                "lr": args.lr,
                "min_lr": args.min_lr,
                "weight_decay": args.weight_decay,
                "optimizer": args.optimizer,
                "batch_size": args.batch_size,
                "patches": args.patches,
                "n_bins": args.n_bins,
                "time_bins": args.time_bins,
                "omics_input": args.omics_input,
                "val_every": args.val_every,
                "cox_weight": args.cox_weight,
                "amp": False if args.no_amp else None,
                "cpu_amp": True if args.cpu_amp else None,
            },
        )
        device = resolve_device(args.device)
        workers = (
            args.workers if args.workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
        )
        summary = run_cv(
            cohort,
            args.out,
            model=args.model,
            model_config=model_cfg,
            train_config=train_cfg,
            seeds=args.seed,
            folds=args.fold,
            aggregate_only=args.aggregate,
            device=device,
            workers=workers,
            missing_omics=args.missing_omics,
            attention_png=args.attention_png,
            write_attention=not args.no_attention,
            replace_stale=args.replace_stale,
        )
    except (CohortError, StoreError, ValueError, FileNotFoundError) as exc:
        print(f"slotspe-pipe cv: error: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print(
            f"{args.model}: C-index {summary['c_index_mean']:.4f} ± {summary['c_index_std']:.4f} "
            f"(fixed last epoch; {len(summary['folds'])} fold runs) -> {args.out / 'summary.json'}"
        )
    return 0


def run_cv(
    cohort: Any,
    run_dir: str | os.PathLike[str],
    *,
    model: str,
    model_config: dict[str, Any],
    train_config: TrainConfig,
    seeds: Sequence[int] = (1,),
    folds: Sequence[int] | None = None,
    aggregate_only: bool = False,
    device: str = "cpu",
    workers: int = 0,
    missing_omics: bool = False,
    attention_png: int = 4,
    write_attention: bool = True,
    replace_stale: bool = False,
) -> dict[str, Any] | None:
    """Run the folds (all, or ``folds``) for each seed, then pool them when all are done.

    Layout: one seed -> RUN_DIR/fold_K; several -> RUN_DIR/seed_S/fold_K plus a pooled
    RUN_DIR/summary.json. Returns the summary, or None when only some folds were run.
    ``replace_stale``: retrain folds left by other settings or data instead of refusing.
    """
    if model not in CV_MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {CV_MODELS}")
    run_dir = Path(run_dir)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    seed_dirs = [run_dir] if len(seeds) == 1 else [run_dir / f"seed_{s}" for s in seeds]
    all_folds = sorted(int(k) for k in cohort.folds.fold.unique())
    if folds is not None:
        unknown = sorted(set(folds) - set(all_folds))
        if unknown:
            raise ValueError(
                f"{cohort.path}: no fold(s) {unknown}; the cohort has folds {all_folds}"
            )
    if all_folds != list(range(len(all_folds))):
        raise ValueError(
            f"{cohort.path}/folds.csv: folds must be numbered 0..K-1, found {all_folds}"
        )
    if not aggregate_only:
        fingerprint = cohort.fingerprint()
        for seed, seed_dir in zip(seeds, seed_dirs, strict=True):
            run = FoldRun(
                model_name=model,
                model_config=dict(model_config),
                train_config=train_config,
                seed=seed,
                device=device,
                workers=workers,
                missing_omics=missing_omics,
                attention_png=attention_png,
                write_attention=write_attention,
                data_fingerprint=fingerprint,
                replace_stale=replace_stale,
            )
            for k in folds if folds is not None else all_folds:
                run_fold(cohort, k, run, seed_dir / f"fold_{k}")
    if folds is not None:
        return None
    summaries = [aggregate_run(d, len(all_folds)) for d in seed_dirs]
    if len(seeds) == 1:
        return summaries[0]
    return aggregate_seeds(run_dir, seed_dirs, seeds)
