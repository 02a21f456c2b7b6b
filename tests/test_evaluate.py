"""Survival metrics, curve alignment, Kaplan-Meier output and the Cox baseline, on real TCGA-BLCA
survival data where it matters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from slotspe_pipe.coxph import CoxConfig, cox_features, fit_cox, pathway_scores
from slotspe_pipe.evaluate import (
    SurvivalCurves,
    censoring_horizon,
    evaluation_times,
    harrell_c,
    json_clean,
    plot_km,
    summarize_folds,
    survival_metrics,
    truncate_follow_up,
    write_attention_record,
)


@pytest.fixture(scope="module")
def blca_labels(tcga_dir: Path) -> pd.DataFrame:
    """Patient-level disease-specific survival of TCGA-BLCA (event = 1 observed)."""
    clin = pd.read_csv(tcga_dir / "blca" / "clinical.csv").drop_duplicates("case_id")
    clin = clin.dropna(subset=["survival_months_dss", "censorship_dss"])
    return pd.DataFrame(
        {
            "case_id": clin.case_id.to_numpy(),
            "time": clin.survival_months_dss.to_numpy(float),
            "event": (1 - clin.censorship_dss.to_numpy(int)),
        }
    )


def test_discrete_curves_linear_between_edges():
    hazards = np.array([[0.1, 0.2, 0.5, 0.5]])
    edges = np.array([0.0, 10.0, 20.0, 30.0, np.inf])
    curves = SurvivalCurves.from_discrete(hazards, edges, last_edge=50.0)
    assert curves.knots.tolist() == [10.0, 20.0, 30.0, 50.0]
    s = curves.at([0.0, 5.0, 10.0, 15.0, 30.0, 40.0, 50.0, 80.0])[0]
    np.testing.assert_allclose(s, [1.0, 0.95, 0.9, 0.81, 0.36, 0.27, 0.18, 0.18])
    # Without a last edge the open bin adds no knot: S stays at S(30) afterwards.
    open_ended = SurvivalCurves.from_discrete(hazards, edges)
    assert open_ended.at([100.0])[0, 0] == pytest.approx(0.36)


def test_discrete_curves_step_at_upper_edges():
    hazards = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 0.0, 0.0]])
    edges = np.array([0.0, 10.0, 20.0, 30.0, np.inf])
    curves = SurvivalCurves.from_discrete(hazards, edges, interpolation="step")
    assert curves.knots.tolist() == [10.0, 20.0, 30.0]  # the infinite edge is no knot
    s = curves.at([0.0, 9.99, 10.0, 15.0, 20.0, 29.0, 30.0, 500.0])
    expected0 = [1.0, 1.0, 0.9, 0.9, 0.72, 0.72, 0.36, 0.36]
    np.testing.assert_allclose(s[0], expected0)
    np.testing.assert_allclose(s[1], 1.0)


def test_curves_validate_shapes():
    with pytest.raises(ValueError, match="edges"):
        SurvivalCurves.from_discrete(np.zeros((2, 4)), np.arange(4.0))
    with pytest.raises(ValueError, match="increasing"):
        SurvivalCurves(np.array([2.0, 1.0]), np.ones((1, 2)))


def _split(labels: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    val = rng.random(len(labels)) < 0.25
    return labels[~val], labels[val]


def test_metrics_use_survival_at_exactly_the_evaluation_times(blca_labels):
    """IBS and AUC must score S(t) at the same t they are evaluated at (the reference misaligns)."""
    train, val = _split(blca_labels)
    rng = np.random.default_rng(1)
    hazards = rng.uniform(0.05, 0.4, size=(len(val), 4))
    edges = np.array([0.0, 8.0, 16.0, 35.0, np.inf])
    curves = SurvivalCurves.from_discrete(hazards, edges, last_edge=float(train.time.max()))
    risk = -curves.values.sum(axis=1)
    m = survival_metrics(
        train.time.to_numpy(),
        train.event.to_numpy(),
        val.time.to_numpy(),
        val.event.to_numpy(),
        risk,
        curves,
    )
    times = np.asarray(m["eval_times"])
    assert times.size >= 5
    y_train = Surv.from_arrays(train.event.astype(bool), train.time)
    horizon = censoring_horizon(train.time.to_numpy(), train.event.to_numpy())
    t_val, e_val = truncate_follow_up(val.time.to_numpy(), val.event.to_numpy(), horizon)
    y_val = Surv.from_arrays(e_val, t_val)
    manual_ibs = integrated_brier_score(y_train, y_val, curves.at(times), times)
    manual_auc = cumulative_dynamic_auc(y_train, y_val, 1.0 - curves.at(times), times)[1]
    assert m["ibs"] == pytest.approx(manual_ibs)
    assert m["auc_mean"] == pytest.approx(manual_auc)
    # Survival taken at the bin index instead of the time (the reference's mistake) differs.
    misaligned = np.repeat(curves.values[:, :1], times.size, axis=1)
    assert integrated_brier_score(y_train, y_val, misaligned, times) != pytest.approx(manual_ibs)
    assert m["n_val"] == len(val) and m["events_val"] == int(val.event.sum())


def test_informative_prediction_beats_km_reference(blca_labels):
    """A predictor that knows the truth gets C >> 0.5 and an IBS below the Kaplan-Meier one."""
    train, val = _split(blca_labels, seed=3)
    t = val.time.to_numpy()
    # Survival curves that drop right at the patient's own event time (an oracle).
    knots = np.unique(np.concatenate([train.time, t]))
    values = np.where(
        knots[None, :] >= t[:, None], np.where(val.event.to_numpy()[:, None] == 1, 0.05, 0.6), 0.95
    )
    curves = SurvivalCurves(knots, values)
    m = survival_metrics(
        train.time.to_numpy(), train.event.to_numpy(), t, val.event.to_numpy(), -t, curves
    )
    assert m["c_index"] > 0.95
    assert m["c_index_ipcw"] > 0.9
    assert m["ibs"] < m["ibs_km_reference"]
    rng = np.random.default_rng(0)
    noise_c = []
    for _ in range(20):
        m_noise = survival_metrics(
            train.time.to_numpy(),
            train.event.to_numpy(),
            t,
            val.event.to_numpy(),
            rng.normal(size=len(val)),
            None,
        )
        noise_c.append(m_noise["c_index"])
    assert 0.44 < np.mean(noise_c) < 0.56  # random risks: chance on average
    assert math.isnan(m_noise["ibs"])  # no curves, no Brier score


def test_validation_follow_up_beyond_training_is_truncated():
    train_t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    train_e = np.array([1, 0, 1, 1, 0, 1, 1, 0])  # last training time censored: G drops to 0 at 8
    val_t = np.array([1.5, 2.5, 3.5, 4.5, 9.0, 12.0])  # follow-up beyond training
    val_e = np.array([1, 1, 0, 1, 1, 0])
    horizon = censoring_horizon(train_t, train_e)
    assert horizon < 8.0
    t, e = truncate_follow_up(val_t, val_e, horizon)
    assert t.max() == horizon and not e[val_t > horizon].any()
    times = evaluation_times(t, e, horizon)
    assert times.size and times.min() >= 1.5 and times.max() < min(t.max(), horizon)
    m = survival_metrics(train_t, train_e, val_t, val_e, -val_t, None)
    assert np.isfinite(m["c_index_ipcw"])


def test_no_events_gives_nan_not_a_crash():
    m = survival_metrics(
        np.array([1.0, 2.0, 3.0]),
        np.array([1, 0, 1]),
        np.array([1.0, 2.0]),
        np.array([0, 0]),
        np.array([0.1, 0.2]),
        None,
    )
    assert math.isnan(m["c_index"]) and math.isnan(m["c_index_ipcw"])
    assert json_clean(m)["c_index"] is None


def test_km_plot_and_logrank(tmp_path, blca_labels):
    rng = np.random.default_rng(0)
    t = blca_labels.time.to_numpy()
    e = blca_labels.event.to_numpy()
    high = t < np.median(t)  # split on the outcome itself: must be very significant
    p = plot_km(tmp_path / "km.png", t, e, high, "test")
    assert p < 1e-6
    assert (tmp_path / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p_random = plot_km(tmp_path / "km_random.png", t, e, rng.random(len(t)) < 0.5, "random")
    assert p_random > 1e-3
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp leftovers


def test_summarize_folds_mean_std_and_pooled():
    folds = [
        {"c_index": 0.6, "ibs": 0.2},
        {"c_index": 0.7, "ibs": float("nan")},
        {"c_index": 0.8, "ibs": 0.1},
    ]
    preds = pd.DataFrame(
        {"time": [1.0, 2.0, 3.0, 4.0], "event": [1, 1, 0, 1], "risk": [4.0, 3.0, 2.0, 1.0]}
    )
    s = summarize_folds(folds, preds)
    assert s["c_index_mean"] == pytest.approx(0.7)
    assert s["c_index_std"] == pytest.approx(np.std([0.6, 0.7, 0.8]))
    assert s["ibs_mean"] == pytest.approx(0.15) and s["ibs_n_defined"] == 2
    assert (
        s["c_index_pooled"] == pytest.approx(harrell_c(preds.time, preds.event, preds.risk)) == 1.0
    )


def test_attention_record_roundtrip(tmp_path):
    coords = np.array([[0, 0], [256, 0], [0, 256]], np.int32)
    attn = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]], np.float32)
    write_attention_record(
        tmp_path / "A.npz",
        case_id="A",
        arrays={"coords": coords, "wsi_slot_attention": attn, "patch_slide": np.zeros(3, np.int32)},
        slide_ids=["s1"],
        pathways=["P1", "P2"],
    )
    with np.load(tmp_path / "A.npz") as z:
        assert str(z["case_id"]) == "A"
        np.testing.assert_array_equal(z["coords"], coords)
        np.testing.assert_allclose(z["wsi_slot_attention"], attn)
        assert z["slide_ids"].tolist() == ["s1"] and z["pathways"].tolist() == ["P1", "P2"]


def test_pathway_scores_are_gene_means():
    z = np.array([[1.0, 3.0, -2.0], [0.0, 2.0, 4.0]])
    scores = pathway_scores(z, [np.array([0, 1]), np.array([2])])
    np.testing.assert_allclose(scores, [[2.0, -2.0], [1.0, 4.0]])


def test_cox_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="l1_ration"):
        CoxConfig.from_dict({"l1_ration": 0.5})


def test_cox_baseline_on_blca_pathways(tcga_dir: Path):
    """Pathway-score Cox on real BLCA expression, fitted on one published training fold only,
    ranks the held-out patients better than chance, with proper survival curves."""
    from slotspe_pipe.omics import fit_normalizer, map_pathways, read_gene_sets

    rna = pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)
    clin = (
        pd.read_csv(tcga_dir / "blca" / "clinical.csv")
        .drop_duplicates("case_id")
        .set_index("case_id")
    )
    split = pd.read_csv(tcga_dir / "blca" / "splits" / "splits_1.csv")
    train = [c for c in split.train.dropna() if c in rna.index and c in clin.index]
    val = [c for c in split.val.dropna() if c in rna.index and c in clin.index]
    sets, _ = read_gene_sets([tcga_dir / "signatures" / "combine_signatures.csv"])
    membership = map_pathways(sets, list(rna.columns)).membership
    norm = fit_normalizer(rna.loc[train].to_numpy())
    cfg = CoxConfig()
    x_train = cox_features(norm.transform(rna.loc[train].to_numpy()), membership, cfg)
    x_val = cox_features(norm.transform(rna.loc[val].to_numpy()), membership, cfg)
    t_train = clin.loc[train, "survival_months_dss"].to_numpy(float)
    e_train = 1 - clin.loc[train, "censorship_dss"].to_numpy(int)
    fit = fit_cox(x_train, t_train, e_train, cfg)
    t_val = clin.loc[val, "survival_months_dss"].to_numpy(float)
    e_val = 1 - clin.loc[val, "censorship_dss"].to_numpy(int)
    curves = fit.curves(x_val)
    m = survival_metrics(t_train, e_train, t_val, e_val, fit.risk(x_val), curves)
    assert m["c_index"] > 0.6
    assert np.all(np.diff(curves.values, axis=1) <= 1e-12)  # survival never increases
    assert np.isfinite(m["ibs"]) and 0 < m["ibs"] < 0.3
