"""Survival models (torch modules only): SlotSPE and its single-modality baselines.

``build_model(name, ...)`` is the only way in; callers ask ``model.modalities`` which inputs to
load and never branch on the name. ``model.config.to_dict()`` is what a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from slotspe_pipe.model.base import ModelBatch, ModelOutput, SurvivalModel
from slotspe_pipe.model.baselines import ABMILSurvival, SNNSurvival
from slotspe_pipe.model.config import ABMILConfig, SlotSPEConfig, SNNConfig
from slotspe_pipe.model.losses import (
    cox_partial_likelihood_loss,
    nll_survival_loss,
    survival_from_logits,
)
from slotspe_pipe.model.slotspe import SlotSPE

MODEL_NAMES = ("slotspe", "snn", "abmil")

CONFIG_CLASSES: dict[str, type[SlotSPEConfig] | type[SNNConfig] | type[ABMILConfig]] = {
    "slotspe": SlotSPEConfig,
    "snn": SNNConfig,
    "abmil": ABMILConfig,
}

__all__ = [
    "ABMILConfig",
    "ABMILSurvival",
    "CONFIG_CLASSES",
    "MODEL_NAMES",
    "ModelBatch",
    "ModelOutput",
    "SNNConfig",
    "SNNSurvival",
    "SlotSPE",
    "SlotSPEConfig",
    "SurvivalModel",
    "build_model",
    "cox_partial_likelihood_loss",
    "make_config",
    "nll_survival_loss",
    "survival_from_logits",
]


def _with_fixed(config: dict[str, Any], key: str, value: int, name: str) -> dict[str, Any]:
    """Set ``key`` from a build_model argument; a conflicting config entry is an error."""
    if key in config and config[key] != value:
        raise ValueError(
            f"build_model({name!r}): config[{key!r}]={config[key]!r} contradicts the "
            f"{key}={value} given by the data"
        )
    return {**config, key: value}


def make_config(
    name: str,
    *,
    wsi_dim: int | None = None,
    n_bins: int,
    config: dict[str, Any] | None = None,
) -> SlotSPEConfig | SNNConfig | ABMILConfig:
    """The model's config: defaults, then ``config`` overrides, then the data-given sizes.

    Raises ``ValueError`` for an unknown model name or config key (naming it).
    """
    if name not in CONFIG_CLASSES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    cls = CONFIG_CLASSES[name]
    values = _with_fixed(dict(config or {}), "n_bins", int(n_bins), name)
    if name in ("slotspe", "abmil"):
        if wsi_dim is None:
            raise ValueError(f"build_model({name!r}) needs wsi_dim (patch feature width)")
        values = _with_fixed(values, "wsi_dim", int(wsi_dim), name)
    return cls.from_dict(values)


def build_model(
    name: str,
    *,
    wsi_dim: int | None,
    pathways: Sequence[np.ndarray] | None,
    n_genes: int | None,
    n_bins: int,
    config: dict[str, Any] | None = None,
) -> SurvivalModel:
    """Build a fresh model.

    name: one of ``MODEL_NAMES``. wsi_dim: patch feature width (slotspe, abmil).
    pathways: per pathway, the column indices into the G genes (slotspe). n_genes: G (slotspe,
    snn). n_bins: number of time bins C. config: overrides of the model's config defaults.
    Raises ``ValueError`` for unknown names/keys or a missing input the model needs.
    """
    cfg = make_config(name, wsi_dim=wsi_dim, n_bins=n_bins, config=config)
    builders: dict[str, Callable[[], SurvivalModel]] = {
        "slotspe": lambda: SlotSPE(
            cfg, _need(pathways, "pathways", name), _need_genes(n_genes, name)
        ),
        "snn": lambda: SNNSurvival(cfg, _need_genes(n_genes, name)),
        "abmil": lambda: ABMILSurvival(cfg),
    }
    return builders[name]()


def _need(value: Any, what: str, name: str) -> Any:
    if value is None:
        raise ValueError(f"build_model({name!r}) needs {what}")
    return value


def _need_genes(n_genes: int | None, name: str) -> int:
    n = _need(n_genes, "n_genes (number of genes in the omics store)", name)
    if int(n) < 1:
        raise ValueError(f"build_model({name!r}): n_genes must be >= 1, got {n}")
    return int(n)
