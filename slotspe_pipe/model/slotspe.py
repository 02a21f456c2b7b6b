"""SlotSPE: structural prognostic event modelling of WSI patches and RNA pathway tokens.

Data flow (shapes for B patients, N patches, P pathways, S slots, d width, C bins):
  patches [B, N, D] -> MLP -> tokens [B, N, d] -> WSI slot attention -> slots [B, S, d]
  omics [B, G] -> per-pathway SNNs -> tokens [B, P, d] -> omics slot attention -> [B, S, d]
  each slot set -> gated decoder (aux hazards, kept-slot mask) -> intra-modal block (kept keys)
  both slot sets -> iterative cross-attention -> [B, 2S, d]
  concat(mean inter, mean WSI intra, mean omics intra) -> Linear -> hazard logits [B, C]
Patients without RNA get pathway tokens decoded from the WSI (the "joint" path: the omics slot
attention run on the patch tokens, then per-pathway queries); their omics values are replaced
by zeros before anything reads them, so they cannot influence any output or gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from slotspe_pipe.model.base import ModelBatch, ModelOutput, SurvivalModel
from slotspe_pipe.model.blocks import InterModalBlock, IntraModalBlock, SlotCrossDecoder
from slotspe_pipe.model.config import SlotSPEConfig
from slotspe_pipe.model.gated_decoder import GatedSlotDecoder
from slotspe_pipe.model.losses import row_cosine_similarity
from slotspe_pipe.model.pathway_tokens import GroupedPathwaySNN
from slotspe_pipe.model.slot_attention import MultiHeadSlotAttention


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``weights`` is 1 (0 when there are none)."""
    total = weights.sum()
    return (values * weights).sum() / total.clamp(min=1.0)


