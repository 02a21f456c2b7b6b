"""The contract every survival model in the harness follows: batch in, hazard logits out.

The trainer never branches on the model's name: it builds a ``ModelBatch`` with the modalities
the model declares (``SurvivalModel.modalities``), calls ``forward`` and ``loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from slotspe_pipe.model.config import _ConfigBase
from slotspe_pipe.model.losses import nll_survival_loss


@dataclass
class ModelBatch:
    """One padded mini-batch of patients.

    wsi: [B, N, D] float32 patch features, zero-padded to the longest bag.
    wsi_mask: [B, N] bool, True = real patch (None = every patch is real).
    omics: [B, G] float32 normalised expression of the cohort's G genes.
    omics_present: [B] bool, False = the patient has no RNA (None = all present when ``omics`` is
        given, none present otherwise).
    """

    wsi: torch.Tensor | None = None
    wsi_mask: torch.Tensor | None = None
    omics: torch.Tensor | None = None
    omics_present: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        for t in (self.wsi, self.omics):
            if t is not None:
                return int(t.shape[0])
        raise ValueError("ModelBatch: neither wsi nor omics is set")

    def to(self, device: torch.device | str) -> ModelBatch:
        """Copy of the batch on ``device`` (non-blocking where possible)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return ModelBatch(
            move(self.wsi), move(self.wsi_mask), move(self.omics), move(self.omics_present)
        )


@dataclass
class ModelOutput:
    """What a model returns.

    logits: [B, C] hazard logits (hazards = sigmoid(logits)).
    aux: label-free extra loss terms, already scaled by their weights (SlotSPE, training mode:
        "recon_omics", "recon_joint", "recon_wsi"); empty for baselines and in eval mode.
    attention: interpretability maps, detached (see each model's docstring).
    aux_logits: label-dependent auxiliary heads whose survival NLL ``loss`` adds, scaled by the
        model's ``aux_weight`` (SlotSPE, training mode: "aux_wsi", "aux_omics" [B, C]). They
        cannot live in ``aux`` because ``forward`` never sees the labels.
    """

    logits: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)


class SurvivalModel(nn.Module):
    """Base class: a discrete-time survival model with the shared NLL training objective."""

    modalities: ClassVar[frozenset[str]] = frozenset()
    name: ClassVar[str] = "base"
    aux_weight: float = 0.0

    def __init__(self, config: _ConfigBase) -> None:
        super().__init__()
        self.config = config

    def forward(self, batch: ModelBatch) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(
        self, out: ModelOutput, bin_index: torch.Tensor, event: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Main NLL on ``out.logits`` + aux-head NLLs (x aux_weight) + ``out.aux`` terms.

        Returns (total loss tensor, {"nll", each aux term, "total"} as floats for logging).
        ``event`` = 1 observed death, 0 censored; ``bin_index`` in [0, C).
        """
        alpha = float(self.config.alpha)  # type: ignore[attr-defined]
        main = nll_survival_loss(out.logits, bin_index, event, alpha=alpha)
        total = main
        parts: dict[str, float] = {"nll": float(main.detach())}
        for key, logits in out.aux_logits.items():
            term = self.aux_weight * nll_survival_loss(logits, bin_index, event, alpha=alpha)
            total = total + term
            parts[key] = float(term.detach())
        for key, term in out.aux.items():
            total = total + term
            parts[key] = float(term.detach())
        parts["total"] = float(total.detach())
        return total, parts
