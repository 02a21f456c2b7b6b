"""Multi-head slot attention (Locatello et al. 2020) with padding masks, as SlotSPE uses it.

Slots compete for each input token (softmax over the SLOTS axis), then each slot takes the
weighted mean of the tokens it won. Padded tokens are given zero weight after the competition,
so a padded patch can neither pull a slot nor dilute its mean. Keys and values are computed once
per call, laid out [B*H, N, head_dim] so the 2x``iters`` matmuls of the loop read them in place
(no per-iteration copies, which at 32 x 4096 tokens would each cost 268 MB of saved activations).
"""

from __future__ import annotations

import torch
from torch import nn


class MultiHeadSlotAttention(nn.Module):
    """inputs [B, N, d] (+ mask [B, N]) -> slots [B, S, d] and attention [B, S, N].

    Slot initialisation: training draws mu + exp(log_sigma) * noise (one mu / sigma shared by all
    slots, as in the paper). Evaluation is deterministic: ``eval_init="fixed_noise"`` uses one
    standard-normal draw frozen at construction (buffer ``eval_noise``, saved with the weights);
    ``eval_init="mu"`` starts every slot at mu, which with a shared mu makes all slots identical.

    The logit scale is 1/sqrt(d) (model width), not 1/sqrt(head_dim): that is what the authors'
    code trains with, so we keep it.
    """

    def __init__(
        self,
        dim: int,
        n_slots: int,
        iters: int,
        heads: int,
        head_dim: int,
        eps: float = 1e-8,
        eval_init: str = "fixed_noise",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_slots = n_slots
        self.iters = iters
        self.heads = heads
        self.head_dim = head_dim
        self.eps = eps
        self.eval_init = eval_init
        self.scale = dim**-0.5
        inner = heads * head_dim

        self.slots_mu = nn.Parameter(torch.randn(1, 1, dim))
        self.slots_log_sigma = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.slots_log_sigma)
        self.register_buffer("eval_noise", torch.randn(1, n_slots, dim))

        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.combine_heads = nn.Linear(inner, dim)
        self.gru = nn.GRUCell(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def initial_slots(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, S, d] starting slots: random in training, deterministic in eval."""
        mu = self.slots_mu.to(dtype)
        sigma = self.slots_log_sigma.exp().to(dtype)
        if self.training:
            noise = torch.randn(batch, self.n_slots, self.dim, device=mu.device, dtype=dtype)
        elif self.eval_init == "fixed_noise":
            noise = self.eval_noise.to(dtype).expand(batch, -1, -1)
        else:
            noise = torch.zeros(batch, self.n_slots, self.dim, device=mu.device, dtype=dtype)
        return mu + sigma * noise

    def _heads_first(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, H*dh] -> contiguous [B*H, N, dh]."""
        b, n, _ = x.shape
        x = x.view(b, n, self.heads, self.head_dim).transpose(1, 2)
        return x.reshape(b * self.heads, n, self.head_dim)

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (slots [B, S, d], last-iteration attention averaged over heads [B, S, N]).

        ``mask`` [B, N] bool, True = real token; each row needs at least one real token.
        Attention rows sum to 1 over the real tokens and are exactly 0 on padding.
        """
        b, n, d = inputs.shape
        h, s = self.heads, self.n_slots
        x = self.norm_input(inputs)
        k = self._heads_first(self.to_k(x))  # [B*H, N, dh]
        v = self._heads_first(self.to_v(x))
        keep = None
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"slot attention mask: expected {(b, n)}, got {tuple(mask.shape)}")
            if not bool(mask.any(dim=1).all()):
                raise ValueError("slot attention mask: every row needs at least one real token")
            # [B*H, 1, N] multiplicative weight; float so that it broadcasts into the matmul path.
            keep = mask.to(inputs.dtype).repeat_interleave(h, dim=0).unsqueeze(1)

        slots = self.initial_slots(b, inputs.dtype)
        attn = inputs.new_zeros(b * h, s, n)
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))  # [B, S, H*dh]
            q = q.view(b, s, h, self.head_dim).transpose(1, 2).reshape(b * h, s, self.head_dim)
            dots = torch.bmm(q, k.transpose(1, 2)) * self.scale  # [B*H, S, N]
            attn = dots.softmax(dim=1) + self.eps  # slots compete for each token
            if keep is not None:
                attn = attn * keep
            attn = attn / attn.sum(dim=-1, keepdim=True)  # weighted mean over tokens
            updates = torch.bmm(attn, v)  # [B*H, S, dh]
            updates = updates.view(b, h, s, self.head_dim).transpose(1, 2).reshape(b, s, -1)
            updates = self.combine_heads(updates)
            slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).view(b, s, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        attention = attn.detach().view(b, h, s, n).mean(dim=1)
        return slots, attention