class SlotSPE(SurvivalModel):
    """The SlotSPE model (see module docstring). ``forward`` returns ``ModelOutput`` with

    attention: "wsi_slot_attention" [B, S, N] (each slot's weights over patches, last slot
    iteration, head-averaged; 0 on padding), "omics_slot_attention" [B, S, P], "wsi_gate" and
    "omics_gate" [B, S] (the decoders' gates; non-zero exactly on the kept slots).
    In training mode also aux_logits ("aux_wsi", "aux_omics") and aux ("recon_omics",
    "recon_joint", "recon_wsi", each already x recon_weight).
    """

    modalities = frozenset({"wsi", "omics"})
    name = "slotspe"

    def __init__(self, config: SlotSPEConfig, pathways: Sequence[np.ndarray], n_genes: int):
        super().__init__(config)
        c = config
        self.aux_weight = c.aux_weight
        d = c.dim
        self.wsi_proj = nn.Sequential(
            nn.Linear(c.wsi_dim, c.wsi_hidden), nn.ReLU(inplace=True), nn.Linear(c.wsi_hidden, d)
        )
        self.pathway_snn = GroupedPathwaySNN(pathways, n_genes, d, c.snn_dropout)
        n_pathways = self.pathway_snn.n_pathways

        def slot_attention() -> MultiHeadSlotAttention:
            return MultiHeadSlotAttention(
                d,
                c.n_slots,
                c.slot_iters,
                c.slot_heads,
                c.slot_head_dim,
                eps=c.slot_eps,
                eval_init=c.eval_slot_init,
            )

        self.slots_wsi = slot_attention()
        self.slots_omics = slot_attention()
        self.decoder_wsi = GatedSlotDecoder(d, c.n_bins, c.top_k, c.tau)
        self.decoder_omics = GatedSlotDecoder(d, c.n_bins, c.top_k, c.tau)
        self.intra_wsi = IntraModalBlock(d, c.intra_heads, c.mlp_ratio, c.dropout, c.drop_path)
        self.intra_omics = IntraModalBlock(d, c.intra_heads, c.mlp_ratio, c.dropout, c.drop_path)
        self.inter = InterModalBlock(
            d, c.cross_heads, c.cross_iters, c.mlp_ratio, c.dropout, c.drop_path
        )
        self.head = nn.Linear(3 * d, c.n_bins)

        # Reconstruction decoders: (a) omics from kept omics slots, (b) joint: omics from the
        # omics slot attention run on WSI tokens, (c) WSI from kept WSI slots.
        self.recon_omics_queries = nn.Parameter(torch.randn(n_pathways, d))
        self.recon_joint_queries = nn.Parameter(torch.randn(n_pathways, d))
        self.recon_omics = SlotCrossDecoder(d, c.recon_heads)
        self.recon_joint = SlotCrossDecoder(d, c.recon_heads)
        self.recon_wsi = SlotCrossDecoder(d, c.recon_heads)
        # Frozen random linear map patch token -> query: buffers, so no optimizer ever moves it.
        frozen = nn.Linear(d, d)
        self.register_buffer("wsi_query_weight", frozen.weight.detach().clone())
        self.register_buffer("wsi_query_bias", frozen.bias.detach().clone())

    # ------------------------------------------------------------------ inputs
    def _wsi_tokens(self, batch: ModelBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        if batch.wsi is None:
            raise ValueError("SlotSPE needs batch.wsi ([B, N, D] patch features); got None")
        wsi = batch.wsi
        if wsi.ndim != 3 or wsi.shape[2] != self.config.wsi_dim:
            raise ValueError(
                f"batch.wsi: expected [B, N, {self.config.wsi_dim}], got {tuple(wsi.shape)}"
            )
        wsi = wsi.to(self.wsi_proj[0].weight.dtype)  # e.g. float16 straight from the store
        mask = batch.wsi_mask
        if mask is not None:
            mask = mask.to(torch.bool)
            if mask.shape != wsi.shape[:2]:
                raise ValueError(
                    f"batch.wsi_mask: expected {tuple(wsi.shape[:2])}, got {tuple(mask.shape)}"
                )
            if bool(mask.all()):
                mask = None
            else:
                # Padding may hold anything (even NaN); zero it so nothing downstream sees it.
                wsi = torch.where(mask.unsqueeze(-1), wsi, wsi.new_zeros(()))
        b, n, _ = wsi.shape
        # 2-D matmuls: the in-place ReLU then acts on a plain tensor, not a view (no copies)
        return self.wsi_proj(wsi.reshape(b * n, -1)).view(b, n, -1), mask

    def _omics_present(self, batch: ModelBatch, b: int, device: torch.device) -> torch.Tensor:
        if batch.omics is None:
            if batch.omics_present is not None and bool(batch.omics_present.any()):
                raise ValueError(
                    "batch.omics_present marks patients with RNA but batch.omics is None"
                )
            return torch.zeros(b, dtype=torch.bool, device=device)
        if batch.omics_present is None:
            return torch.ones(b, dtype=torch.bool, device=device)
        present = batch.omics_present.to(device=device, dtype=torch.bool).reshape(-1)
        if present.numel() != b:
            raise ValueError(f"batch.omics_present: expected [{b}], got {tuple(present.shape)}")
        return present

    def _joint_tokens(
        self, wsi_tokens: torch.Tensor, wsi_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Pathway tokens [B, P, d] decoded from the WSI alone (reconstruction path (b))."""
        slots, _ = self.slots_omics(wsi_tokens, wsi_mask)
        queries = self.recon_joint_queries.unsqueeze(0).expand(slots.shape[0], -1, -1)
        return self.recon_joint(queries, slots)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: ModelBatch) -> ModelOutput:
        wsi_tokens, wsi_mask = self._wsi_tokens(batch)
        b = wsi_tokens.shape[0]
        present = self._omics_present(batch, b, wsi_tokens.device)
        any_present, all_present = bool(present.any()), bool(present.all())

        pathway_tokens = None
        if any_present:
            omics = batch.omics
            if omics.shape[0] != b:
                raise ValueError(f"batch.omics: expected {b} rows (as wsi), got {omics.shape[0]}")
            if not all_present:
                omics = torch.where(present.unsqueeze(1), omics, omics.new_zeros(()))
            pathway_tokens = self.pathway_snn(omics)  # [B, P, d]

        # Whose survival path reads the measured pathway tokens: everyone with RNA, less (in
        # training) a random omics_dropout share, who get the WSI-decoded tokens instead.
        use_measured = present
        if self.training and self.config.omics_dropout > 0 and any_present:
            kept = torch.rand(b, device=present.device) >= self.config.omics_dropout
            use_measured = present & kept
        all_measured = bool(use_measured.all())

        joint_tokens = None
        if self.training or not all_measured:
            joint_tokens = self._joint_tokens(wsi_tokens, wsi_mask)
        if pathway_tokens is None:
            omics_tokens = joint_tokens
        elif all_measured:
            omics_tokens = pathway_tokens
        else:
            omics_tokens = torch.where(use_measured[:, None, None], pathway_tokens, joint_tokens)

        slots_wsi, attn_wsi = self.slots_wsi(wsi_tokens, wsi_mask)
        slots_omics, attn_omics = self.slots_omics(omics_tokens)
        aux_wsi, gate_wsi, keep_wsi = self.decoder_wsi(slots_wsi)
        aux_omics, gate_omics, keep_omics = self.decoder_omics(slots_omics)

        inter = self.inter(slots_wsi, slots_omics)
        intra_wsi = self.intra_wsi(slots_wsi, keep_wsi)
        intra_omics = self.intra_omics(slots_omics, keep_omics)
        fused = torch.cat([inter.mean(1), intra_wsi.mean(1), intra_omics.mean(1)], dim=-1)
        out = ModelOutput(
            logits=self.head(fused),
            attention={
                "wsi_slot_attention": attn_wsi,
                "omics_slot_attention": attn_omics,
                "wsi_gate": gate_wsi.detach(),
                "omics_gate": gate_omics.detach(),
            },
        )
        if self.training:
            out.aux_logits = {"aux_wsi": aux_wsi, "aux_omics": aux_omics}
            out.aux = self._reconstruction_losses(
                wsi_tokens,
                wsi_mask,
                pathway_tokens,
                joint_tokens,
                present,
                slots_wsi,
                keep_wsi,
                slots_omics,
                keep_omics,
            )
        return out

    def _reconstruction_losses(
        self,
        wsi_tokens: torch.Tensor,
        wsi_mask: torch.Tensor | None,
        pathway_tokens: torch.Tensor | None,
        joint_tokens: torch.Tensor,
        present: torch.Tensor,
        slots_wsi: torch.Tensor,
        keep_wsi: torch.Tensor,
        slots_omics: torch.Tensor,
        keep_omics: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The three reconstruction terms, each x recon_weight; omics terms over patients with
        RNA only (the others have no target), the WSI term over real patches only."""
        w = self.config.recon_weight
        b = wsi_tokens.shape[0]
        zero = wsi_tokens.new_zeros(())
        if pathway_tokens is None:
            recon_omics, recon_joint = zero, zero
        else:
            target = pathway_tokens.detach()
            rows = present.to(target.dtype)[:, None, None].expand_as(target)
            queries = self.recon_omics_queries.unsqueeze(0).expand(b, -1, -1)
            recon = self.recon_omics(queries, slots_omics, keep_omics)
            recon_omics = _masked_mean((recon - target).square(), rows)
            recon_joint = _masked_mean((joint_tokens - target).square(), rows)

        recon = self.recon_wsi.forward_mapped_queries(
            wsi_tokens, self.wsi_query_weight, self.wsi_query_bias, slots_wsi, keep_wsi
        )
        # The target is not detached: as in the authors' code this also trains the projection.
        cosine = row_cosine_similarity(recon, wsi_tokens)  # [B, N]
        if wsi_mask is None:
            recon_wsi = 1.0 - cosine.mean()
        else:
            recon_wsi = 1.0 - _masked_mean(cosine, wsi_mask.to(cosine.dtype))
        return {
            "recon_omics": w * recon_omics,
            "recon_joint": w * recon_joint,
            "recon_wsi": w * recon_wsi,
        }
