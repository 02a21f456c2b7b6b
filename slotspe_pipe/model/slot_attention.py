"""Multi-head slot attention (Locatello et al. 2020) with padding masks, as SlotSPE uses it.

Slots compete for each input token (softmax over the SLOTS axis), then each slot takes the
weighted mean of the tokens it won. Padded tokens get zero weight after the competition, so a
padded patch can neither pull a slot nor dilute its mean.

Exact rewrites make this cheap on CPU at 32 x 4,096 tokens (same mathematics, the same products
associated differently; ``tests/test_model_components.py`` checks them against the textbook form):
- Keys and values are never materialised. With k = x Wk^T + bk, the scores per head are
  q k^T = (q Wk_h) x^T + q . bk_h, and with rows of the attention summing to 1 the update is
  attn v = (attn x) Wv_h^T + bv_h. So every iteration is two well-shaped batched matmuls against
  the normalised inputs x [B, N, d] (M = heads x slots = 64, K = d or N) instead of skinny
  per-head products with an inner size of 8 or 64, and the [B, N, heads x 64] key and value
  tensors (268 MB each at batch 32) and their gradients never exist.
- The small per-head maps are multiplied out once per call: Wq_h^T Wk_h (scores) and
  Wc_h Wv_h (updates through ``combine_heads``), so an iteration issues a handful of kernels.
- The competition (softmax over slots, + eps, padding mask, normalisation over tokens) is one
  autograd function that keeps only its output for the backward pass, instead of the three
  [B, heads x slots, N] tensors autograd would keep per iteration.
"""

from __future__ import annotations

import torch
from torch import nn


class _CompeteNormalize(torch.autograd.Function):
    """scores [B, H, S, N] -> weights: softmax over S, + eps, x keep mask, / sum over N.

    Backward recovers the softmax from the saved output (a = w * rowsum - eps on real tokens;
    padded tokens have zero gradient whatever a is), so only the output and the [B, H, S, 1]
    row sums are kept.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, scores: torch.Tensor, keep: torch.Tensor | None, eps: float) -> torch.Tensor:
        # float32 under CUDA autocast: eps = 1e-8 is below bfloat16 resolution near 1
        a = torch.softmax(scores, dim=2)
        a.add_(eps)
        if keep is not None:
            a.mul_(keep)
        rowsum = a.sum(dim=-1, keepdim=True)
        w = a.div_(rowsum)
        ctx.eps = eps
        ctx.save_for_backward(w, rowsum, keep)
        return w

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_w: torch.Tensor):
        w, rowsum, keep = ctx.saved_tensors
        # through the normalisation over tokens: du = (dw - sum_n dw * w) / rowsum
        grad_u = (grad_w - (grad_w * w).sum(dim=-1, keepdim=True)).div_(rowsum)
        if keep is not None:
            grad_u.mul_(keep)
        a = (w * rowsum).sub_(ctx.eps)  # the softmax output (garbage only where keep = 0)
        # through the softmax over slots: dz = a * (du - sum_s du * a)
        grad_scores = (grad_u - (grad_u * a).sum(dim=2, keepdim=True)).mul_(a)
        return grad_scores, None, None


def compete_and_normalize(
    scores: torch.Tensor, keep: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Slot-attention weights from scores [B, H, S, N]; ``keep`` [B, 1, 1, N] float 0/1 or None."""
    return _CompeteNormalize.apply(scores, keep, eps)


