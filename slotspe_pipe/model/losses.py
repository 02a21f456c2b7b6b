"""Discrete-time survival: hazards, survival curves, risk, the NLL of Zadeh & Schmid (2020) and
the Cox partial likelihood used as an optional ranking term.

Convention: ``event = 1`` means the death was observed in bin ``bin_index``; ``event = 0`` means
the patient was censored in that bin (alive at its start). Logits are per-bin hazard logits,
``hazard = sigmoid(logit)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def survival_from_logits(
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (hazards [B, C], survival S(t) = cumprod(1 - hazards) [B, C], risk [B]).

    ``risk = -sum_t S(t)``: higher means shorter expected survival (the C-index convention).
    """
    hazards = torch.sigmoid(logits)
    survival = torch.cumprod(1.0 - hazards, dim=1)
    risk = -survival.sum(dim=1)
    return hazards, survival, risk


def nll_survival_loss(
    logits: torch.Tensor,
    bin_index: torch.Tensor,
    event: torch.Tensor,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Discrete-time survival NLL, summed over the batch and divided by the batch size.

    loss_i = (1 - alpha) * (uncensored_i + censored_i) + alpha * uncensored_i, with
    uncensored_i = -event_i * (log S(y_i - 1) + log h(y_i)) and
    censored_i = -(1 - event_i) * log S(y_i), S(-1) = 1.

    Computed in log space (``logsigmoid``) rather than by clamping probabilities at 1e-7 as the
    reference code does: identical wherever the probabilities exceed 1e-7, and the gradient does
    not vanish when a hazard saturates.

    Raises ``ValueError`` for bin indices outside [0, C) or mismatched shapes.
    """
    if logits.ndim != 2:
        raise ValueError(f"nll_survival_loss: logits must be [B, C], got {tuple(logits.shape)}")
    # the likelihood in (at least) float32 even when the model ran in bfloat16
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    n, n_bins = logits.shape
    bin_index = bin_index.reshape(-1).long()
    event = event.reshape(-1).to(logits.dtype)
    if bin_index.numel() != n or event.numel() != n:
        raise ValueError(
            f"nll_survival_loss: {n} logits rows but {bin_index.numel()} bin indices and "
            f"{event.numel()} events"
        )
    if n == 0:
        return logits.sum() * 0.0
    if int(bin_index.min()) < 0 or int(bin_index.max()) >= n_bins:
        raise ValueError(
            f"nll_survival_loss: bin_index must lie in [0, {n_bins}), got "
            f"[{int(bin_index.min())}, {int(bin_index.max())}]"
        )
    log_hazard = F.logsigmoid(logits)
    log_one_minus = F.logsigmoid(-logits)
    log_surv = torch.cumsum(log_one_minus, dim=1)  # log S(t), t = 0..C-1
    log_surv_padded = torch.cat([torch.zeros_like(log_surv[:, :1]), log_surv], dim=1)
    idx = bin_index.unsqueeze(1)
    log_s_prev = log_surv_padded.gather(1, idx).squeeze(1)  # log S(y - 1)
    log_h_this = log_hazard.gather(1, idx).squeeze(1)
    log_s_this = log_surv_padded.gather(1, idx + 1).squeeze(1)  # log S(y)
    uncensored = -event * (log_s_prev + log_h_this)
    censored = -(1.0 - event) * log_s_this
    per_patient = (1.0 - alpha) * (uncensored + censored) + alpha * uncensored
    return per_patient.sum() / n


def cox_partial_likelihood_loss(
    risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor
) -> torch.Tensor:
    """Negative Cox partial log-likelihood of ``risk`` within the batch, averaged over its events.

    Why: the discrete-time NLL only orders patients through their time bins, while the C-index
    scores every comparable pair. This term ranks each death above everyone still at risk at
    that time (risk set ``time_j >= time_i``, so tied times are all at risk: Breslow's handling).
    It reads the same ``risk`` the evaluation scores, so it sharpens the ordering that is
    measured without adding a head. A batch without a death contributes exactly 0.
    """
    risk = risk.reshape(-1).to(torch.promote_types(risk.dtype, torch.float32))
    time = time.reshape(-1).to(risk.device)
    event = event.reshape(-1).to(risk.device, risk.dtype)
    if not (risk.numel() == time.numel() == event.numel()):
        raise ValueError(
            f"cox_partial_likelihood_loss: {risk.numel()} risks, {time.numel()} times and "
            f"{event.numel()} events"
        )
    n_events = event.sum()
    if risk.numel() == 0 or float(n_events) == 0.0:
        return risk.sum() * 0.0
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j is at risk when i dies
    log_denominator = torch.logsumexp(risk.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)
    return -((risk - log_denominator) * event).sum() / n_events


class _RowCosine(torch.autograd.Function):
    """cos(a_i, b_i) over the last axis with a hand-written backward.

    ``F.cosine_similarity`` backpropagates through ten full-size divisions; here the gradient is
    two fused passes per input: d cos / d a = b / (|a| |b|) - cos a / |a|^2.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        norm_a = torch.linalg.vector_norm(a, dim=-1)
        norm_b = torch.linalg.vector_norm(b, dim=-1)
        clamped_a, clamped_b = norm_a.clamp_min(eps), norm_b.clamp_min(eps)
        cos = torch.einsum("...d,...d->...", a, b) / (clamped_a * clamped_b)
        ctx.save_for_backward(a, b, clamped_a, clamped_b, cos, norm_a > eps, norm_b > eps)
        return cos

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: torch.Tensor):
        a, b, norm_a, norm_b, cos, free_a, free_b = ctx.saved_tensors
        scale = (grad / (norm_a * norm_b)).unsqueeze(-1)
        grad_cos = grad * cos
        # a norm held at eps by the clamp has no 1/|a| dependence left
        shrink_a = (grad_cos * free_a / norm_a.square()).unsqueeze(-1)
        shrink_b = (grad_cos * free_b / norm_b.square()).unsqueeze(-1)
        grad_a = torch.addcmul(b * scale, a, shrink_a, value=-1.0)
        grad_b = torch.addcmul(a * scale, b, shrink_b, value=-1.0)
        return grad_a, grad_b, None


def row_cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of matching rows along the last axis: a . b / (max(|a|, eps) max(|b|, eps))."""
    return _RowCosine.apply(a, b, eps)
