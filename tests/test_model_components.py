"""Component tests for slotspe_pipe.model: losses, pathway tokens, slot attention, gated decoder,
reconstruction decoder. The fast rewrites are checked against textbook formulations written
out here, with the same weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slotspe_pipe.model import (
    cox_partial_likelihood_loss,
    nll_survival_loss,
    survival_from_logits,
)
from slotspe_pipe.model.blocks import IntraModalBlock, SlotCrossDecoder
from slotspe_pipe.model.gated_decoder import GatedSlotDecoder, straight_through_topk
from slotspe_pipe.model.losses import row_cosine_similarity
from slotspe_pipe.model.pathway_tokens import GroupedPathwaySNN
from slotspe_pipe.model.slot_attention import MultiHeadSlotAttention, compete_and_normalize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- losses
def test_survival_from_logits_monotone_and_risk_order():
    logits = torch.tensor([[-2.0, -1.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    hazards, survival, risk = survival_from_logits(logits)
    assert torch.allclose(hazards, torch.sigmoid(logits))
    assert torch.all(survival[:, 1:] <= survival[:, :-1])
    assert torch.all((survival > 0) & (survival < 1))
    assert torch.allclose(survival[:, 0], 1 - hazards[:, 0])
    # uniformly higher hazards -> higher risk
    assert risk[1] > risk[0]
    assert torch.allclose(risk, -survival.sum(1))


def test_nll_matches_hand_computation():
    # all hazards 0.5: S = 0.5, 0.25, 0.125, 0.0625
    logits = torch.zeros(2, 4)
    # patient 0: died in bin 2 -> -(log S(1) + log h(2)) = log 8
    # patient 1: censored in bin 1 -> -log S(1) = log 4, weighted (1 - alpha)
    loss = nll_survival_loss(logits, torch.tensor([2, 1]), torch.tensor([1, 0]), alpha=0.5)
    expected = (math.log(8.0) + 0.5 * math.log(4.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss0 = nll_survival_loss(logits, torch.tensor([2, 1]), torch.tensor([1, 0]), alpha=0.0)
    assert loss0.item() == pytest.approx((math.log(8.0) + math.log(4.0)) / 2, rel=1e-6)


def test_nll_matches_probability_form_on_random_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=gen)
    e = torch.randint(0, 2, (16,), generator=gen).double()
    h = torch.sigmoid(logits)
    s = torch.cumprod(1 - h, 1)
    s_pad = torch.cat([torch.ones(16, 1, dtype=torch.float64), s], 1)
    unc = -e * (
        torch.log(s_pad.gather(1, y[:, None])[:, 0]) + torch.log(h.gather(1, y[:, None])[:, 0])
    )
    cen = -(1 - e) * torch.log(s_pad.gather(1, y[:, None] + 1)[:, 0])
    expected = ((0.5 * (unc + cen) + 0.5 * unc).sum() / 16).item()
    assert nll_survival_loss(logits, y, e, 0.5).item() == pytest.approx(expected, rel=1e-10)


def test_cox_term_equals_lifelines_partial_likelihood_at_its_fit():
    """lifelines' fitted log partial likelihood of one covariate is our loss at beta_hat * x."""
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)
    x = rng.normal(size=60)
    time = rng.exponential(np.exp(-0.8 * x)) + np.arange(60) * 1e-6  # distinct times
    event = (rng.random(60) < 0.7).astype(float)
    frame = pd.DataFrame({"x": x, "T": time, "E": event})
    fit = CoxPHFitter(penalizer=0.0).fit(frame, "T", "E")
    beta = float(fit.params_["x"])
    loss = cox_partial_likelihood_loss(
        torch.tensor(beta * x), torch.tensor(time), torch.tensor(event)
    )
    assert loss.item() * event.sum() == pytest.approx(-fit.log_likelihood_, rel=1e-6)
    # ...and beta_hat minimises our loss along that direction
    for other in (beta - 0.05, beta + 0.05):
        worse = cox_partial_likelihood_loss(
            torch.tensor(other * x), torch.tensor(time), torch.tensor(event)
        )
        assert worse.item() > loss.item()


