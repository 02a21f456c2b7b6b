"""Clinical labels, folds, time bins and the cohort join, on the real TCGA-BLCA tables.

TCGA-BLCA (../shared/testdata/tcga/blca): 423 slide rows of 359 patients; disease-specific
survival (survival_months_dss, censorship_dss) gives 113 observed events; 360 expression rows, one
of them (TCGA-C4-A0F6) without clinical labels; 5 published SurvPath folds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.cohort import (
    DAYS_PER_MONTH,
    CohortConfig,
    CohortError,
    assemble_cohort,
    assign_time_bins,
    build_cohort,
    load_cohort,
    make_folds,
    read_clinical,
    read_splits,
    time_bin_edges,
)
from slotspe_pipe.omics import fit_normalizer
from slotspe_pipe.store.features import write_features

N_PATIENTS = 359
N_DSS_EVENTS = 113
N_OS_EVENTS = 156
FOLD_SIZES = {0: (289, 70), 1: (287, 72), 2: (284, 75), 3: (288, 71), 4: (288, 71)}


def blca_args(tcga: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cohort",
        "--clinical",
        str(tcga / "blca" / "clinical.csv"),
        "--time-col",
        "survival_months_dss",
        "--event-col",
        "censorship_dss",
        "--rna",
        str(tcga / "blca" / "rna_xena.csv"),
        "--signatures",
        str(tcga / "signatures" / "combine_signatures.csv"),
        "--splits",
        str(tcga / "blca" / "splits"),
        "-o",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def blca_cohort(tcga_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("blca") / "blca_dss"
    assert cli_main(blca_args(tcga_dir, out)) == 0
    return out


@pytest.fixture(scope="module")
def clinical(tcga_dir: Path) -> pd.DataFrame:
    return pd.read_csv(tcga_dir / "blca" / "clinical.csv", index_col=0)


# ------------------------------------------------------------------------------ BLCA cohort


def test_blca_patients_and_events(blca_cohort, clinical):
    cohort = load_cohort(blca_cohort)
    p = cohort.patients
    assert list(p.columns[:5]) == ["case_id", "time", "event", "has_omics", "slide_ids"]
    assert len(p) == N_PATIENTS and p.index.is_unique
    assert int(p.event.sum()) == N_DSS_EVENTS
    assert p.has_omics.all() and (p.slide_ids == "").all() and (p.time_unit == "months").all()
    per_patient = clinical.drop_duplicates("case_id").set_index("case_id")
    np.testing.assert_allclose(p.time, per_patient.loc[p.index, "survival_months_dss"])
    np.testing.assert_array_equal(p.event, 1 - per_patient.loc[p.index, "censorship_dss"])
    s = json.loads((blca_cohort / "summary.json").read_text())
    assert s["patients"]["in_cohort"] == N_PATIENTS and s["patients"]["excluded"] == {}
    assert s["events"] == {"observed": N_DSS_EVENTS, "censored": N_PATIENTS - N_DSS_EVENTS}
    assert s["clinical"]["rows"] == 423 and s["settings"]["event_is_censorship"] is True
    assert s["omics"]["patients_without_label"] == ["TCGA-C4-A0F6"]
    assert s["omics"]["pathways_kept"] == 331 and s["omics"]["genes_found_in_pathways"] == 1577


def test_blca_omics_store(blca_cohort, tcga_dir):
    cohort = load_cohort(blca_cohort)
    omics = cohort.omics
    assert omics is not None
    assert omics.patients.tolist() == cohort.patients.index.tolist()  # patients.csv order
    assert omics.expression.shape == (N_PATIENTS, 1577) and omics.expression.dtype == np.float32
    assert len(omics.pathways) == 331 and len(omics.membership) == 331
    rna = pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)
    raw = rna.loc[omics.patients.tolist(), omics.genes.tolist()].to_numpy(np.float32)
    np.testing.assert_array_equal(omics.expression, raw)  # raw values, never normalized
    cov = omics.attrs["coverage"]
    assert sum(c["listed"] for c in cov.values()) == 9745
    assert sum(c["found"] for c in cov.values()) == 4175
    assert sum(len(m) for m in omics.membership) == 4175
    src = omics.attrs["sources"]["rna"]
    assert src["sha256"] == "ac606737d57ff0a5dc7f2c1c1901704ee46bbae0336a081ded1715540dcb5535"
    assert omics.attrs["log2_applied"] is False
    coverage = pd.read_csv(blca_cohort / "pathways.csv")
    assert len(coverage) == 331 and coverage.kept.all()


def test_blca_given_splits_reproduced_exactly(blca_cohort, tcga_dir):
    cohort = load_cohort(blca_cohort)
    assert cohort.n_folds == 5
    for k, (n_train, n_val) in FOLD_SIZES.items():
        split = pd.read_csv(tcga_dir / "blca" / "splits" / f"splits_{k}.csv", index_col=0)
        train, val = cohort.fold_split(k)
        assert train == split.train.dropna().tolist()
        assert val == split.val.dropna().tolist()
        assert (len(train), len(val)) == (n_train, n_val)
        assert not set(train) & set(val)
        assert set(train) | set(val) == set(cohort.patients.index)
    folds = pd.read_csv(blca_cohort / "folds.csv")
    assert list(folds.columns) == ["fold", "case_id", "split"]
    assert set(folds.split) == {"train", "val"}
    # K-fold: each patient is validated exactly once.
    assert folds[folds.split == "val"].case_id.value_counts().eq(1).all()


def test_normalization_from_training_patients_only(blca_cohort, tcga_dir, tmp_path):
    cohort = load_cohort(blca_cohort)
    rna = pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)
    train, val = cohort.fold_split(0)
    x = cohort.omics.expression
    norm = fit_normalizer(x[cohort.omics_rows(train)], genes=cohort.omics.genes.tolist())
    genes = cohort.omics.genes.tolist()
    np.testing.assert_allclose(norm.mean, rna.loc[train, genes].mean(axis=0), rtol=1e-5)
    assert norm.n_fit == len(train) == 289
    assert not np.allclose(norm.mean, rna.loc[cohort.patients.index, genes].mean(axis=0))
    # Changing every validation patient's expression leaves the fold's statistics unchanged.
    changed = rna.copy()
    changed.loc[val] = changed.loc[val] + 5.0
    changed.to_csv(tmp_path / "rna_changed.csv")
    args = blca_args(tcga_dir, tmp_path / "changed")
    args[args.index("--rna") + 1] = str(tmp_path / "rna_changed.csv")
    assert cli_main(args) == 0
    other = load_cohort(tmp_path / "changed")
    norm2 = fit_normalizer(other.omics.expression[other.omics_rows(train)])
    np.testing.assert_array_equal(norm2.mean, norm.mean)
    np.testing.assert_array_equal(norm2.std, norm.std)


def test_gmt_and_csv_cohorts_identical(blca_cohort, tcga_dir, tmp_path):
    from slotspe_pipe.omics import read_signature_csv

    sets = read_signature_csv(tcga_dir / "signatures" / "combine_signatures.csv")
    gmt = tmp_path / "combine.gmt"
    gmt.write_text("".join(f"{gs.name}\tna\t" + "\t".join(gs.genes) + "\n" for gs in sets))
    args = blca_args(tcga_dir, tmp_path / "gmt")
    args[args.index("--signatures") + 1] = str(gmt)
    assert cli_main(args) == 0
    a, b = load_cohort(blca_cohort).omics, load_cohort(tmp_path / "gmt").omics
    assert a.pathways.tolist() == b.pathways.tolist() and a.genes.tolist() == b.genes.tolist()
    for ma, mb in zip(a.membership, b.membership, strict=True):
        np.testing.assert_array_equal(a.expression[:, ma], b.expression[:, mb])


def test_overall_survival_endpoint(tcga_dir):
    labels = read_clinical(
        tcga_dir / "blca" / "clinical.csv", time_col="survival_months", event_col="censorship"
    )
    assert len(labels.table) == N_PATIENTS and int(labels.table.event.sum()) == N_OS_EVENTS


def test_days_converted_to_months(tcga_dir, tmp_path, clinical):
    days = clinical.assign(dss_days=clinical.survival_months_dss * DAYS_PER_MONTH)
    days.to_csv(tmp_path / "clin_days.csv")
    labels = read_clinical(
        tmp_path / "clin_days.csv",
        time_col="dss_days",
        event_col="censorship_dss",
        time_unit="days",
    )
    ref = clinical.drop_duplicates("case_id").set_index("case_id").survival_months_dss
    np.testing.assert_allclose(labels.table.time, ref.loc[labels.table.index])


def test_event_convention_explicit(tmp_path):
    (tmp_path / "c.csv").write_text("case_id,t,status\nA,1,1\nB,2,0\n")
    observed = read_clinical(tmp_path / "c.csv", time_col="t", event_col="status")
    assert observed.table.event.to_dict() == {"A": 1, "B": 0}
    flipped = read_clinical(
        tmp_path / "c.csv", time_col="t", event_col="status", event_is_censorship=True
    )
    assert flipped.table.event.to_dict() == {"A": 0, "B": 1}


def test_missing_dss_excluded_with_reason(tcga_dir, tmp_path, clinical):
    clin = clinical.copy()
    clin.loc[clin.case_id == "TCGA-2F-A9KP", "survival_months_dss"] = np.nan
    clin.loc[clin.case_id == "TCGA-2F-A9KO", "censorship_dss"] = np.nan
    clin.to_csv(tmp_path / "clin.csv")
    args = blca_args(tcga_dir, tmp_path / "out")
    args[args.index("--clinical") + 1] = str(tmp_path / "clin.csv")
    assert cli_main(args) == 0
    cohort = load_cohort(tmp_path / "out")
    assert len(cohort.patients) == N_PATIENTS - 2
    excluded = cohort.summary["patients"]["excluded"]
    assert excluded == {
        "TCGA-2F-A9KO": "missing censorship_dss in clinical table",
        "TCGA-2F-A9KP": "missing survival_months_dss in clinical table",
    }
    assert cohort.summary["folds"]["dropped_patients"] == ["TCGA-2F-A9KO", "TCGA-2F-A9KP"]
    assert not {"TCGA-2F-A9KO", "TCGA-2F-A9KP"} & set(cohort.folds.case_id)
    assert len(cohort.omics.patients) == N_PATIENTS - 2


# ------------------------------------------------------------------------------ bad inputs


def _break_clinical(tmp: Path, clinical: pd.DataFrame, how: str) -> Path:
    clin = clinical.copy()
    if how == "negative":
        clin.loc[clin.case_id == "TCGA-2F-A9KQ", "survival_months_dss"] = -3.0
    elif how == "conflict":
        second = clin.index[clin.case_id == "TCGA-2F-A9KP"][1]
        clin.loc[second, "survival_months_dss"] = 99.0
    elif how == "event":
        clin.loc[clin.case_id == "TCGA-2F-A9KQ", "censorship_dss"] = 2
    path = tmp / "inputs" / "clinical.csv"
    clin.to_csv(path)
    return path


BAD_INPUTS = {
    "wrong time column": ("column", r"missing column\(s\) \['survival_months_DSS'\]"),
    "negative time": ("clinical:negative", r"negative times for \['TCGA-2F-A9KQ'\]"),
    "conflicting duplicate": ("clinical:conflict", r"conflicting .*TCGA-2F-A9KP"),
    "event not 0/1": ("clinical:event", r"must be 0 or 1; found \[2.0\]"),
    "no overlapping genes": ("rna", r"none of its 1577 genes .* HGNC symbols"),
    "unknown split patient": ("split:unknown", r"not in the clinical table .*TCGA-XX-0000"),
    "patient in train and val": ("split:both", r"both train and val: \['TCGA-BT-A0S7'\]"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_clear_error_nothing_written(case, tcga_dir, tmp_path, clinical, capsys):
    kind, pattern = BAD_INPUTS[case]
    (tmp_path / "inputs").mkdir()
    out = tmp_path / "results" / "cohort"
    args = blca_args(tcga_dir, out)
    if kind == "column":
        args[args.index("--time-col") + 1] = "survival_months_DSS"
    elif kind.startswith("clinical:"):
        path = _break_clinical(tmp_path, clinical, kind.split(":")[1])
        args[args.index("--clinical") + 1] = str(path)
    elif kind == "rna":
        rna = pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)
        rna.columns = [f"ENSG{i:011d}" for i in range(rna.shape[1])]
        rna.to_csv(tmp_path / "inputs" / "rna.csv")
        args[args.index("--rna") + 1] = str(tmp_path / "inputs" / "rna.csv")
    else:
        splits = tmp_path / "inputs" / "splits"
        splits.mkdir()
        for k in range(5):
            df = pd.read_csv(tcga_dir / "blca" / "splits" / f"splits_{k}.csv", index_col=0)
            if k == 2 and kind == "split:unknown":
                df.loc[len(df), "train"] = "TCGA-XX-0000"
            if k == 2 and kind == "split:both":
                df.loc[len(df), "train"] = "TCGA-BT-A0S7"  # in val of fold 2
            df.to_csv(splits / f"splits_{k}.csv")
        args[args.index("--splits") + 1] = str(splits)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert re.search(pattern, err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not out.exists()


def test_config_errors(tcga_dir, tmp_path):
    base = {
        "clinical": tcga_dir / "blca" / "clinical.csv",
        "time_col": "survival_months_dss",
        "event_col": "censorship_dss",
    }
    with pytest.raises(CohortError, match="nothing to join"):
        build_cohort(CohortConfig(**base))
    rna = tcga_dir / "blca" / "rna_xena.csv"
    with pytest.raises(CohortError, match="go together"):
        build_cohort(CohortConfig(**base, rna=rna))
    sig = [tcga_dir / "signatures" / "combine_signatures.csv"]
    with pytest.raises(CohortError, match=r"--min-coverage must be a fraction"):
        build_cohort(CohortConfig(**base, rna=rna, signatures=sig, min_coverage=1.5))
    with pytest.raises(CohortError, match="either --splits or --folds"):
        build_cohort(CohortConfig(**base, rna=rna, signatures=sig, n_folds=3, splits=tmp_path))


# ------------------------------------------------------------------------------ folds, time bins


def test_generated_folds_seeded_stratified_patient_level(blca_cohort):
    p = load_cohort(blca_cohort).patients
    ids, t, e = p.index.tolist(), p.time.to_numpy(), p.event.to_numpy()
    a = make_folds(ids, t, e, n_folds=5, seed=7)
    pd.testing.assert_frame_equal(a, make_folds(ids, t, e, n_folds=5, seed=7))
    assert not a.equals(make_folds(ids, t, e, n_folds=5, seed=8))
    val = a[a.split == "val"]
    assert val.case_id.value_counts().eq(1).all() and set(val.case_id) == set(ids)
    assert (a.groupby(["fold", "case_id"]).split.nunique() == 1).all()
    event_of = dict(zip(ids, e, strict=True))
    events_per_fold = val.groupby("fold").case_id.apply(lambda c: sum(event_of[i] for i in c))
    assert events_per_fold.between(N_DSS_EVENTS // 5 - 1, N_DSS_EVENTS // 5 + 2).all()


def test_generated_folds_cohort(tcga_dir, tmp_path):
    args = blca_args(tcga_dir, tmp_path / "gen")
    i = args.index("--splits")
    args[i : i + 2] = ["--folds", "4", "--seed", "3"]
    assert cli_main(args) == 0
    cohort = load_cohort(tmp_path / "gen")
    assert cohort.n_folds == 4 and cohort.summary["folds"]["source"] == "generated"
    train, val = cohort.fold_split(1)
    assert len(train) + len(val) == N_PATIENTS and not set(train) & set(val)


def test_time_bins_quartiles_of_training_uncensored(blca_cohort):
    cohort = load_cohort(blca_cohort)
    train, _ = cohort.fold_split(0)
    tr = cohort.patients.loc[train]
    edges = time_bin_edges(tr.time.to_numpy(), tr.event.to_numpy())
    observed = tr.time[tr.event == 1].to_numpy()
    assert edges[0] == 0.0 and np.isinf(edges[-1]) and len(edges) == 5
    np.testing.assert_allclose(edges[1:-1], np.quantile(observed, [0.25, 0.5, 0.75]))
    bins = assign_time_bins(observed, edges)
    assert np.bincount(bins, minlength=4).min() >= len(observed) // 4 - 1  # balanced events
    every = assign_time_bins(cohort.patients.time.to_numpy(), edges)
    assert every.min() >= 0 and every.max() <= 3
    # The reference code's equal-width bins over all patients: most events land in bin 0.
    p = cohort.patients
    equal = time_bin_edges(p.time.to_numpy(), p.event.to_numpy(), method="equal")
    np.testing.assert_allclose(equal[1:-1], np.linspace(p.time.min(), p.time.max(), 5)[1:-1])
    equal_bins = assign_time_bins(p.time[p.event == 1].to_numpy(), equal)
    assert (equal_bins == 0).mean() > 0.5


def test_time_bin_edge_cases():
    assert assign_time_bins(
        np.array([0.0, 1.0, 1.5, 100.0]), np.array([0, 1, 2, np.inf])
    ).tolist() == [
        0,
        1,
        1,
        2,
    ]
    with pytest.raises(ValueError, match="uncensored"):
        time_bin_edges(np.array([1.0, 2.0]), np.array([1, 0]), n_bins=4)
    with pytest.raises(ValueError, match="strictly increasing"):
        time_bin_edges(np.ones(8), np.ones(8, int))
    with pytest.raises(ValueError, match=">= 0"):
        assign_time_bins(np.array([-1.0]), np.array([0, np.inf]))


def test_read_splits_rejects_duplicates(tmp_path):
    (tmp_path / "splits_0.csv").write_text(",train,val\n0,A,B\n1,A,\n")
    with pytest.raises(CohortError, match="more than once"):
        read_splits(tmp_path)


# ------------------------------------------------------------------------------ slides


def _feature_store(path: Path, slide_id: str, encoder: str = "uni") -> None:
    write_features(
        path,
        np.zeros((3, 4), np.float16),
        np.zeros((3, 2), np.int32),
        {
            "slide_id": slide_id,
            "encoder": encoder,
            "embedding_dim": 4,
            "weights": "test",
            "input_size": 224,
            "normalization": "imagenet",
            "precision": "fp16",
            "tiles_settings_hash": "x",
        },
    )


@pytest.fixture()
def slide_inputs(tmp_path, clinical):
    """Sheet of all 423 BLCA slides + one unlabelled; stores and preflight records for a few."""
    slide_ids = [s.removesuffix(".svs") for s in clinical.slide_id] + ["TCGA-ZZ-ZZZZ-01Z-00-DX1.AB"]
    sheet = pd.DataFrame({"slide_id": slide_ids, "path": [f"/archive/{s}.svs" for s in slide_ids]})
    sheet.to_csv(tmp_path / "slides.csv", index=False)
    features, preflight = tmp_path / "features" / "uni", tmp_path / "preflight"
    features.mkdir(parents=True)
    preflight.mkdir()
    with_store = [s for s in slide_ids if s.startswith(("TCGA-2F-", "TCGA-ZZ-"))]
    for sid in with_store:
        _feature_store(features / f"{sid}.zarr", sid)
        (preflight / f"{sid}.json").write_text(json.dumps({"slide_id": sid, "status": "ok"}))
    failed = next(s for s in with_store if s.startswith("TCGA-2F-A9KP") and "DX2" in s)
    (preflight / f"{failed}.json").write_text(
        json.dumps({"status": "failed", "error": "cannot open slide"})
    )
    return tmp_path, with_store, failed


def test_slides_joined_and_usable_only(tcga_dir, slide_inputs, clinical):
    tmp, with_store, failed = slide_inputs
    rna = pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)
    rna.drop(index=["TCGA-2F-A9KO"]).to_csv(tmp / "rna.csv")  # this patient has no RNA
    args = blca_args(tcga_dir, tmp / "cohort")
    args[args.index("--rna") + 1] = str(tmp / "rna.csv")
    i = args.index("--splits")
    args[i : i + 2] = ["--folds", "2"]
    args += ["--slides", str(tmp / "slides.csv"), "--features", str(tmp / "features" / "uni")]
    args += ["--encoder", "uni", "--preflight-dir", str(tmp / "preflight")]
    assert cli_main(args) == 0
    cohort = load_cohort(tmp / "cohort")
    labelled_2f = sorted({s[:12] for s in with_store if s.startswith("TCGA-2F-")})
    assert cohort.patients.index.tolist() == labelled_2f
    p = cohort.patients
    assert not p.loc["TCGA-2F-A9KO", "has_omics"]  # kept and flagged: predictable from slides
    assert p.has_omics.sum() == len(p) - 1
    a9kp = [s for s in with_store if s.startswith("TCGA-2F-A9KP")]
    assert len(a9kp) == 2 and p.loc["TCGA-2F-A9KP", "n_slides"] == 1  # DX2 failed preflight
    assert p.loc["TCGA-2F-A9KP", "slide_ids"] == next(s for s in a9kp if s != failed)
    multi = p[p.n_slides > 1]
    for case, ids in zip(multi.index, multi.slide_ids, strict=True):
        assert ids.split(";") == sorted(s for s in with_store if s.startswith(case))
    assert failed not in set(cohort.slides.slide_id)
    assert all(Path(f).is_absolute() and Path(f).exists() for f in cohort.slides.features_path)
    assert cohort.slide_paths("TCGA-2F-A9KO")[0].name.startswith("TCGA-2F-A9KO")
    s = cohort.summary
    assert s["slides"]["excluded"][failed] == "preflight status failed: cannot open slide"
    assert s["slides"]["excluded"]["TCGA-ZZ-ZZZZ-01Z-00-DX1.AB"] == (
        "patient not in clinical table: TCGA-ZZ-ZZZZ"
    )
    assert s["slides"]["excluded_by_reason"]["patient not in clinical table"] == 1
    assert s["slides"]["excluded_by_reason"]["no preflight record"] == 423 - len(with_store) + 1
    assert s["patients"]["excluded_by_reason"] == {"no usable slide": N_PATIENTS - len(p)}
    assert cohort.omics.patients.tolist() == p.index[p.has_omics].tolist()
    assert (cohort.omics_rows(["TCGA-2F-A9KO"]) == -1).all()


def test_slides_only_cohort_and_encoder_check(tcga_dir, slide_inputs):
    tmp, with_store, _ = slide_inputs
    base = [
        "cohort",
        "--clinical",
        str(tcga_dir / "blca" / "clinical.csv"),
        "--time-col",
        "survival_months_dss",
        "--event-col",
        "censorship_dss",
        "--slides",
        str(tmp / "slides.csv"),
        "--features",
        str(tmp / "features" / "uni"),
        "--folds",
        "2",
    ]
    assert cli_main([*base, "-o", str(tmp / "slides_only")]) == 0
    cohort = load_cohort(tmp / "slides_only")
    assert cohort.omics is None and not cohort.patients.has_omics.any()
    assert not (tmp / "slides_only" / "omics.zarr").exists()
    assert len(cohort.patients) == len({s[:12] for s in with_store if s.startswith("TCGA-2F-")})
    assert cli_main([*base, "--encoder", "conch", "-o", str(tmp / "wrong")]) == 2
    assert not (tmp / "wrong").exists()


def test_omics_only_excludes_patients_without_rna(tcga_dir, tmp_path):
    rna = pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)
    rna.drop(index=["TCGA-2F-A9KO"]).to_csv(tmp_path / "rna.csv")
    args = blca_args(tcga_dir, tmp_path / "out")
    args[args.index("--rna") + 1] = str(tmp_path / "rna.csv")
    assert cli_main(args) == 0
    cohort = load_cohort(tmp_path / "out")
    assert len(cohort.patients) == N_PATIENTS - 1
    assert cohort.summary["patients"]["excluded"] == {
        "TCGA-2F-A9KO": "no expression data (omics-only cohort)"
    }
    assert "TCGA-2F-A9KO" in cohort.summary["folds"]["dropped_patients"]


def test_assemble_api_rewrites_atomically(tcga_dir, tmp_path):
    cfg = CohortConfig(
        clinical=tcga_dir / "blca" / "clinical.csv",
        time_col="survival_months_dss",
        event_col="censorship_dss",
        rna=tcga_dir / "blca" / "rna_xena.csv",
        signatures=[tcga_dir / "signatures" / "combine_signatures.csv"],
        n_folds=3,
    )
    out = tmp_path / "c"
    first = assemble_cohort(cfg, out)
    assert first.summary["name"] == "c"
    assemble_cohort(cfg, out)  # a rerun replaces the directory in one rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert load_cohort(out).n_folds == 3
