"""Gated slot decoder: pick the k slots that carry the prognosis, predict hazards from them.

Training picks the top-k slots on keep score + Gumbel noise; the choice is hard (k-hot) in the
forward pass and differentiable in the backward pass through the straight-through surrogate
k * softmax(noisy score / tau). Evaluation uses the plain top-k of the keep score (no noise), so
the same patient always gets the same slots.
"""

from __future__ import annotations

import torch
from torch import nn


def gumbel_noise_like(x: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ Uniform(0, 1), clamped away from log(0)."""
    u = torch.rand_like(x).clamp_(min=1e-20, max=1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def straight_through_topk(scores: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """k-hot [B, S] mask of the k largest ``scores``; gradient of k * softmax(scores / tau).

    Forward value is exactly the hard k-hot mask (0/1); the backward pass sees the dense
    surrogate, so the score network learns which slots to keep. Noise, if any, is added by the
    caller.
    """
    index = scores.topk(k, dim=-1).indices
    hard = torch.zeros_like(scores).scatter_(-1, index, 1.0)
    soft = k * torch.softmax(scores / tau, dim=-1)
    return hard + soft - soft.detach()


class GatedSlotDecoder(nn.Module):
    """slots [B, S, d] -> (decoder logits [B, C], gate [B, S], hard keep mask [B, S] bool).

    An MLP maps each slot; a linear layer gives each slot C hazard logits and a second MLP a keep
    score. gate = softmax(score / tau) x (straight-through k-hot), renormalised; the decoder's
    logits are the gate-weighted sum of the slot logits (they feed only the auxiliary loss).
    """

    def __init__(self, dim: int, n_bins: int, k: int, tau: float) -> None:
        super().__init__()
        self.k = k
        self.tau = tau
        self.map = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.slot_logits = nn.Linear(dim, n_bins)
        self.keep_score = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mapped = self.map(slots)
        logits = self.slot_logits(mapped)  # [B, S, C]
        score = self.keep_score(mapped).squeeze(-1)  # [B, S]
        noisy = score + gumbel_noise_like(score) if self.training else score
        keep = straight_through_topk(noisy, self.k, self.tau)
        gate = torch.softmax(score / self.tau, dim=-1) * keep
        gate = gate / (gate.sum(dim=-1, keepdim=True) + 1e-8)
        decoded = torch.einsum("bs,bsc->bc", gate, logits)
        return decoded, gate, keep.detach() > 0.5