def test_cox_term_ties_breslow_and_no_deaths():
    risk = torch.tensor([0.0, math.log(2.0), math.log(3.0)], requires_grad=True)
    time = torch.tensor([1.0, 1.0, 2.0])
    event = torch.tensor([1, 1, 0])
    # Breslow: both deaths at t=1 share the risk set {all three}: -(0 + log 2 - 2 log 6) / 2
    loss = cox_partial_likelihood_loss(risk, time, event)
    assert loss.item() == pytest.approx(-(math.log(2.0) - 2 * math.log(6.0)) / 2, rel=1e-6)
    loss.backward()
    assert risk.grad is not None and risk.grad[2] > 0  # the survivor is pushed down
    none = cox_partial_likelihood_loss(risk, time, torch.zeros(3))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="risks"):
        cox_partial_likelihood_loss(risk, time[:2], event)


def test_row_cosine_matches_torch_values_and_gradients():
    torch.manual_seed(0)
    a = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(row_cosine_similarity, (a, b))
    w = torch.randn(3, 5, dtype=torch.float64)
    ours = row_cosine_similarity(a, b)
    ref = F.cosine_similarity(a, b, dim=-1)
    torch.testing.assert_close(ours, ref)
    for g1, g2 in zip(
        torch.autograd.grad((ours * w).sum(), [a, b]),
        torch.autograd.grad((ref * w).sum(), [a, b]),
        strict=True,
    ):
        torch.testing.assert_close(g1, g2)


def test_nll_rejects_bad_bins():
    with pytest.raises(ValueError, match="bin_index"):
        nll_survival_loss(torch.zeros(2, 4), torch.tensor([0, 4]), torch.tensor([1, 1]))


# ----------------------------------------------------------------------------- pathway tokens
def _pathways(seed: int = 0, n_genes: int = 40, n_pathways: int = 6):
    rng = np.random.default_rng(seed)
    return [
        rng.choice(n_genes, size=int(rng.integers(2, 12)), replace=False) for _ in range(n_pathways)
    ]


def test_grouped_pathway_snn_equals_naive_loop():
    torch.manual_seed(0)
    pathways = _pathways()
    snn = GroupedPathwaySNN(pathways, 40, 16, dropout=0.25).eval()
    loops = []
    for p, genes in enumerate(pathways):
        start, n_p = int(snn.offsets[p]), len(genes)
        lin1, lin2 = nn.Linear(n_p, 16), nn.Linear(16, 16)
        with torch.no_grad():
            lin1.weight.copy_(snn.w1[start : start + n_p].T)
            lin1.bias.copy_(snn.b1[p])
            lin2.weight.copy_(snn.w2[p].T)
            lin2.bias.copy_(snn.b2[p])
        loops.append(nn.Sequential(lin1, nn.ELU(), nn.AlphaDropout(0.25), lin2, nn.ELU()).eval())
    omics = torch.randn(5, 40)
    grouped = snn(omics)
    naive = torch.stack(
        [net(omics[:, torch.from_numpy(g)]) for net, g in zip(loops, pathways, strict=True)], 1
    )
    assert grouped.shape == (5, len(pathways), 16)
    torch.testing.assert_close(grouped, naive, atol=1e-5, rtol=1e-5)
    # gradients of the shared weight tensor are the per-pathway Linear gradients
    weights = torch.randn_like(grouped)
    (grouped * weights).sum().backward()
    (naive * weights).sum().backward()
    for p, genes in enumerate(pathways):
        start, n_p = int(snn.offsets[p]), len(genes)
        torch.testing.assert_close(snn.w1.grad[start : start + n_p].T, loops[p][0].weight.grad)
        torch.testing.assert_close(snn.w2.grad[p].T, loops[p][3].weight.grad)


def test_grouped_pathway_snn_init_matches_linear_bounds():
    snn = GroupedPathwaySNN(_pathways(), 40, 16, dropout=0.25)
    for p in range(snn.n_pathways):
        start, n_p = int(snn.offsets[p]), int(snn.sizes[p])
        assert snn.w1[start : start + n_p].abs().max() <= 1 / math.sqrt(n_p)


