"""Expression matrices and gene sets -> per-patient pathway tokens (SlotSPE's omics input).

SlotSPE reads one token per pathway: the patient's expression values of that pathway's genes. This
module turns a hospital's expression file (CSV/TSV/Parquet, either orientation, its own sample ids)
and gene-set files (MSigDB GMT, or the column-per-pathway CSV of SurvPath/SlotSPE) into

- an ``ExpressionMatrix``: one row per patient, one column per unique gene symbol, raw values
  (after an optional log2(x + 1)), with every duplicate and dropped id reported;
- a ``PathwayMap``: per pathway, the expression columns of its genes in gene-set order, and a
  coverage table (genes listed / genes found) that says why a pathway was dropped.

Normalization is NOT applied here: ``fit_normalizer`` is called by the trainer on each training
fold only, because z-scoring the whole cohort before splitting leaks validation statistics (flaw 4
of the reference code).
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ORIENTATIONS = ("auto", "samples-by-genes", "genes-by-samples")
# A TCGA barcode: project-TSS-participant (the case id, 12 characters), then sample type + vial.
TCGA_CASE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
TCGA_SAMPLE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(\d{2})", re.IGNORECASE)
TCGA_CASE_LEN = 12
PRIMARY_TUMOUR = "01"
# Annotation columns that some exports (cBioPortal, GDC) put beside the sample columns.
ANNOTATION_COLUMNS = frozenset(
    {"entrez_gene_id", "entrez_id", "entrez", "gene_id", "ensembl_gene_id", "description"}
)
# Above this, values look like linear counts/TPM rather than log-scale expression.
LINEAR_SCALE_HINT = 100.0
_ORIENT_SAMPLE_IDS = 2000  # ids looked at per axis when guessing the orientation
_ORIENT_MARGIN = 0.2


class OmicsError(ValueError):
    """An expression or gene-set input that cannot be used; the message names file and field."""


# ----------------------------------------------------------------------------------------------
# Expression files
# ----------------------------------------------------------------------------------------------


@dataclass
class RawTable:
    """A numeric table as read: first-column ids, header ids, values (rows x columns)."""

    path: Path
    row_ids: list[str]
    col_ids: list[str]
    values: np.ndarray  # float64


def _suffixes(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def read_table(path: str | Path) -> RawTable:
    """Read a CSV/TSV (optionally .gz) or Parquet table whose first column holds the row ids.

    Every other column must be numeric (empty cells and NA become NaN). Duplicate header names are
    kept as they are (pandas would rename them), so duplicates can be reported and merged.
    """
    path = Path(path)
    if not path.is_file():
        raise OmicsError(f"{path}: expression file not found")
    name = _suffixes(path)
    if name.endswith((".parquet", ".pq")):
        return _read_parquet(path)
    if name.endswith(".csv"):
        return _read_delimited(path, ",")
    if name.endswith((".tsv", ".txt", ".tab")):
        return _read_delimited(path, "\t")
    raise OmicsError(
        f"{path}: unknown expression file type (expected .csv, .tsv, .txt, .parquet, optionally .gz)"
    )


def _read_header(path: Path, delimiter: str) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh, delimiter=delimiter), None)
    if not header or len(header) < 2:
        raise OmicsError(f"{path}: expected a header row with an id column and data columns")
    return [h.strip() for h in header]


def _read_delimited(path: Path, delimiter: str) -> RawTable:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    header = _read_header(path, delimiter)
    names = [f"c{i}" for i in range(len(header))]
    # Explicit types: inferring 20,000 column types doubles the read time of a wide matrix.
    types = dict.fromkeys(names[1:], pa.float64())
    types["c0"] = pa.string()
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, block_size=1 << 26),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except pa.ArrowInvalid as exc:
        message = str(exc)
        column = re.search(r"column #(\d+)", message)
        if column and "conversion error" in message and int(column.group(1)) < len(header):
            value = re.search(r"invalid value (.*)$", message)
            raise OmicsError(
                f"{path}: column {header[int(column.group(1))]!r} is not numeric (e.g. "
                f"{value.group(1) if value else '?'}); every column after the id column must "
                "hold expression values"
            ) from exc
        raise OmicsError(f"{path}: cannot parse as a table ({message})") from exc
    return _from_arrow(path, table, header)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        df = pq.read_table(path).to_pandas()
    except pa.ArrowException as exc:
        raise OmicsError(f"{path}: cannot read as Parquet ({exc})") from exc
    if not (df.index.dtype.kind == "i" and df.index.equals(np.arange(len(df)))):
        df = df.reset_index()  # a stored pandas index holds the ids
    header = [str(c) for c in df.columns]
    df.columns = [f"c{i}" for i in range(len(header))]
    df["c0"] = df["c0"].astype(str)
    return _from_arrow(path, pa.Table.from_pandas(df, preserve_index=False), header)


def _from_arrow(path: Path, table: Any, header: list[str]) -> RawTable:
    import pyarrow as pa

    ids = table.column(0)
    if ids.null_count:
        raise OmicsError(f"{path}: {ids.null_count} rows have an empty id in column {header[0]!r}")
    row_ids = [str(v).strip() for v in ids.to_pylist()]
    # Column-major: each column is filled contiguously (row-major writes stride across rows).
    values = np.empty((table.num_rows, table.num_columns - 1), dtype=np.float64, order="F")
    for j in range(1, table.num_columns):
        col = table.column(j)
        if pa.types.is_null(col.type):
            values[:, j - 1] = np.nan
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            values[:, j - 1] = col.to_numpy(zero_copy_only=False)
        else:
            example = next((v for v in col.to_pylist() if v is not None), None)
            raise OmicsError(
                f"{path}: column {header[j]!r} is not numeric (e.g. {example!r}); every column "
                "after the id column must hold expression values"
            )
    return RawTable(path=path, row_ids=row_ids, col_ids=header[1:], values=values)


def clean_gene_symbol(raw: str) -> str:
    """'TP53|7157' -> 'TP53' (TCGA RSEM ids); '?|100130426' and empty ids -> '' (unusable)."""
    symbol = raw.strip().split("|", 1)[0].strip()
    return "" if symbol in ("", "?") else symbol


def tcga_case_id(sample_id: str) -> str | None:
    """The 12-character TCGA case id of a TCGA barcode, or None when it is not one."""
    return sample_id[:TCGA_CASE_LEN].upper() if TCGA_CASE.match(sample_id) else None


def tcga_sample_type(sample_id: str) -> str | None:
    """The two-digit TCGA sample type ('01' primary tumour, '06' metastasis, '11' normal...)."""
    m = TCGA_SAMPLE.match(sample_id)
    return m.group(1) if m else None


def read_sample_map(path: str | Path) -> dict[str, str]:
    """A CSV mapping expression sample ids to patients: columns ``sample_id`` and ``patient_id``
    (``case_id`` is accepted for the latter)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise OmicsError(f"{path}: sample map not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    patient_col = next((c for c in ("patient_id", "case_id") if c in df.columns), None)
    if "sample_id" not in df.columns or patient_col is None:
        raise OmicsError(
            f"{path}: sample map needs columns 'sample_id' and 'patient_id' (or 'case_id'); "
            f"found {list(df.columns)}"
        )
    df = df.assign(sample_id=df["sample_id"].str.strip(), patient=df[patient_col].str.strip())
    bad = df[(df["sample_id"] == "") | (df["patient"] == "")]
    if len(bad):
        raise OmicsError(f"{path}: {len(bad)} rows have an empty sample_id or {patient_col}")
    conflict = df.groupby("sample_id")["patient"].nunique()
    conflict = conflict[conflict > 1]
    if len(conflict):
        raise OmicsError(
            f"{path}: sample ids mapped to several patients: {list(conflict.index[:5])}"
        )
    return dict(zip(df["sample_id"], df["patient"], strict=True))


def sample_to_patient(sample_id: str, sample_map: Mapping[str, str] | None) -> str | None:
    """Patient of an expression sample: the mapping file when given, else the TCGA case id,
    else the sample id itself (files already keyed by patient)."""
    if sample_map is not None:
        return sample_map.get(sample_id)
    return tcga_case_id(sample_id) or sample_id


def _fraction(ids: Sequence[str], predicate: Callable[[str], bool]) -> float:
    if not ids:
        return 0.0
    step = max(1, len(ids) // _ORIENT_SAMPLE_IDS)
    picked = ids[::step]
    return sum(1 for i in picked if predicate(i)) / len(picked)


def detect_orientation(
    row_ids: Sequence[str],
    col_ids: Sequence[str],
    known_genes: set[str],
    is_sample: Callable[[str], bool],
    path: Path | str = "expression file",
) -> str:
    """Guess whether rows are samples ('samples-by-genes') or genes ('genes-by-samples').

    Evidence for each axis: the fraction of its ids that are known gene symbols (from the gene
    sets) and the fraction that are known samples (map to a clinical patient or are TCGA
    barcodes). Raises ``OmicsError`` asking for an explicit orientation when it is unclear.
    """

    def is_gene(i: str) -> bool:
        return clean_gene_symbol(i) in known_genes

    rows_are_samples = _fraction(row_ids, is_sample) + _fraction(col_ids, is_gene)
    cols_are_samples = _fraction(col_ids, is_sample) + _fraction(row_ids, is_gene)
    if max(rows_are_samples, cols_are_samples) < 0.05 or (
        abs(rows_are_samples - cols_are_samples) < _ORIENT_MARGIN
    ):
        raise OmicsError(
            f"{path}: cannot tell whether rows or columns are samples (first row ids "
            f"{list(row_ids[:3])}, first header ids {list(col_ids[:3])}): neither axis clearly "
            "holds gene symbols of the gene sets or patient ids of the clinical table; set "
            "--rna-orientation samples-by-genes|genes-by-samples (and check the gene sets and "
            "the sample id mapping)"
        )
    return "samples-by-genes" if rows_are_samples > cols_are_samples else "genes-by-samples"


@dataclass
class ExpressionMatrix:
    """Patient-level expression: ``values`` float64 (patients, genes), raw (after optional log2)."""

    path: Path
    patients: list[str]
    genes: list[str]
    values: np.ndarray
    orientation: str
    log2_applied: bool
    report: dict[str, Any] = field(default_factory=dict)


def _merge_duplicate_columns(values: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Average columns sharing a name, keeping first-appearance order."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(names, dtype=object))
    if len(uniques) == len(names):
        return values, names
    first = np.full(len(uniques), -1, dtype=np.int64)
    for j in range(len(codes) - 1, -1, -1):
        first[codes[j]] = j
    out = values[:, first].copy()
    counts = np.bincount(codes, minlength=len(uniques))
    for code in np.flatnonzero(counts > 1):
        out[:, code] = values[:, codes == code].mean(axis=1)
    return out, [str(u) for u in uniques]


def read_expression(
    path: str | Path,
    *,
    known_genes: Iterable[str],
    known_patients: Iterable[str] = (),
    orientation: str = "auto",
    sample_map: Mapping[str, str] | None = None,
    log2: bool = False,
) -> ExpressionMatrix:
    """Read an expression file into one row per patient and one column per gene symbol.

    - orientation: 'auto' guesses from the ids (see ``detect_orientation``).
    - gene symbols: 'SYMBOL|ENTREZ' is cut to SYMBOL; duplicated symbols are averaged.
    - samples -> patients: ``sample_map``, else TCGA case id (first 12 characters), else the id.
      Several samples of one patient: the primary tumour (TCGA sample type 01) is kept when there
      is one, otherwise the samples are averaged. Unmapped samples are dropped.
    - log2: apply log2(x + 1) (counts/TPM); refused when the file has negative values.
    Everything merged or dropped is listed in ``report``.
    """
    if orientation not in ORIENTATIONS:
        raise OmicsError(f"rna orientation {orientation!r} is not one of {ORIENTATIONS}")
    t0 = time.perf_counter()
    raw = read_table(path)
    path = raw.path
    log.info(
        "%s: read %d x %d values in %.1f s (%.1f M values/s)",
        path,
        *raw.values.shape,
        time.perf_counter() - t0,
        raw.values.size / 1e6 / max(time.perf_counter() - t0, 1e-9),
    )
    known_genes = set(known_genes)
    known_patients = set(known_patients)

    def is_sample(i: str) -> bool:
        if sample_map is not None and i in sample_map:
            return True
        return tcga_case_id(i) is not None or i in known_patients

    if orientation == "auto":
        orientation = detect_orientation(raw.row_ids, raw.col_ids, known_genes, is_sample, path)
        log.info("%s: detected orientation %s", path, orientation)
    if orientation == "samples-by-genes":
        samples, gene_ids, values = raw.row_ids, raw.col_ids, raw.values
    else:
        samples, gene_ids, values = raw.col_ids, raw.row_ids, raw.values.T
    report: dict[str, Any] = {
        "path": str(path),
        "orientation": orientation,
        "samples_in_file": len(samples),
        "genes_in_file": len(gene_ids),
    }

    annotation = [i for i, s in enumerate(samples) if s.strip().lower() in ANNOTATION_COLUMNS]
    if annotation:
        report["annotation_columns_dropped"] = [samples[i] for i in annotation]
        keep = np.setdiff1d(np.arange(len(samples)), annotation)
        samples = [samples[i] for i in keep]
        values = values[keep, :]
    if not samples:
        raise OmicsError(f"{path}: no sample columns/rows left")

    if log2:
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() < 0:
            raise OmicsError(
                f"{path}: log2(x + 1) was requested but the file has negative values "
                f"(min {finite.min():.3g}); it already looks log-scaled - drop --rna-log2"
            )
        values = np.log2(values + 1.0)
    else:
        finite_max = np.nanmax(values) if np.isfinite(values).any() else 0.0
        if finite_max > LINEAR_SCALE_HINT:
            log.warning(
                "%s: values reach %.3g; if these are counts/TPM, pass --rna-log2", path, finite_max
            )

    # Gene symbols: clean, drop unusable, average duplicates.
    symbols = [clean_gene_symbol(g) for g in gene_ids]
    unusable = [g for g, s in zip(gene_ids, symbols, strict=True) if not s]
    if unusable:
        report["genes_without_symbol"] = len(unusable)
        good = np.array([bool(s) for s in symbols])
        values = values[:, good]
        symbols = [s for s in symbols if s]
    n_before = len(symbols)
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    dup_genes = {s: c for s, c in counts.items() if c > 1}
    values = np.ascontiguousarray(values)
    values, symbols = _merge_duplicate_columns(values, symbols)
    if dup_genes:
        report["duplicated_genes"] = {
            "n_symbols": len(dup_genes),
            "n_columns_merged": n_before - len(symbols),
            "action": "averaged",
            "examples": dict(list(dup_genes.items())[:20]),
        }
        log.warning(
            "%s: %d gene symbols appear more than once; their columns were averaged",
            path,
            len(dup_genes),
        )

    # Samples -> patients.
    patients_of = [sample_to_patient(s.strip(), sample_map) for s in samples]
    unmapped = [s for s, p in zip(samples, patients_of, strict=True) if p is None]
    if unmapped:
        report["samples_unmapped"] = {"n": len(unmapped), "examples": unmapped[:20]}
        log.warning("%s: %d samples are not in the sample map; dropped", path, len(unmapped))
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients_of):
        if p is not None:
            groups.setdefault(p, []).append(i)
    if not groups:
        raise OmicsError(f"{path}: no sample could be mapped to a patient")
    order = list(groups)
    out = np.empty((len(order), values.shape[1]), dtype=np.float64)
    merged: list[dict[str, Any]] = []
    for r, patient in enumerate(order):
        rows = groups[patient]
        if len(rows) == 1:
            out[r] = values[rows[0]]
            continue
        ids = [samples[i] for i in rows]
        primary = [i for i in rows if tcga_sample_type(samples[i]) == PRIMARY_TUMOUR]
        if primary and len(primary) < len(rows):
            used, action = primary, "kept primary tumour (sample type 01)"
        else:
            used, action = rows, "averaged"
        out[r] = values[used].mean(axis=0)
        merged.append(
            {
                "patient": patient,
                "samples": ids,
                "used": [samples[i] for i in used],
                "action": action,
            }
        )
    if merged:
        report["duplicated_samples"] = {"n_patients": len(merged), "details": merged}
        log.warning("%s: %d patients have several samples (see summary)", path, len(merged))
    report["patients"] = len(order)
    report["genes"] = len(symbols)
    return ExpressionMatrix(
        path=path,
        patients=order,
        genes=symbols,
        values=out,
        orientation=orientation,
        log2_applied=log2,
        report=report,
    )


# ----------------------------------------------------------------------------------------------
# Gene sets
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneSet:
    """A named pathway: its gene symbols in file order (unique) and the file it came from."""

    name: str
    genes: tuple[str, ...]
    source: str


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def read_gmt(path: str | Path) -> list[GeneSet]:
    """MSigDB GMT: one pathway per line, ``name<TAB>description<TAB>gene<TAB>gene...``."""
    path = Path(path)
    sets: list[GeneSet] = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 3 or not fields[0].strip():
                raise OmicsError(
                    f"{path}:{lineno}: a GMT line needs name<TAB>description<TAB>genes..., "
                    f"got {len(fields)} tab-separated fields"
                )
            sets.append(
                GeneSet(
                    fields[0].strip(), _unique(clean_gene_symbol(g) for g in fields[2:]), str(path)
                )
            )
    return sets


def read_signature_csv(path: str | Path) -> list[GeneSet]:
    """SurvPath/SlotSPE signature CSV: one column per pathway, gene symbols down the rows
    (ragged: empty cells pad the shorter columns)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows or not any(h.strip() for h in rows[0]):
        raise OmicsError(f"{path}: expected a header row of pathway names")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise OmicsError(f"{path}: column {header.index('') + 1} has no pathway name")
    columns: list[list[str]] = [[] for _ in header]
    for row in rows[1:]:
        for j, cell in enumerate(row[: len(header)]):
            columns[j].append(clean_gene_symbol(cell))
    return [
        GeneSet(name, _unique(genes), str(path))
        for name, genes in zip(header, columns, strict=True)
    ]


def read_gene_set_file(path: str | Path) -> list[GeneSet]:
    """A .gmt or column-per-pathway .csv gene-set file."""
    path = Path(path)
    if not path.is_file():
        raise OmicsError(f"{path}: gene-set file not found")
    suffix = path.suffix.lower()
    if suffix == ".gmt":
        sets = read_gmt(path)
    elif suffix == ".csv":
        sets = read_signature_csv(path)
    else:
        raise OmicsError(f"{path}: gene sets must be a .gmt or a column-per-pathway .csv file")
    if not sets:
        raise OmicsError(f"{path}: no gene sets in the file")
    return sets


def read_gene_sets(paths: Sequence[str | Path]) -> tuple[list[GeneSet], list[dict[str, Any]]]:
    """The union of several gene-set files. A pathway name seen again keeps its first definition;
    each repeat is returned in the duplicates report (with whether the gene lists agree)."""
    seen: dict[str, GeneSet] = {}
    duplicates: list[dict[str, Any]] = []
    for p in paths:
        for gs in read_gene_set_file(p):
            if gs.name in seen:
                first = seen[gs.name]
                duplicates.append(
                    {
                        "pathway": gs.name,
                        "kept_from": first.source,
                        "ignored_from": gs.source,
                        "identical_genes": set(first.genes) == set(gs.genes),
                    }
                )
                continue
            seen[gs.name] = gs
    if duplicates:
        log.warning(
            "%d pathway names appear more than once across the gene-set files; the first "
            "definition of each is used",
            len(duplicates),
        )
    return list(seen.values()), duplicates


@dataclass
class PathwayMap:
    """Kept pathways and their expression columns (gene-set order); coverage of every pathway."""

    pathways: list[str]
    membership: list[np.ndarray]
    coverage: list[dict[str, Any]]

    @property
    def dropped(self) -> dict[str, str]:
        return {c["pathway"]: c["reason"] for c in self.coverage if not c["kept"]}


def map_pathways(
    gene_sets: Sequence[GeneSet],
    genes: Sequence[str],
    min_coverage: float = 0.0,
    expression_source: str = "the expression matrix",
) -> PathwayMap:
    """Locate each pathway's genes among the measured ``genes``.

    A pathway is kept when at least one of its genes is measured and the fraction found is at
    least ``min_coverage`` (0..1). Raises ``OmicsError`` when no pathway is left (typically gene
    ids that are not symbols, e.g. Ensembl ids).
    """
    if not 0.0 <= min_coverage <= 1.0:
        raise OmicsError(f"min coverage must be a fraction in [0, 1], got {min_coverage}")
    column = {g: j for j, g in enumerate(genes)}
    pathways: list[str] = []
    membership: list[np.ndarray] = []
    coverage: list[dict[str, Any]] = []
    for gs in gene_sets:
        found = [column[g] for g in gs.genes if g in column]
        listed = len(gs.genes)
        fraction = len(found) / listed if listed else 0.0
        if not found:
            reason = "no gene measured"
        elif fraction < min_coverage:
            reason = f"coverage {fraction:.2f} < min {min_coverage:.2f}"
        else:
            reason = ""
        coverage.append(
            {
                "pathway": gs.name,
                "source": gs.source,
                "listed": listed,
                "found": len(found),
                "fraction": round(fraction, 4),
                "kept": not reason,
                "reason": reason,
            }
        )
        if not reason:
            pathways.append(gs.name)
            membership.append(np.asarray(found, dtype=np.int32))
    n_dropped = len(gene_sets) - len(pathways)
    if not pathways:
        examples = list(genes[:5])
        raise OmicsError(
            f"{expression_source}: none of its {len(genes)} genes (e.g. {examples}) is in the "
            f"{len(gene_sets)} gene sets (or none reaches min coverage {min_coverage}); gene ids "
            "must be HGNC symbols like the gene-set files"
        )
    no_gene = sum(1 for c in coverage if c["reason"] == "no gene measured")
    if no_gene:
        log.warning("%d pathways have no measured gene and were dropped", no_gene)
    if n_dropped - no_gene:
        log.warning("%d pathways are below min coverage and were dropped", n_dropped - no_gene)
    return PathwayMap(pathways=pathways, membership=membership, coverage=coverage)


def compact_genes(
    genes: Sequence[str], pathway_map: PathwayMap
) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Keep only genes used by some pathway: (kept columns, their names, re-indexed membership)."""
    used = np.zeros(len(genes), dtype=bool)
    for m in pathway_map.membership:
        used[m] = True
    columns = np.flatnonzero(used)
    new_index = np.full(len(genes), -1, dtype=np.int32)
    new_index[columns] = np.arange(len(columns), dtype=np.int32)
    membership = [new_index[m] for m in pathway_map.membership]
    return columns, [genes[j] for j in columns], membership


def pathway_tokens(expression: np.ndarray, membership: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per pathway, the (patients, genes in pathway) block of ``expression``: SlotSPE's tokens."""
    expression = np.asarray(expression)
    return [expression[..., m] for m in membership]


# ----------------------------------------------------------------------------------------------
# Per-fold normalization
# ----------------------------------------------------------------------------------------------


@dataclass
class GeneNormalizer:
    """Per-gene z-score with statistics of the training fold only.

    ``std`` is the population std of the training rows; a gene whose std is at most ``min_std``
    (constant in training) gets std 1, so it is only centred - dividing by ~0 would turn tiny
    validation differences into huge values.
    """

    mean: np.ndarray
    std: np.ndarray
    n_fit: int
    min_std: float
    genes: list[str] | None = None

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(..., genes) -> float32 z-scores with the training statistics."""
        x = np.asarray(x)
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(
                f"normalizer was fitted on {self.mean.shape[0]} genes, got {x.shape[-1]}"
            )
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "zscore",
            "n_fit": int(self.n_fit),
            "min_std": float(self.min_std),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "genes": list(self.genes) if self.genes is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneNormalizer:
        if d.get("method") != "zscore":
            raise ValueError(f"unknown normalizer method {d.get('method')!r}")
        mean = np.asarray(d["mean"], dtype=np.float64)
        std = np.asarray(d["std"], dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError("normalizer mean and std must be 1-D of the same length")
        genes = d.get("genes")
        return cls(mean, std, int(d["n_fit"]), float(d["min_std"]), list(genes) if genes else None)


def fit_normalizer(
    expression_train: np.ndarray, min_std: float = 1e-6, genes: Sequence[str] | None = None
) -> GeneNormalizer:
    """Fit per-gene mean/std on the TRAINING rows (patients, genes) of one fold.

    Raises ``ValueError`` for fewer than 2 rows or non-finite values (they would silently poison
    every statistic).
    """
    x = np.asarray(expression_train, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (patients >= 2, genes) training matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("training expression has NaN/inf values; clean them before fitting")
    if genes is not None and len(genes) != x.shape[1]:
        raise ValueError(f"{len(genes)} gene names for {x.shape[1]} columns")
    if not math.isfinite(min_std) or min_std < 0:
        raise ValueError(f"min_std must be a finite value >= 0, got {min_std}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > min_std, std, 1.0)
    return GeneNormalizer(
        mean, std, x.shape[0], min_std, list(genes) if genes is not None else None
    )
