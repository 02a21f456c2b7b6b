"""The synthetic demo cohort: layout, conventions, the broken slide, the planted signal, and
determinism. Small cohorts with tiny slides keep this file at a few seconds."""

from __future__ import annotations

import dataclasses
import filecmp
import json
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import tiffslide
from scipy.stats import spearmanr
from sksurv.metrics import concordance_index_censored

from slotspe_pipe import demo
from slotspe_pipe.builtin_encoder import FEATURE_NAMES, describe
from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.cohort import read_clinical
from slotspe_pipe.omics import read_expression, read_signature_csv
from slotspe_pipe.preflight import preflight_slide
from slotspe_pipe.sheet import load_sample_sheet

SMALL = demo.DemoSpec(n_patients=16, seed=3, slide_px=(768, 512), n_broken=1)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "cohort"
    truth = demo.write_demo_cohort(out, SMALL)
    return out, truth


def _patients(truth: dict) -> pd.DataFrame:
    return pd.DataFrame(truth["patients"]).set_index("case_id")


def test_package_gene_sets_are_the_hallmark_table(tcga_dir: Path) -> None:
    sets = demo.demo_gene_sets()
    assert len(sets) == 50
    assert set(demo.SIGNAL_PATHWAYS) <= set(sets)
    table = {
        gs.name: gs.genes
        for gs in read_signature_csv(tcga_dir / "signatures" / "hallmarks_signatures.csv")
    }
    assert {k: tuple(v) for k, v in sets.items()} == table
    assert demo.package_gene_sets_path().stat().st_size < 100_000


