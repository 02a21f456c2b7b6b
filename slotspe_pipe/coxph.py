"""Classical baseline: a penalised Cox model on pathway scores, fitted per training fold.

A patient's pathway score is the mean of the per-gene z-scores of the pathway's genes, with the
z-score statistics of the training fold only (``omics.fit_normalizer``); scores are then scaled by
their training-fold std so one penalty suits every pathway. The model is scikit-survival's
elastic-net Cox (``CoxnetSurvivalAnalysis``, ridge-leaning by default) whose penalty strength is
chosen by an inner cross-validation on the training fold alone (Harrell's C on the inner
validation parts), so the outer validation fold never informs any choice. Its survival function
is scored by the same evaluation code as the neural models.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slotspe_pipe.evaluate import SurvivalCurves

log = logging.getLogger(__name__)

FEATURE_KINDS = ("pathways", "genes")


@dataclass(frozen=True)
class CoxConfig:
    """Hyperparameters of the Cox baseline.

    features: "pathways" (mean z-score per pathway) or "genes" (every z-scored gene).
    l1_ratio: elastic-net mix (scikit-survival needs > 0; small = close to ridge).
    n_alphas, alpha_min_ratio: the penalty path searched by the inner CV.
    inner_folds: folds of the inner CV on the training fold (stratified on the event).
    """

    features: str = "pathways"
    l1_ratio: float = 0.1
    n_alphas: int = 30
    alpha_min_ratio: float = 0.01
    inner_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.features not in FEATURE_KINDS:
            raise ValueError(
                f"CoxConfig.features: expected one of {FEATURE_KINDS}, got {self.features!r}"
            )
        if not 0.0 < float(self.l1_ratio) <= 1.0:
            raise ValueError(f"CoxConfig.l1_ratio: expected in (0, 1], got {self.l1_ratio}")
        if int(self.n_alphas) < 1 or int(self.inner_folds) < 2:
            raise ValueError("CoxConfig: n_alphas must be >= 1 and inner_folds >= 2")
        if not 0.0 < float(self.alpha_min_ratio) < 1.0:
            raise ValueError(
                f"CoxConfig.alpha_min_ratio: expected in (0, 1), got {self.alpha_min_ratio}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CoxConfig:
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"CoxConfig: unknown config key(s) {unknown}; expected a subset of {sorted(names)}"
            )
        return cls(**values)


def pathway_scores(z_expression: np.ndarray, membership: Sequence[np.ndarray]) -> np.ndarray:
    """(patients, P): mean of the z-scored genes of each pathway."""
    z = np.asarray(z_expression, dtype=np.float64)
    return np.stack([z[:, np.asarray(m)].mean(axis=1) for m in membership], axis=1)


@dataclass
class CoxFit:
    """A fitted fold: the model, the chosen penalty and the feature scaling (training fold)."""

    model: Any
    alpha: float
    feature_scale: np.ndarray
    inner_c_index: float

    def features(self, raw: np.ndarray) -> np.ndarray:
        return raw / self.feature_scale

    def risk(self, raw: np.ndarray) -> np.ndarray:
        """Linear predictor (higher = higher risk)."""
        return np.asarray(self.model.predict(self.features(raw), alpha=self.alpha), dtype=float)

    def curves(self, raw: np.ndarray) -> SurvivalCurves:
        """Breslow survival functions, as step curves over the training event times."""
        fns = self.model.predict_survival_function(self.features(raw), alpha=self.alpha)
        knots = np.asarray(fns[0].x, dtype=float)
        return SurvivalCurves(knots, np.stack([fn.y for fn in fns]))


def cox_features(
    z_expression: np.ndarray, membership: Sequence[np.ndarray], config: CoxConfig
) -> np.ndarray:
    """The model's input: pathway scores or the z-scored genes themselves."""
    if config.features == "pathways":
        return pathway_scores(z_expression, membership)
    return np.asarray(z_expression, dtype=np.float64)


def fit_cox(x_train: np.ndarray, time: np.ndarray, event: np.ndarray, config: CoxConfig) -> CoxFit:
    """Fit the penalised Cox model on the training fold, penalty by inner CV (training only).

    Raises ``ValueError`` when the training fold has no events. With too few events for an
    inner CV, a fixed strong penalty is used and logged.
    """
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    event = np.asarray(event).astype(bool)
    time = np.asarray(time, dtype=float)
    if not event.any():
        raise ValueError("training fold has no events: a Cox model cannot be fitted")
    scale = x_train.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    x = x_train / scale
    y = Surv.from_arrays(event, time)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on the weakest penalties
        path = CoxnetSurvivalAnalysis(
            l1_ratio=config.l1_ratio,
            n_alphas=config.n_alphas,
            alpha_min_ratio=config.alpha_min_ratio,
        ).fit(x, y)
        alphas = np.asarray(path.alphas_)
        n_splits = min(config.inner_folds, int(event.sum()), int((~event).sum()))
        if n_splits < 2:
            # Too few events (or censored patients) to cross-validate the penalty: fall back to
            # a strong, fixed one (a quarter of the way down the path) rather than refuse.
            best = alphas.size // 4
            mean = np.full(alphas.size, np.nan)
            log.warning(
                "cox: %d events / %d censored in the training fold are too few for an inner "
                "CV; using the fixed penalty alpha %.4g",
                int(event.sum()),
                int((~event).sum()),
                alphas[best],
            )
        else:
            splitter = StratifiedKFold(n_splits, shuffle=True, random_state=config.seed)
            scores = np.zeros((n_splits, alphas.size))
            for i, (tr, va) in enumerate(splitter.split(x, event)):
                inner = CoxnetSurvivalAnalysis(l1_ratio=config.l1_ratio, alphas=alphas).fit(
                    x[tr], y[tr]
                )
                for j, a in enumerate(alphas):
                    if not event[va].any():
                        scores[i, j] = np.nan
                        continue
                    pred = inner.predict(x[va], alpha=a)
                    scores[i, j] = concordance_index_censored(event[va], time[va], pred)[0]
            mean = np.nanmean(scores, axis=0)
            best = int(np.nanargmax(mean))
        model = CoxnetSurvivalAnalysis(
            l1_ratio=config.l1_ratio, alphas=[alphas[best]], fit_baseline_model=True
        ).fit(x, y)
    log.info(
        "cox: %d features, alpha %.4g chosen by %d-fold inner CV (inner C %.3f)",
        x.shape[1],
        alphas[best],
        n_splits,
        mean[best],
    )
    return CoxFit(
        model=model, alpha=float(alphas[best]), feature_scale=scale, inner_c_index=float(mean[best])
    )
