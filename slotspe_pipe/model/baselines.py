"""Single-modality baselines run through the same harness as SlotSPE.

- ``SNNSurvival``: omics only. The "SNN" of the SurvPath/MCAT benchmarks: an MLP on the flat
  vector of all the cohort's genes, blocks of Linear -> SELU -> AlphaDropout (Klambauer et al.
  2017; LeCun-normal weights), then a linear hazard head. ``activation="elu"`` gives the
  MCAT/SurvPath code's variant of the block.
- ``ABMILSurvival``: WSI only. Gated-attention MIL (Ilse et al. 2018): patch -> Linear/ReLU/
  Dropout -> gated attention (tanh x sigmoid) -> softmax over the real patches -> weighted sum
  -> linear hazard head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slotspe_pipe.model.base import ModelBatch, ModelOutput, SurvivalModel
from slotspe_pipe.model.config import ABMILConfig, SNNConfig


class SNNSurvival(SurvivalModel):
    """Omics-only self-normalizing network: omics [B, G] -> hazard logits [B, C].

    Every patient in the batch must have RNA (``omics_present`` all True): this model has no
    other input to fall back on, so the caller must leave those patients out.
    """

    modalities = frozenset({"omics"})
    name = "snn"

    def __init__(self, config: SNNConfig, n_genes: int) -> None:
        super().__init__(config)
        self.n_genes = int(n_genes)
        act: type[nn.Module] = nn.SELU if config.activation == "selu" else nn.ELU
        layers: list[nn.Module] = []
        width = self.n_genes
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), act(), nn.AlphaDropout(config.dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.n_bins)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # LeCun normal: keeps SELU activations normalised
                nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)

    def forward(self, batch: ModelBatch) -> ModelOutput:
        if batch.omics is None:
            raise ValueError("SNN needs batch.omics ([B, G] expression); got None")
        if batch.omics_present is not None and not bool(batch.omics_present.all()):
            raise ValueError(
                "SNN: batch.omics_present has patients without RNA; the omics-only model cannot "
                "score them (leave them out of its batches)"
            )
        if batch.omics.ndim != 2 or batch.omics.shape[1] != self.n_genes:
            raise ValueError(
                f"batch.omics: expected [B, {self.n_genes}], got {tuple(batch.omics.shape)}"
            )
        omics = batch.omics.to(self.head.weight.dtype)
        return ModelOutput(logits=self.head(self.body(omics)))


class ABMILSurvival(SurvivalModel):
    """WSI-only gated-attention MIL: patches [B, N, D] (+ mask) -> hazard logits [B, C].

    attention: "patch_attention" [B, N], softmax weights over the real patches (0 on padding).
    """

    modalities = frozenset({"wsi"})
    name = "abmil"

    def __init__(self, config: ABMILConfig) -> None:
        super().__init__(config)
        self.embed = nn.Sequential(
            nn.Linear(config.wsi_dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self.attn_a = nn.Linear(config.hidden, config.attn_dim)
        self.attn_b = nn.Linear(config.hidden, config.attn_dim)
        self.attn_c = nn.Linear(config.attn_dim, 1)
        self.attn_drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.n_bins)

    def forward(self, batch: ModelBatch) -> ModelOutput:
        if batch.wsi is None:
            raise ValueError("ABMIL needs batch.wsi ([B, N, D] patch features); got None")
        wsi = batch.wsi
        if wsi.ndim != 3 or wsi.shape[2] != self.config.wsi_dim:
            raise ValueError(
                f"batch.wsi: expected [B, N, {self.config.wsi_dim}], got {tuple(wsi.shape)}"
            )
        wsi = wsi.to(self.head.weight.dtype)
        mask = batch.wsi_mask
        if mask is not None:
            mask = mask.to(torch.bool)
            if mask.shape != wsi.shape[:2]:
                raise ValueError(
                    f"batch.wsi_mask: expected {tuple(wsi.shape[:2])}, got {tuple(mask.shape)}"
                )
            if not bool(mask.any(dim=1).all()):
                raise ValueError("batch.wsi_mask: every patient needs at least one real patch")
            wsi = torch.where(mask.unsqueeze(-1), wsi, wsi.new_zeros(()))
        h = self.embed(wsi)  # [B, N, hidden]
        gated = torch.tanh(self.attn_a(h)) * torch.sigmoid(self.attn_b(h))
        scores = self.attn_c(self.attn_drop(gated)).squeeze(-1)  # [B, N]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        pooled = torch.bmm(weights.unsqueeze(1), h).squeeze(1)  # [B, hidden]
        return ModelOutput(
            logits=self.head(pooled), attention={"patch_attention": weights.detach()}
        )