def test_layout_and_tables(small_cohort) -> None:
    out, truth = small_cohort
    for name in (
        "slides.csv",
        "rna.csv",
        "clinical.csv",
        "genesets.gmt",
        "truth.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".cohort.tmp-*")), "temporary directory left behind"
    assert filecmp.cmp(out / "genesets.gmt", demo.package_gene_sets_path(), shallow=False)
    assert json.loads((out / "truth.json").read_text()) == truth

    sheet = load_sample_sheet(out / "slides.csv")  # the workflow's own loader
    assert list(sheet.columns[:4]) == ["slide_id", "path", "patient_id", "mpp"]
    assert sheet["mpp"].isna().all()  # read from the slide, not overridden
    assert all(Path(p).is_file() and Path(p).parent == out / "slides" for p in sheet["path"])
    assert len(sheet) == len(truth["slides"])
    assert set(sheet["patient_id"]) == set(_patients(truth).index)

    clinical = pd.read_csv(out / "clinical.csv")
    assert list(clinical.columns) == ["case_id", "slide_id", "age", "survival_months", "censorship"]
    assert sorted(clinical["slide_id"]) == sorted(sheet["slide_id"])  # one row per slide
    assert (clinical["survival_months"] > 0).all()
    assert set(clinical["censorship"]) <= {0, 1}

    rna = pd.read_csv(out / "rna.csv", index_col=0)
    patients = _patients(truth)
    assert rna.index.name == "case_id"
    assert list(rna.index) == sorted(patients.index[patients["has_rna"]])
    assert (~patients["has_rna"]).sum() == round(SMALL.n_patients * SMALL.missing_omics_fraction)
    genes = {g for members in demo.demo_gene_sets().values() for g in members}
    assert set(rna.columns) == genes
    assert rna.to_numpy().min() >= demo.XENA_FLOOR_LOG2 and rna.to_numpy().max() < 25
    matrix = read_expression(out / "rna.csv", known_genes=genes)  # the pipeline's reader
    assert sorted(matrix.patients) == list(rna.index)


def test_censorship_convention_through_the_cohort_reader(small_cohort) -> None:
    out, truth = small_cohort
    labels = read_clinical(
        out / "clinical.csv", time_col=demo.TIME_COL, event_col=demo.CENSORSHIP_COL
    )
    assert labels.report["event_is_censorship"] is True
    patients = _patients(truth)
    joined = labels.table.join(patients)
    assert len(joined) == SMALL.n_patients
    np.testing.assert_array_equal(joined["event"], 1 - joined["censorship"])
    np.testing.assert_allclose(joined["time"], joined["survival_months"])
    assert (
        joined["censorship"].sum()
        == truth["survival_model"]["n_censored"]
        == demo.n_censored(SMALL)
    )


def test_slides_open_with_recorded_mpp(small_cohort) -> None:
    out, truth = small_cohort
    good = [s for s in truth["slides"] if s["broken"] is None]
    assert len(good) >= SMALL.n_patients
    for record in good[:4]:
        path = out / record["path"]
        with openslide.OpenSlide(path) as slide:
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(
                record["mpp"]
            )
            assert slide.dimensions == (record["width"], record["height"])
            region = np.asarray(slide.read_region((0, 0), 0, (128, 128)))
            assert region.shape == (128, 128, 4)
        with tiffslide.TiffSlide(path) as slide:
            assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(record["mpp"])


def test_broken_slide_opens_then_fails_on_read(small_cohort) -> None:
    out, truth = small_cohort
    (broken_id,) = truth["broken_slides"]
    record = next(s for s in truth["slides"] if s["slide_id"] == broken_id)
    assert record["broken"]["kind"] == demo.BROKEN_KIND
    owner = record["case_id"]
    assert len(_patients(truth).loc[owner, "slide_ids"]) >= 2  # the patient keeps a good slide
    path = out / record["path"]
    with openslide.OpenSlide(path) as slide:  # header and directories intact
        assert slide.dimensions == (record["width"], record["height"])
        with pytest.raises(openslide.OpenSlideError, match="JPEG"):
            slide.read_region((0, 0), 0, (256, 256))
    with tiffslide.TiffSlide(path) as slide, pytest.raises(Exception, match="JPEG"):
        slide.read_region((0, 0), 0, (256, 256))
    result = preflight_slide(path, slide_id=broken_id)
    assert result["status"] == "failed"
    assert result["failed_check"] == "pixels"
    assert "corrupt" in result["reason"]
    good = next(s for s in truth["slides"] if s["broken"] is None)
    assert preflight_slide(out / good["path"])["status"] == "ok"


def test_morphology_signal_seen_by_builtin_encoder(small_cohort) -> None:
    """Per-slide mean haematoxylin OD and nuclear density of tissue patches rise with z_morph."""
    out, truth = small_cohort
    z_morph = _patients(truth)["z_morph"]
    h_col, n_col = FEATURE_NAMES.index("h_od_mean"), FEATURE_NAMES.index("nuclei_per_mm2")
    tissue_col = FEATURE_NAMES.index("tissue_fraction")
    rows = []
    for record in truth["slides"]:
        if record["broken"]:
            continue
        with openslide.OpenSlide(out / record["path"]) as slide:
            w, h = slide.dimensions
            image = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
        size = 128
        patches = np.stack(
            [
                image[y : y + size, x : x + size]
                for y in range(0, h, size)
                for x in range(0, w, size)
            ]
        )
        features = describe(patches, record["mpp"])
        tissue = features[features[:, tissue_col] > 0.5]
        assert len(tissue), record["slide_id"]
        rows.append((z_morph[record["case_id"]], tissue[:, h_col].mean(), tissue[:, n_col].mean()))
    z, h_od, density = np.array(rows).T
    assert len(z) >= 20
    assert spearmanr(z, h_od).statistic > 0.5
    assert spearmanr(z, density).statistic > 0.5


def test_omics_signal_recoverable() -> None:
    """On 200 patients, the mean of a signal pathway's genes ranks survival (C-index > 0.65),
    while a pathway sharing no gene with them does not (C-index near 0.5)."""
    spec = demo.DemoSpec(n_patients=200, seed=11, slides=False)
    patients = demo.simulate_patients(spec)
    expression, signal = demo.simulate_expression(patients, demo.demo_gene_sets(), spec)
    z = (expression - expression.mean()) / expression.std()
    gene_sets = demo.demo_gene_sets()
    event = patients["censorship"].to_numpy() == 0
    time = patients["survival_months"].to_numpy()

    def c_index(pathway: str, sign: int) -> float:
        score = sign * z[gene_sets[pathway]].mean(axis=1).to_numpy()
        return concordance_index_censored(event, time, score)[0]

    for pathway, sign in demo.SIGNAL_PATHWAYS.items():
        assert c_index(pathway, sign) > 0.65, pathway
        assert len(signal["responsive_genes"][pathway]) > 0.6 * len(gene_sets[pathway])
    signal_genes = set().union(*(gene_sets[p] for p in demo.SIGNAL_PATHWAYS))
    unrelated = max(
        (p for p, genes in gene_sets.items() if not signal_genes & set(genes)),
        key=lambda p: len(gene_sets[p]),
    )
    assert abs(c_index(unrelated, 1) - 0.5) < 0.1, unrelated


def test_small_cohorts_keep_events_per_fold() -> None:
    assert demo.n_censored(demo.DemoSpec(n_patients=40)) == 14  # 35 %
    for n in (8, 12, 20):
        spec = demo.DemoSpec(n_patients=n, slides=False)
        patients = demo.simulate_patients(spec)
        n_events = int((patients["censorship"] == 0).sum())
        assert n_events >= min(2 * spec.n_folds, n - 1)
        assert patients["censorship"].sum() >= 1


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    spec = demo.DemoSpec(n_patients=4, seed=5, slide_px=(512, 384))
    demo.write_demo_cohort(tmp_path / "a", spec)
    demo.write_demo_cohort(tmp_path / "b", spec)
    demo.write_demo_cohort(tmp_path / "c", dataclasses.replace(spec, seed=6))
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert Path("slides.csv") in files and any(f.suffix == ".svs" for f in files)
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors
    for name in ("rna.csv", "clinical.csv", "truth.json"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_no_slides_gives_the_same_patients_and_rna(tmp_path: Path) -> None:
    spec = demo.DemoSpec(n_patients=4, seed=5, slide_px=(512, 384))
    demo.write_demo_cohort(tmp_path / "full", spec)
    demo.write_demo_cohort(tmp_path / "omics", dataclasses.replace(spec, slides=False, n_broken=0))
    assert (tmp_path / "full" / "rna.csv").read_bytes() == (
        tmp_path / "omics" / "rna.csv"
    ).read_bytes()
    assert not (tmp_path / "omics" / "slides").exists()
    assert not (tmp_path / "omics" / "slides.csv").exists()
    clinical = pd.read_csv(tmp_path / "omics" / "clinical.csv")
    assert list(clinical.columns) == ["case_id", "age", "survival_months", "censorship"]
    assert clinical["case_id"].is_unique and len(clinical) == 4


def test_failure_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def failing_writer(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    real = demo.write_synthetic_slide
    monkeypatch.setattr(demo, "write_synthetic_slide", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        demo.write_demo_cohort(
            tmp_path / "cohort", demo.DemoSpec(n_patients=3, slide_px=(512, 384))
        )
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path, capsys) -> None:
    rc = cli_main(["demo", "cohort", "-o", str(tmp_path / "c"), "--patients", "12", "--no-slides"])
    assert rc == 0
    assert "12 patients" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "c" / "clinical.csv")) == 12

    rc = cli_main(
        [
            "demo",
            "slide",
            "-o",
            str(tmp_path / "s.svs"),
            "--width",
            "640",
            "--height",
            "480",
            "--mpp",
            "0.25",
            "--objective-power",
            "40",
            "--z-morph",
            "1.5",
            "--seed",
            "2",
        ]
    )
    assert rc == 0
    record = json.loads(capsys.readouterr().out)
    assert record["broken"] is None and record["regions"]
    with openslide.OpenSlide(tmp_path / "s.svs") as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"

    rc = cli_main(
        [
            "demo",
            "slide",
            "-o",
            str(tmp_path / "b.svs"),
            "--width",
            "512",
            "--height",
            "512",
            "--broken",
        ]
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["broken"]["kind"] == demo.BROKEN_KIND
    assert preflight_slide(tmp_path / "b.svs")["status"] == "failed"

    assert cli_main(["demo", "cohort", "-o", str(tmp_path / "x"), "--patients", "1"]) == 2
    assert "n_patients=1" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()