def test_grouped_pathway_snn_rejects_bad_pathways():
    with pytest.raises(ValueError, match=r"pathways\[1\]"):
        GroupedPathwaySNN([np.array([0, 1]), np.array([5, 40])], 40, 8, 0.25)
    with pytest.raises(ValueError, match=r"pathways\[0\]"):
        GroupedPathwaySNN([np.array([], dtype=int)], 40, 8, 0.25)


# ----------------------------------------------------------------------------- slot attention
def _textbook_slot_attention(m: MultiHeadSlotAttention, inputs, mask, init):
    """Keys and values materialised per head, scores softmaxed over slots (the paper's form)."""
    b, n, d = inputs.shape
    h, s, dh = m.heads, m.n_slots, m.head_dim
    x = m.norm_input(inputs)
    k = m.to_k(x).view(b, n, h, dh).transpose(1, 2)
    v = m.to_v(x).view(b, n, h, dh).transpose(1, 2)
    slots = init
    for _ in range(m.iters):
        prev = slots
        q = m.to_q(m.norm_slots(slots)).view(b, s, h, dh).transpose(1, 2)
        a = (q @ k.transpose(-1, -2) * m.scale).softmax(dim=2) + m.eps
        if mask is not None:
            a = a * mask[:, None, None, :].to(a.dtype)
        a = a / a.sum(-1, keepdim=True)
        u = m.combine_heads((a @ v).transpose(1, 2).reshape(b, s, h * dh))
        slots = m.gru(u.reshape(-1, d), prev.reshape(-1, d)).view(b, s, d)
        slots = slots + m.mlp(m.norm_mlp(slots))
    return slots


def test_slot_attention_equals_textbook_form_values_and_gradients():
    torch.manual_seed(0)
    m = MultiHeadSlotAttention(32, n_slots=4, iters=3, heads=2, head_dim=8).double().eval()
    x = torch.randn(3, 11, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False
    fast, attention = m(x, mask)
    slow = _textbook_slot_attention(m, x, mask, m.initial_slots(3, torch.float64))
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-10)
    params = [x, *m.parameters()]
    g_fast = torch.autograd.grad((fast * fast.detach()).sum(), params)
    g_slow = torch.autograd.grad((slow * fast.detach()).sum(), params)
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert attention.shape == (3, 4, 11)
    assert torch.all(attention[1, :, 6:] == 0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4, dtype=torch.float64))