class MultiHeadSlotAttention(nn.Module):
    """inputs [B, N, d] (+ mask [B, N]) -> slots [B, S, d] and attention [B, S, N].

    Parameters are those of the textbook module (``to_q``, ``to_k``, ``to_v`` of width
    heads x head_dim, ``combine_heads``, a GRU cell, a residual MLP); only the order of the
    products differs (module docstring).

    Slot initialisation: training draws mu + exp(log_sigma) * noise (one mu / sigma shared by all
    slots, as in the paper). Evaluation is deterministic: ``eval_init="fixed_noise"`` uses one
    standard-normal draw frozen at construction (buffer ``eval_noise``, saved with the weights);
    ``eval_init="mu"`` starts every slot at mu, which with a shared mu makes all slots identical.

    The score scale is 1/sqrt(d) (model width), not 1/sqrt(head_dim): that is what the authors'
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

    def _fused_query_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[d, H*(d+1)] map and bias taking normalised slots y to, per head h,
        (y Wq_h^T + bq_h) Wk_h * scale (d columns) and (y Wq_h^T + bq_h) . bk_h * scale (1)."""
        h, dh, d = self.heads, self.head_dim, self.dim
        w_q = self.to_q.weight.view(h, dh, d)
        b_q = self.to_q.bias.view(h, dh)
        w_k = torch.cat([self.to_k.weight.view(h, dh, d), self.to_k.bias.view(h, dh, 1)], dim=2)
        w_k = w_k * self.scale  # [H, dh, d + 1]
        query_map = torch.einsum("hed,hef->dhf", w_q, w_k).reshape(d, h * (d + 1))
        query_bias = torch.einsum("he,hef->hf", b_q, w_k).reshape(h * (d + 1))
        return query_map, query_bias

    def _fused_update_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[H*d, d] map and bias taking per-head token means m_h to combine(m_h Wv_h^T + bv_h).

        Valid because each slot's attention over tokens sums to 1, so attn @ v = (attn @ x)
        Wv^T + bv.
        """
        h, dh, d = self.heads, self.head_dim, self.dim
        w_v = self.to_v.weight.view(h, dh, d)
        w_c = self.combine_heads.weight.view(d, h, dh)
        update_map = torch.einsum("hed,fhe->hdf", w_v, w_c).reshape(h * d, d)
        update_bias = self.combine_heads(self.to_v.bias)
        return update_map, update_bias

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (slots [B, S, d], last-iteration attention averaged over heads [B, S, N]).

        ``mask`` [B, N] bool, True = real token; each row needs at least one real token.
        Attention rows sum to 1 over the real tokens and are exactly 0 on padding.
        """
        b, n, d = inputs.shape
        h, s = self.heads, self.n_slots
        keep = None
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"slot attention mask: expected {(b, n)}, got {tuple(mask.shape)}")
            if not bool(mask.any(dim=1).all()):
                raise ValueError("slot attention mask: every row needs at least one real token")
            keep = mask.to(inputs.dtype)[:, None, None, :]
        x = self.norm_input(inputs)  # [B, N, d]
        x_t = x.transpose(1, 2)  # [B, d, N] view, read in place by the matmul
        query_map, query_bias = self._fused_query_map()
        update_map, update_bias = self._fused_update_map()

        slots = self.initial_slots(b, inputs.dtype)
        attn = inputs.new_zeros(b, h, s, n)
        for _ in range(self.iters):
            prev = slots
            # [B, S, H, d + 1]: per head, (q Wk_h) and q . bk_h, scaled
            qk = torch.addmm(query_bias, self.norm_slots(slots).reshape(b * s, d), query_map)
            qk = qk.view(b, s, h, d + 1).transpose(1, 2).reshape(b, h * s, d + 1)
            scores = torch.baddbmm(qk[:, :, d:], qk[:, :, :d], x_t)  # [B, H*S, N] = q . k
            attn = compete_and_normalize(scores.view(b, h, s, n), keep, self.eps)
            mean_x = torch.bmm(attn.view(b, h * s, n), x)  # [B, H*S, d] = attn @ x
            mean_x = mean_x.view(b, h, s, d).transpose(1, 2).reshape(b * s, h * d)
            updates = torch.addmm(update_bias, mean_x, update_map)  # = combine(attn @ v)
            slots = self.gru(updates, prev.reshape(-1, d)).view(b, s, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn.detach().mean(dim=1)
