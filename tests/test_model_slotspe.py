"""SlotSPE end to end at small sizes: shapes, padding, determinism, missing omics, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slotspe_pipe.model import (
    MODEL_NAMES,
    ModelBatch,
    SlotSPEConfig,
    build_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = {
    "dim": 32,
    "n_slots": 4,
    "slot_iters": 2,
    "slot_heads": 2,
    "slot_head_dim": 8,
    "intra_heads": 4,
    "cross_heads": 4,
    "recon_heads": 4,
    "wsi_hidden": 32,
}
N_GENES, WSI_DIM = 40, 24


def _pathways(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(N_GENES, size=int(rng.integers(2, 10)), replace=False) for _ in range(7)]


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(
        "slotspe",
        wsi_dim=WSI_DIM,
        pathways=_pathways(),
        n_genes=N_GENES,
        n_bins=4,
        config={**SMALL, **overrides},
    )


def _batch(b: int = 4, n: int = 12, seed: int = 0) -> ModelBatch:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([n, n - 5, n - 2, 3][:b] + [n] * max(0, b - 4))
    mask = torch.arange(n)[None, :] < lengths[:, None]
    wsi = torch.randn(b, n, WSI_DIM, generator=gen) * mask[..., None]
    omics = torch.randn(b, N_GENES, generator=gen)
    return ModelBatch(
        wsi=wsi, wsi_mask=mask, omics=omics, omics_present=torch.ones(b, dtype=torch.bool)
    )


def test_model_names_and_modalities():
    assert MODEL_NAMES == ("slotspe", "snn", "abmil")
    assert _model().modalities == frozenset({"wsi", "omics"})


def test_shapes_train_and_eval():
    model = _model()
    batch = _batch()
    out = model.train()(batch)
    assert out.logits.shape == (4, 4)
    assert out.attention["wsi_slot_attention"].shape == (4, 4, 12)
    assert out.attention["omics_slot_attention"].shape == (4, 4, 7)
    assert out.attention["wsi_gate"].shape == (4, 4)
    assert out.attention["omics_gate"].shape == (4, 4)
    assert set(out.aux) == {"recon_omics", "recon_joint", "recon_wsi"}
    assert set(out.aux_logits) == {"aux_wsi", "aux_omics"}
    assert all(v.shape == (4, 4) for v in out.aux_logits.values())
    total, parts = model.loss(out, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, 0]))
    assert set(parts) == {
        "nll",
        "aux_wsi",
        "aux_omics",
        "recon_omics",
        "recon_joint",
        "recon_wsi",
        "total",
    }
    assert parts["total"] == pytest.approx(
        sum(v for k, v in parts.items() if k != "total"), rel=1e-5
    )
    total.backward()
    out = model.eval()(batch)
    assert out.aux == {} and out.aux_logits == {}
    # gates: k = max(1, floor(4 * 0.25)) = 1 kept slot each
    assert torch.equal((out.attention["wsi_gate"] > 0).sum(1), torch.ones(4, dtype=torch.long))
    wsi_attn = out.attention["wsi_slot_attention"]
    assert torch.all(wsi_attn[~batch.wsi_mask[:, None, :].expand_as(wsi_attn)] == 0)


def test_padding_values_change_nothing_eval_and_train():
    model = _model()
    batch = _batch()
    noisy = ModelBatch(
        wsi=batch.wsi.clone(),
        wsi_mask=batch.wsi_mask,
        omics=batch.omics,
        omics_present=batch.omics_present,
    )
    noisy.wsi[~batch.wsi_mask] = float("nan")
    model.eval()
    assert torch.equal(model(batch).logits, model(noisy).logits)
    model.train()
    torch.manual_seed(3)
    a = model(batch)
    torch.manual_seed(3)
    b = model(noisy)
    assert torch.equal(a.logits, b.logits)
    for key in a.aux:
        assert torch.equal(a.aux[key], b.aux[key]), key
    loss, _ = model.loss(b, torch.zeros(4, dtype=torch.long), torch.ones(4))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padded_patient_equals_unpadded_patient():
    model = _model().eval()
    batch = _batch()
    full = model(batch).logits
    for i in range(4):
        n_i = int(batch.wsi_mask[i].sum())
        alone = ModelBatch(
            wsi=batch.wsi[i : i + 1, :n_i], wsi_mask=None, omics=batch.omics[i : i + 1]
        )
        torch.testing.assert_close(model(alone).logits, full[i : i + 1], atol=1e-5, rtol=1e-5)


def test_eval_deterministic_train_random():
    model = _model()
    batch = _batch()
    model.eval()
    assert torch.equal(model(batch).logits, model(batch).logits)
    model.train()
    assert not torch.equal(model(batch).logits, model(batch).logits)


@pytest.mark.parametrize("train", [False, True])
def test_missing_omics_never_read(train: bool):
    model = _model().train(train)
    batch = _batch()
    present = torch.tensor([True, False, True, False])
    outs = []
    for fill in (float("nan"), 1e6, 0.0):
        omics = batch.omics.clone()
        omics[~present] = fill
        torch.manual_seed(5)
        outs.append(model(ModelBatch(batch.wsi, batch.wsi_mask, omics, present)))
    for out in outs[1:]:
        assert torch.equal(out.logits, outs[0].logits)
        assert torch.equal(
            out.attention["omics_slot_attention"], outs[0].attention["omics_slot_attention"]
        )
        for key in out.aux:
            assert torch.equal(out.aux[key], outs[0].aux[key])
    assert torch.isfinite(outs[0].logits).all()
    if train:
        loss, _ = model.loss(outs[0], torch.zeros(4, dtype=torch.long), torch.ones(4))
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_missing_omics_rows_match_wsi_only_inference():
    """A mixed batch scores its RNA-less patients exactly as a batch without any omics."""
    model = _model().eval()
    batch = _batch()
    present = torch.tensor([True, False, True, False])
    mixed = model(ModelBatch(batch.wsi, batch.wsi_mask, batch.omics, present)).logits
    none = model(ModelBatch(batch.wsi, batch.wsi_mask, None, None)).logits
    full = model(batch).logits
    torch.testing.assert_close(mixed[~present], none[~present], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[present], full[present], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(none[present], full[present])


def test_training_without_any_omics():
    model = _model().train()
    batch = _batch()
    out = model(ModelBatch(wsi=batch.wsi, wsi_mask=batch.wsi_mask))
    assert out.aux["recon_omics"].item() == 0 and out.aux["recon_joint"].item() == 0
    loss, _ = model.loss(out, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, 0]))
    loss.backward()
    assert model.recon_joint_queries.grad is not None  # joint tokens fed the omics branch
    assert model.pathway_snn.w1.grad is None  # the omics network was never run


def test_omics_dropout_feeds_decoded_tokens_in_training_only():
    """omics_dropout=1: in training the survival path reads WSI-decoded tokens for everyone
    (the RNA is only a reconstruction target); evaluation always reads the measured RNA."""
    model = _model(omics_dropout=1.0).train()
    batch = _batch()
    other = ModelBatch(
        wsi=batch.wsi,
        wsi_mask=batch.wsi_mask,
        omics=batch.omics + 3.0,
        omics_present=batch.omics_present,
    )

    def run(b: ModelBatch):
        torch.manual_seed(5)
        return model(b)

    a, c = run(batch), run(other)
    torch.testing.assert_close(a.logits, c.logits)
    assert a.aux["recon_joint"].item() != c.aux["recon_joint"].item()  # RNA still the target
    loss, _ = model.loss(a, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, 0]))
    loss.backward()
    assert model.recon_joint_queries.grad.abs().sum() > 0
    model.eval()
    assert not torch.allclose(model(batch).logits, model(other).logits)
    with pytest.raises(ValueError, match="omics_dropout"):
        SlotSPEConfig(omics_dropout=1.5)


def test_loss_decreases_when_overfitting_tiny_batch():
    model = _model(dropout=0.0, drop_path=0.0, snn_dropout=0.0)
    batch = _batch()
    bins, events = torch.tensor([0, 3, 1, 2]), torch.tensor([1, 0, 1, 1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    history = []
    model.train()
    for _ in range(50):
        opt.zero_grad()
        loss, parts = model.loss(model(batch), bins, events)
        loss.backward()
        opt.step()
        history.append(parts["nll"])
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])


def test_keep_score_networks_receive_gradient():
    model = _model().train()
    out = model(_batch())
    loss, _ = model.loss(out, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, 0]))
    loss.backward()
    for decoder in (model.decoder_wsi, model.decoder_omics):
        grads = [p.grad for p in decoder.keep_score.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_frozen_query_map_is_not_a_parameter():
    model = _model()
    names = {n for n, _ in model.named_parameters()}
    assert not any("wsi_query" in n for n in names)
    assert "wsi_query_weight" in model.state_dict()
    assert "slots_wsi.eval_noise" in model.state_dict()


def test_state_dict_round_trip_reproduces_eval_outputs():
    model = _model().eval()
    batch = _batch()
    torch.manual_seed(123)  # a different draw of every random init
    clone = build_model(
        "slotspe",
        wsi_dim=WSI_DIM,
        pathways=_pathways(),
        n_genes=N_GENES,
        n_bins=4,
        config=model.config.to_dict(),
    )
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.eval()(batch).logits, model(batch).logits)


def test_config_defaults_are_the_papers():
    c = SlotSPEConfig()
    assert (c.dim, c.n_slots, c.slot_iters, c.slot_heads, c.slot_head_dim) == (256, 8, 10, 8, 64)
    assert (c.keep_ratio, c.tau, c.top_k) == (0.25, 0.01, 2)
    assert (c.intra_heads, c.mlp_ratio, c.dropout, c.drop_path) == (8, 1.0, 0.1, 0.1)
    assert (c.cross_iters, c.recon_weight, c.snn_dropout, c.alpha, c.n_bins) == (
        3,
        0.01,
        0.25,
        0.5,
        4,
    )
    assert c.omics_dropout == 0.0  # ours, off by default: the paper trains without it
    assert (c.wsi_dim, c.wsi_hidden, c.aux_weight) == (1024, 1024, 1.0)
    assert SlotSPEConfig.from_dict(c.to_dict()) == c


def test_build_model_rejects_bad_config():
    with pytest.raises(ValueError, match="slot_itres"):
        _model(slot_itres=3)
    with pytest.raises(ValueError, match="n_bins"):
        build_model(
            "slotspe",
            wsi_dim=WSI_DIM,
            pathways=_pathways(),
            n_genes=N_GENES,
            n_bins=4,
            config={"n_bins": 5},
        )
    with pytest.raises(ValueError, match="eval_slot_init"):
        _model(eval_slot_init="zeros")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("cox", wsi_dim=None, pathways=None, n_genes=3, n_bins=4)
    with pytest.raises(ValueError, match="pathways"):
        build_model("slotspe", wsi_dim=WSI_DIM, pathways=None, n_genes=N_GENES, n_bins=4)


def test_wrong_input_shapes_are_named():
    model = _model().eval()
    batch = _batch()
    with pytest.raises(ValueError, match="batch.wsi"):
        model(ModelBatch(wsi=batch.wsi[..., :5], omics=batch.omics))
    with pytest.raises(ValueError, match="omics"):
        model(ModelBatch(wsi=batch.wsi, omics=batch.omics[:, :5]))