def test_compete_and_normalize_gradcheck():
    z = torch.randn(2, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([1.0, 1, 0, 1, 0], dtype=torch.float64).expand(2, 1, 1, 5).contiguous()
    assert torch.autograd.gradcheck(lambda t: compete_and_normalize(t, keep, 1e-8), (z,))
    assert torch.autograd.gradcheck(lambda t: compete_and_normalize(t, None, 1e-3), (z,))


def test_slot_attention_padding_changes_nothing():
    torch.manual_seed(0)
    m = MultiHeadSlotAttention(16, n_slots=3, iters=2, heads=2, head_dim=8).eval()
    x = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    x2 = x.clone()
    x2[0, 5:] = torch.randn(4, 16) * 100
    a, _ = m(x, mask)
    b, _ = m(x2, mask)
    assert torch.equal(a, b)
    # the padded patient alone, unpadded, gives the same slots
    alone, _ = m(x[:1, :5])
    torch.testing.assert_close(a[:1], alone, atol=1e-5, rtol=1e-5)


def test_slot_attention_eval_deterministic_train_random():
    torch.manual_seed(0)
    m = MultiHeadSlotAttention(16, n_slots=3, iters=2, heads=2, head_dim=8)
    x = torch.randn(2, 9, 16)
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


def test_mu_init_collapses_slots_fixed_noise_does_not():
    """Why eval_slot_init defaults to "fixed_noise": with one mu shared by all slots, starting
    every slot at mu leaves them identical through every iteration."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    collapsed = MultiHeadSlotAttention(16, 4, 3, 2, 8, eval_init="mu").eval()(x)[0]
    assert torch.allclose(collapsed, collapsed[:, :1].expand_as(collapsed), atol=1e-6)
    distinct = MultiHeadSlotAttention(16, 4, 3, 2, 8, eval_init="fixed_noise").eval()(x)[0]
    assert (distinct - distinct[:, :1]).abs().amax() > 1e-3


# ----------------------------------------------------------------------------- gated decoder
def test_straight_through_topk_forward_hard_backward_soft():
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.1]], requires_grad=True)
    weights = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    y = straight_through_topk(scores, k=2, tau=0.5)
    assert torch.equal(y.detach(), torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]))
    (y * weights).sum().backward()
    ref = scores.detach().clone().requires_grad_(True)
    (2 * torch.softmax(ref / 0.5, -1) * weights).sum().backward()
    torch.testing.assert_close(scores.grad, ref.grad)
    assert scores.grad.abs().sum() > 0


def test_gated_decoder_gate_and_straight_through_reach_keep_score():
    torch.manual_seed(0)
    dec = GatedSlotDecoder(16, n_bins=4, k=2, tau=0.5).train()
    slots = torch.randn(3, 6, 16)
    torch.manual_seed(1)
    logits, gate, keep = dec(slots)
    assert logits.shape == (3, 4) and gate.shape == (3, 6) and keep.shape == (3, 6)
    assert torch.equal(keep.sum(1), torch.full((3,), 2))
    assert torch.all(gate[~keep] == 0)
    torch.testing.assert_close(gate.sum(1), torch.ones(3))
    logits.pow(2).sum().backward()
    with_st = [p.grad.clone() for p in dec.keep_score.parameters()]
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in with_st)

    # Same forward with the straight-through path cut: the keep-score gradient changes, so the
    # straight-through estimator is what carries (part of) it.
    dec.zero_grad()
    torch.manual_seed(1)
    original = straight_through_topk
    import slotspe_pipe.model.gated_decoder as gd

    gd.straight_through_topk = lambda s, k, tau: original(s, k, tau).detach()
    try:
        logits_cut, _, _ = dec(slots)
    finally:
        gd.straight_through_topk = original
    torch.testing.assert_close(logits_cut, logits)
    logits_cut.pow(2).sum().backward()
    without_st = [p.grad for p in dec.keep_score.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(with_st, without_st, strict=True))


def test_gated_decoder_eval_is_plain_topk():
    torch.manual_seed(0)
    dec = GatedSlotDecoder(16, n_bins=4, k=2, tau=0.01).eval()
    slots = torch.randn(4, 8, 16)
    _, gate, keep = dec(slots)
    score = dec.keep_score(dec.map(slots)).squeeze(-1)
    expected = torch.zeros_like(keep).scatter_(1, score.topk(2, dim=1).indices, True)
    assert torch.equal(keep, expected)
    assert torch.equal(dec(slots)[1], gate)


# ----------------------------------------------------------------------------- blocks
def test_mapped_query_decoder_equals_explicit_queries():
    torch.manual_seed(0)
    m = SlotCrossDecoder(32, heads=4).double()
    tokens = torch.randn(3, 9, 32, dtype=torch.float64, requires_grad=True)
    w, c = torch.randn(32, 32, dtype=torch.float64) / 6, torch.randn(32, dtype=torch.float64)
    slots = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    explicit = m(F.linear(tokens.detach(), w, c), slots, mask)
    folded = m.forward_mapped_queries(tokens, w, c, slots, mask)
    torch.testing.assert_close(folded, explicit, atol=1e-12, rtol=1e-10)
    params = [slots, *m.parameters()]
    g1 = torch.autograd.grad(explicit.sin().sum(), params)
    g2 = torch.autograd.grad(folded.sin().sum(), params)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_intra_block_ignores_dropped_slots():
    torch.manual_seed(0)
    block = IntraModalBlock(16, heads=4, mlp_ratio=1.0, dropout=0.1, drop_path=0.1).eval()
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.bool)
    x2 = x.clone()
    x2[~keep] = torch.randn(int((~keep).sum()), 16)
    out1, out2 = block(x, keep), block(x2, keep)
    # kept slots read only kept slots: their outputs do not depend on the dropped ones
    torch.testing.assert_close(out1[keep], out2[keep])
