"""Expression reading, gene sets, pathway coverage, per-fold normalization, the omics store.

Real data: TCGA-BLCA Xena expression (360 patients x 1,577 genes) and the SurvPath signature
files (331 = 50 Hallmark + 281 Reactome pathways) in ../shared/testdata/tcga.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slotspe_pipe.omics import (
    GeneNormalizer,
    OmicsError,
    clean_gene_symbol,
    compact_genes,
    detect_orientation,
    fit_normalizer,
    map_pathways,
    pathway_tokens,
    read_expression,
    read_gene_sets,
    read_gmt,
    read_sample_map,
    read_signature_csv,
    tcga_case_id,
    tcga_sample_type,
)
from slotspe_pipe.store.omics import read_omics, write_omics
from slotspe_pipe.store.zarr_group import StoreError


@pytest.fixture(scope="module")
def blca_rna(tcga_dir: Path) -> pd.DataFrame:
    return pd.read_csv(tcga_dir / "blca" / "rna_xena.csv", index_col=0)


@pytest.fixture(scope="module")
def combine_sets(tcga_dir: Path):
    sets, dups = read_gene_sets([tcga_dir / "signatures" / "combine_signatures.csv"])
    assert dups == []
    return sets


@pytest.fixture(scope="module")
def known_genes(combine_sets) -> set[str]:
    return {g for gs in combine_sets for g in gs.genes}


def write_gmt(sets, path: Path) -> Path:
    path.write_text("".join(f"{gs.name}\tsource\t" + "\t".join(gs.genes) + "\n" for gs in sets))
    return path


# ------------------------------------------------------------------------------ expression


def test_blca_expression_read_as_given(tcga_dir, blca_rna, known_genes):
    m = read_expression(tcga_dir / "blca" / "rna_xena.csv", known_genes=known_genes)
    assert m.orientation == "samples-by-genes"
    assert m.values.shape == (360, 1577)
    assert m.patients == list(blca_rna.index)
    assert m.genes == list(blca_rna.columns)
    np.testing.assert_array_equal(m.values, blca_rna.to_numpy())
    assert not m.log2_applied
    assert "duplicated_genes" not in m.report and "duplicated_samples" not in m.report


def test_orientation_and_formats_give_the_same_matrix(tmp_path, tcga_dir, blca_rna, known_genes):
    sub = blca_rna.iloc[:40, :300]
    sub.to_csv(tmp_path / "sxg.csv")
    sub.T.to_csv(tmp_path / "gxs.tsv", sep="\t", index_label="Hugo_Symbol")
    sub.T.to_parquet(tmp_path / "gxs.parquet")
    ref = read_expression(tmp_path / "sxg.csv", known_genes=known_genes)
    for name in ("gxs.tsv", "gxs.parquet"):
        m = read_expression(tmp_path / name, known_genes=known_genes)
        assert m.orientation == "genes-by-samples", name
        assert m.patients == ref.patients and m.genes == ref.genes
        np.testing.assert_array_equal(m.values, ref.values)
    forced = read_expression(
        tmp_path / "gxs.tsv", known_genes=set(), orientation="genes-by-samples"
    )
    np.testing.assert_array_equal(forced.values, ref.values)


def test_orientation_unclear_asks_for_setting(tmp_path):
    pd.DataFrame(np.ones((3, 3)), index=["a", "b", "c"], columns=["x", "y", "z"]).to_csv(
        tmp_path / "m.csv"
    )
    with pytest.raises(OmicsError, match="--rna-orientation"):
        read_expression(tmp_path / "m.csv", known_genes={"TP53"})
    with pytest.raises(OmicsError, match="cannot tell"):
        detect_orientation(["a"], ["b"], set(), lambda i: False)


def test_duplicate_genes_averaged_and_samples_resolved(tmp_path, caplog):
    # TP53 twice (averaged); patient A: primary 01A + metastasis 06A (primary kept);
    # patient B: metastasis 06A + normal 11A (no primary: averaged); C: "TP53|7157" style ids.
    text = (
        "sample,TP53,EGFR,TP53|7157,?|100130426,KRAS\n"
        "TCGA-AA-0001-01A,1,2,3,9,5\n"
        "TCGA-AA-0001-06A,100,100,100,9,100\n"
        "TCGA-AA-0002-06A,2,4,6,9,8\n"
        "TCGA-AA-0002-11A,4,8,10,9,12\n"
    )
    (tmp_path / "m.csv").write_text(text)
    with caplog.at_level(logging.WARNING):
        m = read_expression(tmp_path / "m.csv", known_genes={"TP53", "EGFR", "KRAS"})
    assert m.genes == ["TP53", "EGFR", "KRAS"]
    assert m.patients == ["TCGA-AA-0001", "TCGA-AA-0002"]
    np.testing.assert_array_equal(m.values[0], [2.0, 2.0, 5.0])  # TP53 = mean(1, 3)
    np.testing.assert_array_equal(m.values[1], [5.5, 6.0, 10.0])  # mean of 06A and 11A
    dup = m.report["duplicated_genes"]
    assert dup["n_symbols"] == 1 and dup["examples"] == {"TP53": 2}
    assert m.report["genes_without_symbol"] == 1
    details = {d["patient"]: d for d in m.report["duplicated_samples"]["details"]}
    assert details["TCGA-AA-0001"]["used"] == ["TCGA-AA-0001-01A"]
    assert details["TCGA-AA-0001"]["action"].startswith("kept primary")
    assert details["TCGA-AA-0002"]["action"] == "averaged"
    assert "averaged" in caplog.text


def test_sample_map_and_log2(tmp_path):
    (tmp_path / "m.tsv").write_text("id\tS1\tS2\tS3\nTP53\t0\t1\t3\nEGFR\t7\t15\t31\n")
    (tmp_path / "map.csv").write_text("sample_id,patient_id\nS1,P1\nS2,P2\n")
    smap = read_sample_map(tmp_path / "map.csv")
    m = read_expression(
        tmp_path / "m.tsv",
        known_genes={"TP53", "EGFR"},
        sample_map=smap,
        log2=True,
    )
    assert m.orientation == "genes-by-samples"
    assert m.patients == ["P1", "P2"]  # S3 is not in the map
    assert m.report["samples_unmapped"]["examples"] == ["S3"]
    np.testing.assert_allclose(m.values, [[0.0, 3.0], [1.0, 4.0]])
    assert m.log2_applied


def test_log2_refused_on_log_scale_input(tcga_dir, known_genes):
    with pytest.raises(OmicsError, match="negative values"):
        read_expression(tcga_dir / "blca" / "rna_xena.csv", known_genes=known_genes, log2=True)


def test_non_numeric_column_named(tmp_path):
    (tmp_path / "m.csv").write_text("s,TP53,EGFR\nTCGA-AA-0001,1,high\nTCGA-AA-0002,2,3\n")
    with pytest.raises(OmicsError, match="'EGFR' is not numeric"):
        read_expression(tmp_path / "m.csv", known_genes={"TP53", "EGFR"})


def test_barcode_helpers():
    assert tcga_case_id("TCGA-2F-A9KO-01Z-00-DX1.195576CF") == "TCGA-2F-A9KO"
    assert tcga_case_id("patient-7") is None
    assert tcga_sample_type("TCGA-2F-A9KO-06A") == "06"
    assert clean_gene_symbol(" TP53|7157 ") == "TP53" and clean_gene_symbol("?|1") == ""


# ------------------------------------------------------------------------------ gene sets


def test_blca_pathway_coverage(tcga_dir, blca_rna, combine_sets):
    genes = list(blca_rna.columns)
    sig = tcga_dir / "signatures"
    combine = map_pathways(combine_sets, genes)
    assert len(combine.pathways) == 331 and combine.dropped == {}
    assert sum(c["listed"] for c in combine.coverage) == 9745
    assert sum(c["found"] for c in combine.coverage) == 4175
    hallmarks = map_pathways(read_signature_csv(sig / "hallmarks_signatures.csv"), genes)
    assert len(hallmarks.pathways) == 50
    assert sum(c["listed"] for c in hallmarks.coverage) == 7110
    assert sum(c["found"] for c in hallmarks.coverage) == 1540
    xena = map_pathways(read_signature_csv(sig / "xena_signatures.csv"), genes)
    assert len(xena.pathways) == 281
    assert all(c["listed"] == c["found"] for c in xena.coverage)  # 2,635 genes, all measured
    assert sum(c["found"] for c in xena.coverage) == 2635
    # Every gene of the Xena matrix is used by some pathway.
    columns, kept, _ = compact_genes(genes, combine)
    assert len(kept) == 1577 and columns.tolist() == list(range(1577))


def test_union_of_files_reports_duplicate_names(tcga_dir):
    sig = tcga_dir / "signatures"
    sets, dups = read_gene_sets(
        [
            sig / "hallmarks_signatures.csv",
            sig / "xena_signatures.csv",
            sig / "combine_signatures.csv",
        ]
    )
    assert len(sets) == 331
    assert len(dups) == 331 and all(d["identical_genes"] for d in dups)
    combine = {gs.name: gs.genes for gs in read_signature_csv(sig / "combine_signatures.csv")}
    assert {gs.name: gs.genes for gs in sets} == combine


def test_gmt_and_csv_give_identical_tokens(tmp_path, tcga_dir, blca_rna, combine_sets):
    gmt = write_gmt(combine_sets, tmp_path / "combine.gmt")
    from_gmt = read_gmt(gmt)
    genes = list(blca_rna.columns)
    a = map_pathways(combine_sets, genes)
    b = map_pathways(from_gmt, genes)
    assert a.pathways == b.pathways
    x = blca_rna.to_numpy(np.float32)
    for ta, tb in zip(
        pathway_tokens(x, a.membership), pathway_tokens(x, b.membership), strict=True
    ):
        np.testing.assert_array_equal(ta, tb)
    assert [c["found"] for c in a.coverage] == [c["found"] for c in b.coverage]


def test_pathways_without_measured_genes_dropped_with_warning(tmp_path, caplog):
    (tmp_path / "sets.gmt").write_text(
        "P_ALL\td\tTP53\tEGFR\nP_NONE\td\tFOO\tBAR\nP_HALF\td\tTP53\tFOO\tBAR\tBAZ\n"
    )
    sets = read_gmt(tmp_path / "sets.gmt")
    with caplog.at_level(logging.WARNING):
        pm = map_pathways(sets, ["EGFR", "TP53"])
    assert pm.pathways == ["P_ALL", "P_HALF"]
    assert pm.dropped == {"P_NONE": "no gene measured"}
    assert "no measured gene" in caplog.text
    np.testing.assert_array_equal(pm.membership[0], [1, 0])  # gene-set order, not column order
    pm = map_pathways(sets, ["EGFR", "TP53"], min_coverage=0.5)
    assert pm.pathways == ["P_ALL"]
    assert pm.dropped["P_HALF"].startswith("coverage 0.25 < min 0.50")


def test_no_overlapping_genes_is_an_error(combine_sets):
    with pytest.raises(OmicsError, match="none of its 3 genes"):
        map_pathways(combine_sets, ["ENSG00000141510", "ENSG00000146648", "X"])


def test_bad_gmt_line(tmp_path):
    (tmp_path / "bad.gmt").write_text("ONLY_NAME\n")
    with pytest.raises(OmicsError, match="bad.gmt:1"):
        read_gmt(tmp_path / "bad.gmt")


# ------------------------------------------------------------------------------ normalization


def test_normalizer_uses_training_rows_only(blca_rna):
    x = blca_rna.to_numpy(np.float64)
    train, val = x[:250], x[250:]
    norm = fit_normalizer(train, genes=list(blca_rna.columns))
    np.testing.assert_allclose(norm.mean, train.mean(axis=0))
    assert not np.allclose(norm.mean, x.mean(axis=0))  # whole-cohort stats differ
    z = norm.transform(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0)[norm.std != 1.0], 0.0, atol=1e-4)
    zv = norm.transform(val)
    assert abs(float(zv.mean())) > 1e-6  # validation rows are not re-centred on themselves


def test_normalizer_constant_gene_and_round_trip(tmp_path):
    train = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 2.0], [5.0, 5.0, 4.0]])
    norm = fit_normalizer(train, genes=["A", "B", "C"])
    assert norm.std[1] == 1.0  # constant in training: centred only
    np.testing.assert_allclose(
        norm.transform(np.array([[5.0, 6.0, 2.0]])), [[1.2247449, 1.0, 0.0]], rtol=1e-6
    )
    path = tmp_path / "norm.json"
    path.write_text(json.dumps(norm.to_dict()))
    again = GeneNormalizer.from_dict(json.loads(path.read_text()))
    np.testing.assert_array_equal(again.mean, norm.mean)
    np.testing.assert_array_equal(again.std, norm.std)
    assert again.genes == ["A", "B", "C"] and again.n_fit == 3
    with pytest.raises(ValueError, match="fitted on 3 genes"):
        norm.transform(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        fit_normalizer(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="patients >= 2"):
        fit_normalizer(np.ones((1, 3)))


# ------------------------------------------------------------------------------ omics store


def test_omics_store_round_trip(tmp_path):
    expression = np.arange(12, dtype=np.float32).reshape(3, 4)
    patients = ["TCGA-AA-0001", "Ünïcode-2", "p3"]
    genes = ["TP53", "EGFR", "KRAS", "HLA-A"]
    pathways = ["P one", "P/two"]
    membership = [np.array([3, 0], np.int32), np.array([1, 2, 3], np.int32)]
    attrs = {"sources": {}, "gene_set_source": "x.gmt", "coverage": {}, "log2_applied": False}
    write_omics(tmp_path / "o.zarr", expression, patients, genes, pathways, membership, attrs)
    data = read_omics(tmp_path / "o.zarr")
    np.testing.assert_array_equal(data.expression, expression)
    assert data.patients.tolist() == patients and data.genes.tolist() == genes
    assert data.pathways.tolist() == pathways
    assert [m.tolist() for m in data.membership] == [[3, 0], [1, 2, 3]]
    assert data.pathway_offsets.tolist() == [0, 2, 5]
    assert data.patient_row["Ünïcode-2"] == 1
    assert data.attrs["gene_set_source"] == "x.gmt"
    with pytest.raises(StoreError, match="missing"):
        write_omics(tmp_path / "b.zarr", expression, patients, genes, pathways, membership, {})
    with pytest.raises(StoreError, match="without genes"):
        write_omics(
            tmp_path / "b.zarr", expression, patients, genes, pathways, [membership[0], []], attrs
        )
    assert not (tmp_path / "b.zarr").exists()
