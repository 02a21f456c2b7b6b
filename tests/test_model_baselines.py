"""Baselines in the SlotSPE harness: omics-only SNN and WSI-only gated-attention MIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slotspe_pipe.model import ABMILConfig, ModelBatch, SNNConfig, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wsi_batch(seed: int = 0) -> ModelBatch:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(10)[None, :] < torch.tensor([10, 4, 7])[:, None]
    wsi = torch.randn(3, 10, 16, generator=gen) * mask[..., None]
    return ModelBatch(wsi=wsi, wsi_mask=mask)


def test_abmil_shapes_and_attention_over_real_patches():
    torch.manual_seed(0)
    model = build_model("abmil", wsi_dim=16, pathways=None, n_genes=None, n_bins=4).eval()
    assert model.modalities == frozenset({"wsi"})
    batch = _wsi_batch()
    out = model(batch)
    assert out.logits.shape == (3, 4) and out.aux == {}
    attn = out.attention["patch_attention"]
    assert attn.shape == (3, 10)
    assert torch.all(attn[~batch.wsi_mask] == 0)
    torch.testing.assert_close(attn.sum(1), torch.ones(3))


def test_abmil_padding_values_change_nothing():
    torch.manual_seed(0)
    model = build_model("abmil", wsi_dim=16, pathways=None, n_genes=None, n_bins=4).eval()
    batch = _wsi_batch()
    noisy = batch.wsi.clone()
    noisy[~batch.wsi_mask] = float("nan")
    out = model(ModelBatch(wsi=noisy, wsi_mask=batch.wsi_mask)).logits
    assert torch.equal(out, model(batch).logits)
    alone = model(ModelBatch(wsi=batch.wsi[1:2, :4])).logits
    torch.testing.assert_close(alone, out[1:2], atol=1e-6, rtol=1e-6)


def test_snn_shapes_and_rejects_patients_without_rna():
    torch.manual_seed(0)
    model = build_model("snn", wsi_dim=None, pathways=None, n_genes=30, n_bins=4)
    assert model.modalities == frozenset({"omics"})
    assert isinstance(model.config, SNNConfig)
    omics = torch.randn(5, 30)
    out = model.eval()(ModelBatch(omics=omics))
    assert out.logits.shape == (5, 4) and out.aux == {} and out.attention == {}
    assert torch.equal(out.logits, model(ModelBatch(omics=omics)).logits)
    with pytest.raises(ValueError, match="without RNA"):
        model(ModelBatch(omics=omics, omics_present=torch.tensor([True, False, True, True, True])))
    with pytest.raises(ValueError, match=r"\[B, 30\]"):
        model(ModelBatch(omics=omics[:, :10]))


@pytest.mark.parametrize("name", ["snn", "abmil"])
def test_baselines_overfit_tiny_batch(name: str):
    torch.manual_seed(0)
    model = build_model(
        name, wsi_dim=16, pathways=None, n_genes=30, n_bins=4, config={"dropout": 0.0}
    )
    gen = torch.Generator().manual_seed(1)
    batch = ModelBatch(
        wsi=torch.randn(6, 10, 16, generator=gen),
        wsi_mask=torch.ones(6, 10, dtype=torch.bool),
        omics=torch.randn(6, 30, generator=gen),
    )
    bins, events = torch.tensor([0, 1, 2, 3, 0, 2]), torch.tensor([1, 1, 0, 1, 0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    history = []
    model.train()
    for _ in range(50):
        opt.zero_grad()
        loss, parts = model.loss(model(batch), bins, events)
        loss.backward()
        opt.step()
        history.append(parts["total"])
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])


def test_baseline_configs_round_trip_and_reject_unknown_keys():
    assert ABMILConfig.from_dict(ABMILConfig().to_dict()) == ABMILConfig()
    cfg = SNNConfig.from_dict({"hidden": [64, 32]})
    assert cfg.hidden == (64, 32)
    assert SNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="hiden"):
        build_model("snn", wsi_dim=None, pathways=None, n_genes=30, n_bins=4, config={"hiden": [8]})
    with pytest.raises(ValueError, match="activation"):
        SNNConfig(activation="relu")
