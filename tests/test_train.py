"""Cross-validated training: lazy patch datasets, the training loop, resume, the `cv` CLI, and
learning checks on synthetic cohorts with a planted signal and on real TCGA-BLCA omics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.cohort import CohortConfig, assemble_cohort, load_cohort
from slotspe_pipe.dataset import (
    EpochBatchSampler,
    PatientRecords,
    ReaderCache,
    SurvivalDataset,
    TokenBudgetBatchSampler,
    build_fold_data,
    collate_patients,
)
from slotspe_pipe.store.features import FeatureReader, synthetic_attrs, write_features
from slotspe_pipe.train import (
    FoldRun,
    TrainConfig,
    load_checkpoint,
    resolve_configs,
    run_cv,
    run_fold,
)

# A SlotSPE small enough for CPU tests; every structural piece is still there.
TINY_SLOTSPE = [
    "dim=32",
    "wsi_hidden=32",
    "n_slots=4",
    "slot_iters=2",
    "slot_heads=2",
    "slot_head_dim=16",
    "intra_heads=2",
    "cross_heads=2",
    "recon_heads=2",
    "cross_iters=1",
]
TINY_ABMIL = {"hidden": 32, "attn_dim": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# Synthetic cohorts with a planted signal, written through the real stores and cohort builder
# ----------------------------------------------------------------------------------------------


def write_cohort(
    root: Path,
    *,
    n_patients: int = 60,
    dim: int = 16,
    signal: float = 1.5,
    shuffle_labels: bool = False,
    slides: bool = True,
    omics: bool = True,
    no_rna: int = 0,
    n_folds: int = 3,
    seed: int = 0,
) -> Path:
    """Patients with latent risk z: hazard exp(signal * z); some patches and two pathways carry z.

    ``shuffle_labels`` permutes the (time, event) pairs after the inputs are made, so the inputs
    carry no information about the labels.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cases = [f"P{i:03d}" for i in range(n_patients)]
    z = rng.normal(size=n_patients)
    t_event = rng.exponential(30.0 * np.exp(-signal * z))
    t_cens = rng.uniform(5.0, 120.0, size=n_patients)
    time = np.minimum(t_event, t_cens).round(3) + 0.01
    event = (t_event <= t_cens).astype(int)
    if shuffle_labels:
        perm = rng.permutation(n_patients)
        time, event = time[perm], event[perm]
    # latent_risk (ignored by the cohort builder) gives the oracle C-index a model can approach.
    pd.DataFrame({"case_id": cases, "time": time, "event": event, "latent_risk": z}).to_csv(
        root / "clinical.csv", index=False
    )
    cfg = dict(clinical=root / "clinical.csv", time_col="time", event_col="event", n_folds=n_folds)
    if omics:
        genes = [f"GENE{j:02d}" for j in range(40)]
        sig = pd.DataFrame({f"PATHWAY_{p}": genes[5 * p : 5 * p + 5] for p in range(8)})
        sig.to_csv(root / "signatures.csv", index=False)
        expr = rng.normal(5.0, 1.0, size=(n_patients, 40))
        expr[:, :5] += 1.2 * z[:, None]  # PATHWAY_0 up with risk
        expr[:, 5:10] -= 1.2 * z[:, None]  # PATHWAY_1 down with risk
        keep = n_patients - no_rna
        rna = pd.DataFrame(expr[:keep], index=cases[:keep], columns=genes)
        rna.to_csv(root / "rna.csv")
        cfg.update(rna=root / "rna.csv", signatures=[root / "signatures.csv"])
    if slides:
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        rows = []
        for i, case in enumerate(cases):
            for s in range(1 + i % 2):
                n = int(rng.integers(20, 60))
                feats = rng.normal(size=(n, dim))
                tumour = rng.random(n) < 0.4
                feats[tumour] += 2.5 * z[i] * direction
                coords = np.stack([(np.arange(n) % 8) * 256, (np.arange(n) // 8) * 256], axis=1)
                slide_id = f"{case}-S{s}"
                write_features(
                    root / "features" / f"{slide_id}.zarr",
                    feats.astype(np.float16),
                    coords,
                    synthetic_attrs(slide_id, dim, "test"),
                )
                rows.append({"slide_id": slide_id, "patient_id": case})
        pd.DataFrame(rows).to_csv(root / "slides.csv", index=False)
        cfg.update(slides=root / "slides.csv", features=root / "features")
    out = root / "cohort"
    assemble_cohort(CohortConfig(**cfg), out)
    return out


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("mm"), n_patients=40, no_rna=6, n_folds=2)


@pytest.fixture(scope="module")
def blca_cohort(tmp_path_factory, tcga_dir: Path) -> Path:
    """The real TCGA-BLCA omics cohort (disease-specific survival, published 5-fold splits)."""
    out = tmp_path_factory.mktemp("blca") / "cohort"
    assemble_cohort(
        CohortConfig(
            clinical=tcga_dir / "blca" / "clinical.csv",
            time_col="survival_months_dss",
            event_col="censorship_dss",
            rna=tcga_dir / "blca" / "rna_xena.csv",
            signatures=[tcga_dir / "signatures" / "combine_signatures.csv"],
            splits=tcga_dir / "blca" / "splits",
        ),
        out,
    )
    return out


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


def _records(paths: list[list[str]]) -> PatientRecords:
    n = len(paths)
    return PatientRecords(
        case_ids=tuple(f"P{i}" for i in range(n)),
        time=np.ones(n, np.float32),
        event=np.ones(n, np.int64),
        bin_index=np.zeros(n, np.int64),
        feature_paths=tuple(tuple(p) for p in paths),
    )


def test_patch_sampling_reads_the_right_rows(multimodal):
    cohort = load_cohort(multimodal)
    two_slides = cohort.slides[cohort.slides.case_id == "P001"].features_path.tolist()
    assert len(two_slides) == 2
    whole = np.concatenate([FeatureReader(p).features() for p in two_slides])
    ds = SurvivalDataset(_records([two_slides]), n_patches=16, seed=3)
    item = ds[(0, 0)]
    rows = ds.rows_for(0)
    assert len(rows) == 16 and len(set(rows.tolist())) == 16  # without replacement
    np.testing.assert_array_equal(item["wsi"].numpy(), whole[rows])
    assert not np.array_equal(ds[(1, 0)]["wsi"].numpy(), item["wsi"].numpy())  # new draw per epoch
    np.testing.assert_array_equal(ds[(0, 0)]["wsi"].numpy(), item["wsi"].numpy())  # reproducible
    everything = SurvivalDataset(_records([two_slides]), n_patches=None)
    np.testing.assert_array_equal(everything[0]["wsi"].numpy(), whole)
    coords, which, slide_ids = everything.patch_locations(0)
    assert coords.shape == (len(whole), 2) and which.max() == 1 and len(slide_ids) == 2


def test_collate_pads_and_masks(multimodal):
    cohort = load_cohort(multimodal)
    paths = [[p] for p in cohort.slides.features_path[:3]]
    ds = SurvivalDataset(_records(paths), n_patches=10_000)  # more than anyone has: take all
    batch = collate_patients([ds[i] for i in range(3)])
    sizes = [FeatureReader(p[0]).n for p in paths]
    assert batch["wsi"].shape[:2] == (3, max(sizes))
    assert batch["wsi_mask"].sum(dim=1).tolist() == sizes
    for i, n in enumerate(sizes):
        assert not batch["wsi"][i, n:].any()  # padding is zeros, and masked


def test_reader_cache_is_bounded(multimodal):
    cohort = load_cohort(multimodal)
    cache = ReaderCache(max_open=3)
    for p in cohort.slides.features_path[:10]:
        cache.get(p)
    assert len(cache) == 3


def test_token_budget_batches():
    sizes = [5, 100, 7, 300, 50, 6]
    batches = list(TokenBudgetBatchSampler(sizes, max_tokens=120))
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        longest = max(sizes[i] for i in b)
        assert len(b) == 1 or longest * len(b) <= 120
    sampler = EpochBatchSampler(10, 4, seed=1)
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) == first and len(first) == 3
    assert sorted(i for b in first for _, i in b) == list(range(10))


def test_fold_data_fits_on_training_only(multimodal):
    cohort = load_cohort(multimodal)
    data = build_fold_data(cohort, 0, modalities=frozenset({"wsi", "omics"}))
    train_ids, _ = cohort.fold_split(0)
    rows = cohort.omics_rows([c for c in train_ids if cohort.patients.at[c, "has_omics"]])
    np.testing.assert_allclose(
        data.normalizer.mean, cohort.omics.expression[rows].mean(axis=0), rtol=1e-5
    )
    observed = data.train.time[data.train.event == 1]
    np.testing.assert_allclose(data.time_bin_edges[1:-1], np.quantile(observed, [0.25, 0.5, 0.75]))
    assert not data.val.omics_present.all()  # patients without RNA stay, flagged
    assert not data.val.omics[~data.val.omics_present].any()
    omics_only = build_fold_data(cohort, 0, modalities=frozenset({"omics"}))
    assert omics_only.val.omics_present.all()  # omics-only models drop them
    assert (
        sum(omics_only.excluded["val"].values()) + sum(omics_only.excluded["train"].values()) == 6
    )


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def test_resolve_configs_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model:\n  dropout: 0.5\ntrain:\n  lr: 0.001\n  epochs: 7\n")
    model_cfg, train_cfg = resolve_configs(
        "snn",
        config_file=cfg_file,
        overrides=["hidden=[64, 64]", "train.epochs=9"],
        train_flags={"weight_decay": 0.3, "lr": None},
    )
    assert model_cfg == {"activation": "elu", "dropout": 0.5, "hidden": [64, 64]}
    assert train_cfg.lr == 0.001 and train_cfg.epochs == 9 and train_cfg.weight_decay == 0.3
    assert train_cfg.cox_weight == 1.0  # the SNN recipe's ranking term
    assert train_cfg.calibration_holdout == 0.2  # and its held-out recalibration
    assert resolve_configs("abmil")[1].calibration_holdout == 0.0  # doubles cost: opt-in
    with pytest.raises(ValueError, match="calibration_holdout"):
        TrainConfig(calibration_holdout=0.6)
    assert resolve_configs("snn", train_flags={"cox_weight": 0.0})[1].cox_weight == 0.0
    assert resolve_configs("slotspe")[1].cox_weight == 0.0  # the paper's objective
    with pytest.raises(ValueError, match="cox_weight"):
        TrainConfig(cox_weight=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        resolve_configs("snn", overrides=["train.learning_rate=1"])
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")


# ----------------------------------------------------------------------------------------------
# Learning: planted signal found, shuffled labels not
# ----------------------------------------------------------------------------------------------


def _oracle_c(cohort_dir: Path) -> float:
    """Harrell's C of the true latent risk: the ceiling for any model on these labels."""
    from slotspe_pipe.evaluate import harrell_c

    clin = pd.read_csv(cohort_dir.parent / "clinical.csv")
    return harrell_c(clin.time, clin.event, clin.latent_risk)


@pytest.mark.parametrize("shuffle", [False, True])
def test_abmil_finds_planted_wsi_signal(tmp_path, shuffle):
    cohort_dir = write_cohort(
        tmp_path, n_patients=90, omics=False, shuffle_labels=shuffle, seed=1, signal=2.0
    )
    summary = run_cv(
        load_cohort(cohort_dir),
        tmp_path / "run",
        model="abmil",
        model_config=TINY_ABMIL,
        train_config=TrainConfig(epochs=12, lr=3e-3, batch_size=16, patches=32),
        write_attention=False,
    )
    if shuffle:
        assert abs(summary["c_index_pooled"] - 0.5) < 0.12
    else:
        oracle = _oracle_c(cohort_dir)  # ~0.85
        assert summary["c_index_mean"] > max(0.7, oracle - 0.1)
        assert summary["c_index_pooled"] > 0.7


@pytest.mark.parametrize("shuffle", [False, True])
def test_snn_finds_planted_omics_signal(tmp_path, shuffle):
    cohort_dir = write_cohort(
        tmp_path, n_patients=150, slides=False, shuffle_labels=shuffle, seed=2
    )
    summary = run_cv(
        load_cohort(cohort_dir),
        tmp_path / "run",
        model="snn",
        model_config={},
        train_config=TrainConfig(epochs=20, lr=5e-4, optimizer="adamw"),
    )
    if shuffle:
        assert abs(summary["c_index_pooled"] - 0.5) < 0.1
    else:
        oracle = _oracle_c(cohort_dir)  # ~0.78
        assert summary["c_index_mean"] > max(0.65, oracle - 0.1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_slotspe_finds_planted_signal_with_and_without_omics(tmp_path, shuffle):
    """Slides and RNA both carry the latent risk: SlotSPE must find it with both modalities and,
    with the RNA withheld at evaluation, from the slides alone; shuffled labels stay near 0.5."""
    cohort_dir = write_cohort(tmp_path, n_patients=90, shuffle_labels=shuffle, seed=3)
    model_cfg, _ = resolve_configs("slotspe", overrides=TINY_SLOTSPE + ["omics_dropout=0.25"])
    summary = run_cv(
        load_cohort(cohort_dir),
        tmp_path / "run",
        model="slotspe",
        model_config=model_cfg,
        train_config=TrainConfig(epochs=10, lr=1e-3, batch_size=8, patches=32),
        missing_omics=True,
        write_attention=False,
    )
    if shuffle:
        assert abs(summary["c_index_pooled"] - 0.5) < 0.12
        assert abs(summary["c_index_missing_omics_pooled"] - 0.5) < 0.12
    else:
        oracle = _oracle_c(cohort_dir)
        assert summary["c_index_mean"] > max(0.7, oracle - 0.15)
        assert summary["c_index_missing_omics_mean"] > 0.65


def test_calibration_is_skipped_when_too_few_deaths_are_held_out(tmp_path):
    """A small cohort leaves a handful of held-out deaths: no map is fitted (five parameters would
    chase noise), no second model is trained, and the predictions are the model's own."""
    cohort = load_cohort(write_cohort(tmp_path, n_patients=45, slides=False, seed=4))
    runs = {}
    for holdout in (0.0, 0.2):
        runs[holdout] = tmp_path / f"run_{holdout}"
        run_cv(
            cohort,
            runs[holdout],
            model="snn",
            model_config={},
            train_config=TrainConfig(epochs=2, calibration_holdout=holdout),
        )
    saved = json.loads((runs[0.2] / "fold_0" / "calibration" / "calibration.json").read_text())
    assert "too few to fit" in saved["all"]["skipped"]
    assert not (runs[0.2] / "fold_0" / "calibration" / "checkpoint.pt").exists()
    a = pd.read_csv(runs[0.0] / "predictions.csv")
    b = pd.read_csv(runs[0.2] / "predictions.csv")
    np.testing.assert_array_equal(a.risk, b.risk)


# ----------------------------------------------------------------------------------------------
# SlotSPE end to end: outputs, checkpoint, missing omics, attention
# ----------------------------------------------------------------------------------------------


def test_slotspe_cv_outputs(tmp_path, multimodal):
    run_dir = tmp_path / "run"
    code = cli_main(
        ["cv", str(multimodal), "--model", "slotspe", "--epochs", "2", "--patches", "24"]
        + ["--batch-size", "8", "--device", "cpu", "--workers", "0", "--missing-omics"]
        + [a for kv in TINY_SLOTSPE for a in ("--set", kv)]
        + ["--attention-png", "1", "-o", str(run_dir)]
    )
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("c_index_mean", "c_index_std", "c_index_pooled", "c_index_ipcw_mean", "ibs_mean"):
        assert key in summary
    assert summary["model"] == "slotspe" and summary["seeds"] == [1]
    assert len(summary["folds"]) == 2
    for f in summary["folds"]:
        assert {"c_index", "c_index_ipcw", "ibs", "n_val", "events_val"} <= set(f)
        assert "c_index_missing_omics" in f
    assert "c_index_missing_omics_mean" in summary
    preds = pd.read_csv(run_dir / "predictions.csv")
    assert {"fold", "case_id", "time", "event", "risk", "split", "risk_missing_omics"} <= set(preds)
    assert sorted(preds.case_id) == sorted(load_cohort(multimodal).patients.index)
    assert (run_dir / "km.png").is_file()

    fold = run_dir / "fold_0"
    history = pd.read_csv(fold / "history.csv")
    assert history.epoch.tolist() == [1, 2] and history.val_c_index.notna().all()
    ckpt = load_checkpoint(fold / "checkpoint.pt")  # weights_only=True
    assert ckpt["status"] == "complete" and ckpt["epoch"] == 2
    assert len(ckpt["normalizer"]["mean"]) == 40 and len(ckpt["time_bin_edges"]) == 5
    assert "optimizer_state" not in ckpt

    metrics = json.loads((fold / "metrics.json").read_text())
    val_ids = pd.read_csv(fold / "predictions.csv").case_id.tolist()
    assert metrics["n_val"] == len(val_ids)
    npz = sorted((fold / "attention").glob("*.npz"))
    assert len(npz) == len(val_ids) and len(list((fold / "attention").glob("*.png"))) == 1
    with np.load(npz[0]) as rec:
        n = rec["coords"].shape[0]
        assert rec["wsi_slot_attention"].shape == (4, n)
        np.testing.assert_allclose(rec["wsi_slot_attention"].sum(axis=1), 1.0, atol=1e-3)
        assert rec["omics_slot_attention"].shape == (4, len(rec["pathways"])) == (4, 8)
        assert rec["wsi_gate"].shape == (4,) and rec["patch_slide"].shape == (n,)
        case = str(rec["case_id"])
    slides = load_cohort(multimodal).slides
    expected = sum(FeatureReader(p).n for p in slides.features_path[slides.case_id == case])
    assert n == expected  # evaluation saw every patch


def test_missing_omics_prediction_ignores_rna(tmp_path, multimodal):
    """With omics_present False, the prediction must not depend on the RNA values at all."""
    from slotspe_pipe.model import build_model
    from slotspe_pipe.train import predict

    cohort = load_cohort(multimodal)
    data = build_fold_data(cohort, 0, modalities=frozenset({"wsi", "omics"}))
    model_cfg, _ = resolve_configs("slotspe", overrides=TINY_SLOTSPE)
    model = build_model(
        "slotspe", wsi_dim=16, pathways=data.membership, n_genes=40, n_bins=4, config=model_cfg
    )
    ds = SurvivalDataset(data.val, n_patches=None)
    a = predict(model, ds, device="cpu", eval_tokens=4096, omics_absent=True)
    scrambled = SurvivalDataset(
        PatientRecords(
            **{
                **data.val.__dict__,
                "omics": np.random.default_rng(0)
                .normal(size=data.val.omics.shape)
                .astype(np.float32),
            }
        ),
        n_patches=None,
    )
    b = predict(model, scrambled, device="cpu", eval_tokens=4096, omics_absent=True)
    np.testing.assert_allclose(a.risk, b.risk, rtol=1e-5)
    c = predict(model, ds, device="cpu", eval_tokens=4096)
    assert not np.allclose(a.risk, c.risk)  # with RNA the prediction does change
    d = predict(model, ds, device="cpu", eval_tokens=64)  # other batching, same answer
    np.testing.assert_allclose(c.risk, d.risk, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Resume, refusal, per-fold runs + aggregation
# ----------------------------------------------------------------------------------------------


def test_interrupted_fold_resumes_to_the_same_model(tmp_path, multimodal, monkeypatch):
    import slotspe_pipe.train as train_mod

    cohort = load_cohort(multimodal)
    run = FoldRun(
        model_name="abmil",
        model_config=TINY_ABMIL,
        train_config=TrainConfig(epochs=4, lr=1e-3, batch_size=8, patches=16),
        seed=5,
        write_attention=False,
    )
    straight = run_fold(cohort, 0, run, tmp_path / "straight")

    real_write = train_mod._write_csv

    def interrupt_after_epoch_2(path, frame):
        real_write(path, frame)
        if path.name == "history.csv" and len(frame) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_write_csv", interrupt_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_fold(cohort, 0, run, tmp_path / "resumed")
    monkeypatch.setattr(train_mod, "_write_csv", real_write)
    partial = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert partial["status"] == "in_progress" and partial["epoch"] == 2
    assert "optimizer_state" in partial
    resumed = run_fold(cohort, 0, run, tmp_path / "resumed")

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model_state"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert resumed["c_index"] == pytest.approx(straight["c_index"])
    h1 = pd.read_csv(tmp_path / "straight" / "history.csv")
    h2 = pd.read_csv(tmp_path / "resumed" / "history.csv")
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-6)

    # A finished fold is not retrained; other settings in the same directory are refused.
    assert run_fold(cohort, 0, run, tmp_path / "straight")["c_index"] == straight["c_index"]
    other = FoldRun(**{**run.__dict__, "train_config": TrainConfig(epochs=5, patches=16)})
    with pytest.raises(ValueError, match="different settings"):
        run_fold(cohort, 0, other, tmp_path / "straight")

    # Same settings, other data (a rebuilt cohort), metrics deleted as Snakemake does before a
    # rerun: the finished checkpoint must not be reused for the new data.
    (tmp_path / "straight" / "metrics.json").unlink()
    new_data = FoldRun(**{**run.__dict__, "data_fingerprint": "another cohort"})
    with pytest.raises(ValueError, match="checkpoint.pt: this fold was run with different"):
        run_fold(cohort, 0, new_data, tmp_path / "straight")
    replaced = FoldRun(**{**new_data.__dict__, "replace_stale": True})
    run_fold(cohort, 0, replaced, tmp_path / "straight")
    ckpt = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert ckpt["run_key"]["data"] == "another cohort" and ckpt["epoch"] == 4


def test_cohort_fingerprint_follows_the_features(tmp_path):
    cohort_dir = write_cohort(tmp_path, n_patients=8, n_folds=2)
    before = load_cohort(cohort_dir).fingerprint()
    assert load_cohort(cohort_dir).fingerprint() == before  # deterministic
    store = Path(load_cohort(cohort_dir).slides.features_path.iloc[0])
    reader = FeatureReader(store)
    feats, coords, attrs = reader.features(), reader.coords(), dict(reader.attrs)
    shutil.rmtree(store)  # re-extracted with other tiling: same path, other patches
    write_features(store, feats[:-1], coords[:-1], {**attrs, "tiles_settings_hash": "other"})
    assert load_cohort(cohort_dir).fingerprint() != before


def test_per_fold_jobs_then_aggregate_match_plain_cv(tmp_path, blca_cohort, capsys):
    per_fold = tmp_path / "per_fold"
    base = ["cv", str(blca_cohort), "--model", "coxph", "-o"]
    assert cli_main(base + [str(per_fold), "--fold", "0"]) == 0
    assert cli_main(base + [str(per_fold), "--aggregate"]) == 2
    assert "folds [1, 2, 3, 4]" in capsys.readouterr().err
    for k in (1, 2, 3, 4):
        assert cli_main(base + [str(per_fold), "--fold", str(k)]) == 0
    assert not (per_fold / "summary.json").exists()
    assert cli_main(base + [str(per_fold), "--aggregate"]) == 0
    plain = tmp_path / "plain"
    assert cli_main(base + [str(plain)]) == 0
    a = json.loads((per_fold / "summary.json").read_text())
    b = json.loads((plain / "summary.json").read_text())
    assert a["c_index_mean"] == pytest.approx(b["c_index_mean"])
    assert a["folds"] == [
        {**f, "seconds": a["folds"][i]["seconds"]} for i, f in enumerate(b["folds"])
    ]
    # Classical Cox on pathway scores: the level the omics-only SNN is held to.
    assert b["c_index_mean"] > 0.6
    assert {f["n_val"] for f in b["folds"]} <= {70, 71, 72, 75}


@pytest.mark.slow
def test_snn_on_real_blca(tmp_path, blca_cohort):
    """The default SNN recipe on the published BLCA splits, DSS, fixed last epoch, 3 seeds:
    the issue's bar is the classical Cox level of 0.62-0.64 (measured: 0.642 +- 0.035)."""
    summary = run_cv(
        load_cohort(blca_cohort),
        tmp_path / "run",
        model="snn",
        model_config={},
        train_config=resolve_configs("snn")[1],
        seeds=[1, 2, 3],
    )
    assert summary["c_index_mean"] >= 0.62
    fold_dir = tmp_path / "run" / "seed_1" / "fold_0"
    history = pd.read_csv(fold_dir / "history.csv")
    assert (history["loss_cox"] > 0).all()  # the ranking term was trained on
    # Recalibrated on held-out TRAINING patients, the curves are no worse than Kaplan-Meier's
    # (measured 0.225 vs 0.224; 0.29 without the recalibration).
    assert summary["ibs_mean"] < summary["ibs_km_reference_mean"] + 0.02
    calibration = json.loads((fold_dir / "calibration" / "calibration.json").read_text())["all"]
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    n_train = 359 - metrics["n_val"]
    assert abs(calibration["holdout_patients"] - 0.2 * n_train) <= 1  # from training only
    assert calibration["temperature"] > 1.5  # the raw network is overconfident
