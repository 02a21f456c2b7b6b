"""Cohort assembly: clinical labels, patient-level folds, and the join of slides, omics and labels.

`slotspe-pipe cohort` writes one directory that everything after it (training, evaluation, the
report) reads through ``load_cohort``:

- ``patients.csv``: one row per patient: case_id, time (months), event (1 = observed), has_omics,
  slide_ids (";"-joined), n_slides, time_unit;
- ``folds.csv``: fold, case_id, split (train / val) - split by PATIENT, so no patient is ever on
  both sides (flaw 6 of the reference code);
- ``slides.csv``: slide_id, case_id, features_path of the usable slides;
- ``omics.zarr``: raw expression of the cohort's patients + pathway membership (``store.omics``);
- ``pathways.csv``: coverage of every pathway (genes listed / found, kept or why dropped);
- ``summary.json``: who went in or out and why, events, pathways kept, genes found, folds.

The directory is built in memory, then written under a temporary name and renamed: a bad input
raises ``CohortError`` before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slotspe_pipe import __version__
from slotspe_pipe.omics import (
    ORIENTATIONS,
    OmicsError,
    compact_genes,
    map_pathways,
    read_expression,
    read_gene_sets,
    read_sample_map,
    tcga_case_id,
)
from slotspe_pipe.store.atomic import atomic_path
from slotspe_pipe.store.omics import OmicsData, read_omics, write_omics
from slotspe_pipe.store.zarr_group import StoreError, is_complete, open_group

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 30.4375  # 365.25 / 12
TIME_UNITS = ("months", "days")
PATIENT_COLUMNS = ("case_id", "time", "event", "has_omics", "slide_ids", "n_slides", "time_unit")
FOLD_COLUMNS = ("fold", "case_id", "split")
SLIDE_COLUMNS = ("slide_id", "case_id", "features_path")
SPLIT_FILE = re.compile(r"^splits_(\d+)\.csv$")
DEFAULT_FOLDS = 5


class CohortError(ValueError):
    """An input that cannot make a cohort; the message names the file, field and expectation."""


# ----------------------------------------------------------------------------------------------
# Clinical labels
# ----------------------------------------------------------------------------------------------


@dataclass
class Labels:
    """Patient-level survival labels: ``table`` indexed by case_id with time (months) and event."""

    table: pd.DataFrame
    excluded: dict[str, str]
    report: dict[str, Any]


def _numeric(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Column as float; text that is not a number (other than empty/NA) is an error."""
    values = pd.to_numeric(df[col], errors="coerce")
    bad = df[col].notna() & values.isna()
    bad |= np.isinf(values.fillna(0.0))
    if bad.any():
        rows = [(int(i) + 2, df.at[i, col]) for i in df.index[bad][:5]]
        raise CohortError(
            f"{path}: column {col!r} must hold numbers; bad values (line, value): {rows}"
        )
    return values.astype(float)


def infer_event_is_censorship(event_col: str) -> bool:
    """A column named like 'censorship' means 1 = censored (the SurvPath/TCGA-CDR convention)."""
    return "censor" in event_col.lower()


def read_clinical(
    path: str | Path,
    *,
    time_col: str,
    event_col: str,
    case_col: str = "case_id",
    time_unit: str = "months",
    event_is_censorship: bool | None = None,
) -> Labels:
    """Read a clinical table (one row per patient or per slide) into one row per patient.

    - time: converted to months (days / 30.4375); negative times are an error.
    - event: 1 = event observed; with ``event_is_censorship`` (default: inferred from a column
      name containing 'censor') the column is 1 = censored and is flipped on read. Values other
      than 0/1 are an error.
    - Several rows of one patient must agree on time and event, else ``CohortError``.
    - Patients with a missing time or event are excluded with a reason (not an error): e.g. some
      TCGA patients have no disease-specific endpoint.
    """
    path = Path(path)
    if time_unit not in TIME_UNITS:
        raise CohortError(f"time unit {time_unit!r} is not one of {TIME_UNITS}")
    if not path.is_file():
        raise CohortError(f"{path}: clinical table not found")
    df = pd.read_csv(path, dtype=str)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in (case_col, time_col, event_col) if c not in df.columns]
    if missing:
        raise CohortError(
            f"{path}: missing column(s) {missing} (set by --case-col/--time-col/--event-col); "
            f"the table has {list(df.columns)}"
        )
    df[case_col] = df[case_col].str.strip()
    if df[case_col].isna().any() or (df[case_col] == "").any():
        lines = [int(i) + 2 for i in df.index[df[case_col].isna() | (df[case_col] == "")][:5]]
        raise CohortError(f"{path}: empty {case_col!r} on lines {lines}")
    times = _numeric(df, time_col, path)
    events = _numeric(df, event_col, path)
    negative = df.loc[times < 0, case_col]
    if len(negative):
        raise CohortError(
            f"{path}: column {time_col!r} has negative times for {sorted(set(negative))[:5]}; "
            "survival times must be >= 0"
        )
    not_binary = events.notna() & ~events.isin([0.0, 1.0])
    if not_binary.any():
        raise CohortError(
            f"{path}: column {event_col!r} must be 0 or 1; found {sorted(set(events[not_binary]))[:5]} "
            f"for {sorted(set(df.loc[not_binary, case_col]))[:5]}"
        )
    rows = pd.DataFrame({"case_id": df[case_col], "time": times, "event": events})
    n_rows = len(rows)
    distinct = rows.groupby("case_id", sort=False)[["time", "event"]].nunique(dropna=False)
    conflict = distinct[(distinct > 1).any(axis=1)].index.tolist()
    if conflict:
        details = {
            c: rows.loc[rows.case_id == c, ["time", "event"]].drop_duplicates().values.tolist()
            for c in conflict[:3]
        }
        raise CohortError(
            f"{path}: {len(conflict)} patients have rows with conflicting {time_col!r}/"
            f"{event_col!r} (case: [[time, event], ...]): {details}"
        )
    table = rows.drop_duplicates("case_id").set_index("case_id")
    excluded: dict[str, str] = {}
    for case, row in table.iterrows():
        gaps = [c for c, v in ((time_col, row.time), (event_col, row.event)) if pd.isna(v)]
        if gaps:
            excluded[str(case)] = f"missing {' and '.join(gaps)} in clinical table"
    table = table.drop(index=list(excluded))
    if table.empty:
        raise CohortError(f"{path}: no patient has both {time_col!r} and {event_col!r}")
    if event_is_censorship is None:
        event_is_censorship = infer_event_is_censorship(event_col)
    event = table["event"].astype(int)
    table["event"] = 1 - event if event_is_censorship else event
    if time_unit == "days":
        table["time"] = table["time"] / DAYS_PER_MONTH
    report = {
        "path": str(path),
        "rows": n_rows,
        "patients": int(len(table) + len(excluded)),
        "case_col": case_col,
        "time_col": time_col,
        "event_col": event_col,
        "time_unit_in_file": time_unit,
        "event_is_censorship": bool(event_is_censorship),
    }
    return Labels(table=table.sort_index(), excluded=excluded, report=report)


# ----------------------------------------------------------------------------------------------
# Slides
# ----------------------------------------------------------------------------------------------


def read_slide_sheet(path: str | Path) -> pd.DataFrame:
    """Slide sample sheet (CSV: slide_id, path, optional patient_id, mpp) -> slide_id, case_id.

    Without a ``patient_id`` the case id is the TCGA barcode prefix (12 characters) of slide_id.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: slide sheet not found")
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    sheet.columns = [str(c).strip() for c in sheet.columns]
    if "slide_id" not in sheet.columns:
        raise CohortError(
            f"{path}: slide sheet needs a 'slide_id' column; has {list(sheet.columns)}"
        )
    slide_ids = sheet["slide_id"].str.strip()
    if (slide_ids == "").any():
        raise CohortError(f"{path}: {int((slide_ids == '').sum())} rows have an empty slide_id")
    dup = slide_ids[slide_ids.duplicated()].unique().tolist()
    if dup:
        raise CohortError(f"{path}: duplicated slide_id {dup[:5]}")
    if "patient_id" in sheet.columns:
        patients = sheet["patient_id"].str.strip()
    else:
        patients = pd.Series([""] * len(sheet), index=sheet.index)
    case_ids = [p or (tcga_case_id(s) or "") for s, p in zip(slide_ids, patients, strict=True)]
    unknown = [s for s, c in zip(slide_ids, case_ids, strict=True) if not c]
    if unknown:
        raise CohortError(
            f"{path}: slides {unknown[:5]} have no patient_id and are not TCGA barcodes; add a "
            "'patient_id' column"
        )
    return pd.DataFrame({"slide_id": slide_ids.values, "case_id": case_ids})


def _preflight_problem(preflight_dir: Path, slide_id: str) -> str | None:
    record_path = preflight_dir / f"{slide_id}.json"
    if not record_path.is_file():
        return "no preflight record"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable preflight record ({exc})"
    status = str(record.get("status", "")).lower()
    if status != "ok":
        detail = record.get("error") or record.get("reason") or record.get("message")
        return f"preflight status {status or 'missing'}" + (f": {detail}" if detail else "")
    return None


def usable_slides(
    sheet: pd.DataFrame,
    features_dir: str | Path,
    encoder: str | None = None,
    preflight_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Slides that passed preflight (when a preflight dir is given) and have a complete feature
    store ``{features_dir}/{slide_id}.zarr`` (of ``encoder`` when given).

    Returns (slide_id, case_id, features_path absolute) and {slide_id: reason} for the rest.
    """
    from tqdm import tqdm

    features_dir = Path(features_dir).resolve()
    preflight_dir = Path(preflight_dir) if preflight_dir is not None else None
    if preflight_dir is not None and not preflight_dir.is_dir():
        raise CohortError(f"{preflight_dir}: preflight directory not found")
    rows: list[tuple[str, str, str]] = []
    excluded: dict[str, str] = {}
    for slide_id, case_id in tqdm(
        zip(sheet.slide_id, sheet.case_id, strict=True),
        total=len(sheet),
        desc="slides",
        unit="slide",
        disable=None,
    ):
        problem = _preflight_problem(preflight_dir, slide_id) if preflight_dir else None
        store = features_dir / f"{slide_id}.zarr"
        if problem is None and not is_complete(store, "features"):
            problem = "no complete feature store" + ("" if store.exists() else " (missing)")
        if problem is None and encoder is not None:
            found = open_group(store, "features").attrs.get("encoder")
            if found != encoder:
                problem = f"feature store encoder {found!r} is not {encoder!r}"
        if problem:
            excluded[slide_id] = problem
        else:
            rows.append((slide_id, case_id, str(store)))
    return pd.DataFrame(rows, columns=list(SLIDE_COLUMNS)), excluded


# ----------------------------------------------------------------------------------------------
# Folds and time bins
# ----------------------------------------------------------------------------------------------


def read_splits(splits_dir: str | Path) -> pd.DataFrame:
    """SurvPath-style ``splits_{k}.csv`` files (columns train, val of case ids) -> fold, case_id,
    split, in file order. A patient listed twice, or in both train and val, is an error."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise CohortError(f"{splits_dir}: splits directory not found")
    files = sorted(
        ((int(m.group(1)), p) for p in splits_dir.iterdir() if (m := SPLIT_FILE.match(p.name))),
    )
    if not files:
        raise CohortError(f"{splits_dir}: no splits_<k>.csv files")
    parts: list[pd.DataFrame] = []
    for fold, path in files:
        df = pd.read_csv(path, dtype=str)
        if not {"train", "val"} <= set(df.columns):
            raise CohortError(
                f"{path}: a split file needs 'train' and 'val' columns; has {list(df.columns)}"
            )
        extra = [c for c in df.columns if c not in ("train", "val") and not c.startswith("Unnamed")]
        if extra:
            log.warning("%s: ignoring columns %s", path, extra)
        for split in ("train", "val"):
            ids = df[split].dropna().str.strip()
            ids = ids[ids != ""]
            dup = ids[ids.duplicated()].unique().tolist()
            if dup:
                raise CohortError(f"{path}: {split} lists {dup[:5]} more than once")
            parts.append(pd.DataFrame({"fold": fold, "case_id": ids.values, "split": split}))
        fold_df = pd.concat(parts[-2:])
        both = fold_df[fold_df.case_id.duplicated()].case_id.tolist()
        if both:
            raise CohortError(f"{path}: patients in both train and val: {both[:5]}")
    return pd.concat(parts, ignore_index=True)


def make_folds(
    case_ids: Sequence[str],
    times: np.ndarray,
    events: np.ndarray,
    n_folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> pd.DataFrame:
    """Patient-level K folds, stratified on event x time-quantile, shuffled with ``seed``.

    The number of time strata drops (4 -> 1) until every stratum has at least ``n_folds``
    patients, so StratifiedKFold never gets an unsplittable stratum.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(case_ids)
    if n_folds < 2 or n_folds > n:
        raise CohortError(f"need 2 <= folds <= patients ({n}), got {n_folds}")
    if len(set(case_ids)) != n:
        raise CohortError("case ids passed to make_folds are not unique")
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=int)
    strata = None
    for n_time in (4, 3, 2, 1):
        time_stratum = (
            pd.qcut(times, n_time, labels=False, duplicates="drop") if n_time > 1 else np.zeros(n)
        )
        candidate = events * 10 + np.asarray(time_stratum, dtype=int)
        if np.bincount(np.unique(candidate, return_inverse=True)[1]).min() >= n_folds:
            strata = candidate
            break
    if strata is None:
        log.warning("too few events to stratify %d folds; using unstratified folds", n_folds)
        splitter = KFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(n))
    else:
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(
            np.zeros(n), strata
        )
    ids = np.asarray(case_ids, dtype=object)
    parts = []
    for fold, (train_idx, val_idx) in enumerate(splitter):
        for split, idx in (("train", train_idx), ("val", val_idx)):
            parts.append(pd.DataFrame({"fold": fold, "case_id": sorted(ids[idx]), "split": split}))
    return pd.concat(parts, ignore_index=True)


def time_bin_edges(
    times: np.ndarray, events: np.ndarray, n_bins: int = 4, method: str = "quantile"
) -> np.ndarray:
    """Edges (n_bins + 1, months) of discrete survival-time bins, spanning [0, inf).

    - 'quantile' (default): interior edges at the quantiles of the UNCENSORED times given - pass
      the training fold only (the SurvPath convention; balanced event bins).
    - 'equal': equal-width bins between the min and max of all times given (the reference code's
      choice, kept for comparisons; very unbalanced on skewed times).
    Bin i is [edges[i], edges[i + 1]). Raises ``ValueError`` when the edges would not be strictly
    increasing (too few distinct event times for n_bins).
    """
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=int)
    if times.shape != events.shape or times.ndim != 1:
        raise ValueError(f"times {times.shape} and events {events.shape} must be 1-D, same length")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if method == "quantile":
        observed = times[events == 1]
        if observed.size < n_bins:
            raise ValueError(f"{observed.size} uncensored times cannot make {n_bins} quantile bins")
        interior = np.quantile(observed, np.arange(1, n_bins) / n_bins)
    elif method == "equal":
        if times.size == 0:
            raise ValueError("no times to bin")
        interior = np.linspace(times.min(), times.max(), n_bins + 1)[1:-1]
    else:
        raise ValueError(f"time-bin method {method!r} is not 'quantile' or 'equal'")
    edges = np.concatenate([[0.0], interior, [np.inf]])
    if not np.all(np.diff(edges) > 0):
        raise ValueError(f"time-bin edges are not strictly increasing: {edges.tolist()}")
    return edges


def assign_time_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index (int64, 0..len(edges) - 2) of each time: edges[i] <= t < edges[i + 1]."""
    times = np.asarray(times, dtype=float)
    edges = np.asarray(edges, dtype=float)
    if np.any(~np.isfinite(times)) or np.any(times < 0):
        raise ValueError("times must be finite and >= 0")
    bins = np.searchsorted(edges, times, side="right") - 1
    return np.clip(bins, 0, len(edges) - 2).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------


@dataclass
class CohortConfig:
    """Everything `slotspe-pipe cohort` needs; validated once in ``build_cohort``."""

    clinical: Path
    time_col: str
    event_col: str
    case_col: str = "case_id"
    time_unit: str = "months"
    event_is_censorship: bool | None = None
    rna: Path | None = None
    signatures: list[Path] = field(default_factory=list)
    rna_orientation: str = "auto"
    rna_log2: bool = False
    sample_map: Path | None = None
    min_coverage: float = 0.0
    splits: Path | None = None
    n_folds: int | None = None
    seed: int = 0
    slides: Path | None = None
    features: Path | None = None
    encoder: str | None = None
    preflight_dir: Path | None = None
    name: str | None = None


@dataclass
class CohortBuild:
    """An assembled cohort, in memory, ready to be written."""

    patients: pd.DataFrame
    folds: pd.DataFrame
    slides: pd.DataFrame
    omics: dict[str, Any] | None
    coverage: list[dict[str, Any]]
    summary: dict[str, Any]


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _source(path: Path) -> dict[str, str]:
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def _check_config(cfg: CohortConfig) -> None:
    if (cfg.rna is None) != (not cfg.signatures):
        raise CohortError("--rna and --signatures go together (pathway tokens need both)")
    if cfg.rna is None and cfg.slides is None:
        raise CohortError("nothing to join: give --rna/--signatures, --slides, or both")
    if cfg.slides is not None and cfg.features is None:
        raise CohortError("--slides needs --features (the directory of {slide_id}.zarr stores)")
    if cfg.splits is not None and cfg.n_folds is not None:
        raise CohortError("give either --splits or --folds, not both")
    if not 0.0 <= cfg.min_coverage <= 1.0:
        raise CohortError(f"--min-coverage must be a fraction in [0, 1], got {cfg.min_coverage}")
    if cfg.rna_orientation not in ORIENTATIONS:
        raise CohortError(f"--rna-orientation must be one of {ORIENTATIONS}")
    if cfg.features is not None and not Path(cfg.features).is_dir():
        raise CohortError(f"{cfg.features}: features directory not found")


def build_cohort(cfg: CohortConfig) -> CohortBuild:
    """Read, validate and join every input; raises ``CohortError`` (or ``OmicsError``) on bad
    input. Nothing is written."""
    _check_config(cfg)
    t0 = time.perf_counter()
    labels = read_clinical(
        cfg.clinical,
        time_col=cfg.time_col,
        event_col=cfg.event_col,
        case_col=cfg.case_col,
        time_unit=cfg.time_unit,
        event_is_censorship=cfg.event_is_censorship,
    )
    known = set(labels.table.index) | set(labels.excluded)
    excluded: dict[str, str] = dict(labels.excluded)
    summary: dict[str, Any] = {
        "name": cfg.name or Path(cfg.clinical).stem,
        "package_version": __version__,
        "inputs": {"clinical": _source(cfg.clinical)},
        "settings": {
            "time_col": cfg.time_col,
            "event_col": cfg.event_col,
            "case_col": cfg.case_col,
            "time_unit_in_file": cfg.time_unit,
            "time_unit": "months",
            "event_is_censorship": labels.report["event_is_censorship"],
            "min_coverage": cfg.min_coverage,
            "rna_log2": cfg.rna_log2,
            "seed": cfg.seed,
        },
        "clinical": labels.report,
    }

    # Given splits: fail early on patients the clinical table does not know.
    given = None
    if cfg.splits is not None:
        given = read_splits(cfg.splits)
        unknown = sorted(set(given.case_id) - known)
        if unknown:
            raise CohortError(
                f"{cfg.splits}: {len(unknown)} patients in the splits are not in the clinical "
                f"table {cfg.clinical} (column {cfg.case_col!r}): {unknown[:5]}"
            )
        summary["inputs"]["splits"] = [
            _source(p) for p in sorted(Path(cfg.splits).iterdir()) if SPLIT_FILE.match(p.name)
        ]

    # Slides.
    slide_table = pd.DataFrame(columns=list(SLIDE_COLUMNS))
    slide_excluded: dict[str, str] = {}
    slides_of: dict[str, list[str]] = {}  # labelled patient -> usable slides
    n_sheet = 0
    if cfg.slides is not None and cfg.features is not None:
        sheet = read_slide_sheet(cfg.slides)
        n_sheet = len(sheet)
        slide_table, slide_excluded = usable_slides(
            sheet, cfg.features, cfg.encoder, cfg.preflight_dir
        )
        labelled = slide_table.case_id.isin(labels.table.index)
        for sid, case in zip(
            slide_table.slide_id[labelled], slide_table.case_id[labelled], strict=True
        ):
            slides_of.setdefault(case, []).append(sid)
        for ids in slides_of.values():
            ids.sort()
        summary["inputs"]["slides"] = _source(cfg.slides)

    # Expression (rows for labelled patients only).
    expr = None
    gene_sets: list = []
    if cfg.rna is not None:
        gene_sets, duplicate_sets = read_gene_sets(cfg.signatures)
        sample_map = read_sample_map(cfg.sample_map) if cfg.sample_map else None
        expr = read_expression(
            cfg.rna,
            known_genes={g for gs in gene_sets for g in gs.genes},
            known_patients=known,
            orientation=cfg.rna_orientation,
            sample_map=sample_map,
            log2=cfg.rna_log2,
        )
        rna_labelled = set(expr.patients) & set(labels.table.index)
        if not rna_labelled:
            raise CohortError(
                f"{cfg.rna}: no expression sample maps to a patient of {cfg.clinical} "
                f"(expression patients e.g. {expr.patients[:3]}, clinical e.g. "
                f"{list(labels.table.index[:3])}); check ids or pass --sample-map"
            )
        summary["inputs"]["rna"] = _source(cfg.rna)
        summary["inputs"]["signatures"] = [_source(p) for p in cfg.signatures]
        if cfg.sample_map:
            summary["inputs"]["sample_map"] = _source(cfg.sample_map)
        summary["omics"] = {
            "expression": expr.report,
            "gene_sets": {"pathways_listed": len(gene_sets), "duplicate_names": duplicate_sets},
            "patients_without_label": sorted(set(expr.patients) - set(labels.table.index)),
        }
        rna_patients = rna_labelled
    else:
        rna_patients = set()

    # Membership: labelled, predictable from what was given, present in the given splits.
    in_splits = set(given.case_id) if given is not None else None
    members: list[str] = []
    for case in labels.table.index:
        if cfg.slides is not None and not slides_of.get(case):
            excluded[case] = "no usable slide"
        elif cfg.slides is None and case not in rna_patients:
            excluded[case] = "no expression data (omics-only cohort)"
        elif in_splits is not None and case not in in_splits:
            excluded[case] = "not in the given splits"
        else:
            members.append(case)
    if not members:
        raise CohortError(
            f"no patient is left in the cohort; reasons: {dict(Counter(excluded.values()))}"
        )
    table = labels.table.loc[members]
    patients = pd.DataFrame(
        {
            "case_id": members,
            "time": table["time"].to_numpy(float),
            "event": table["event"].to_numpy(int),
            "has_omics": [c in rna_patients for c in members],
            "slide_ids": [";".join(slides_of.get(c, [])) for c in members],
            "n_slides": [len(slides_of.get(c, [])) for c in members],
            "time_unit": "months",
        }
    )
    member_set = set(members)
    if cfg.slides is not None:
        for sid, case in zip(slide_table.slide_id, slide_table.case_id, strict=True):
            if case not in member_set:
                slide_excluded[sid] = (
                    f"patient excluded: {case} ({excluded[case]})"
                    if case in excluded
                    else f"patient not in clinical table: {case}"
                )
        slide_table = slide_table[slide_table.case_id.isin(member_set)]
        slide_table = slide_table.sort_values(["case_id", "slide_id"]).reset_index(drop=True)
        summary["slides"] = {
            "in_sheet": n_sheet,
            "usable": len(slide_table),
            "excluded_by_reason": dict(Counter(_reason_kind(r) for r in slide_excluded.values())),
            "excluded": dict(sorted(slide_excluded.items())),
            "features_dir": str(Path(cfg.features).resolve()),
            "encoder": cfg.encoder,
            "preflight_dir": str(Path(cfg.preflight_dir).resolve()) if cfg.preflight_dir else None,
        }
        log.info("slides: %d usable of %d", len(slide_table), n_sheet)

    # Omics store content.
    omics = None
    coverage: list[dict[str, Any]] = []
    if expr is not None:
        omics, coverage = _omics_content(cfg, expr, gene_sets, patients, summary)

    # Folds.
    if given is not None:
        folds = given[given.case_id.isin(member_set)].reset_index(drop=True)
        dropped = sorted(set(given.case_id) - member_set)
        summary["folds"] = {"source": "given", "dir": str(cfg.splits), "dropped_patients": dropped}
        for fold, part in folds.groupby("fold"):
            missing = member_set - set(part.case_id)
            if missing:
                log.warning(
                    "fold %s: %d cohort patients are in neither train nor val", fold, len(missing)
                )
    else:
        n_folds = cfg.n_folds or DEFAULT_FOLDS
        folds = make_folds(
            members, patients.time.to_numpy(), patients.event.to_numpy(), n_folds, cfg.seed
        )
        summary["folds"] = {
            "source": "generated",
            "seed": cfg.seed,
            "stratified_on": "event x time quartile",
        }
    _check_no_leak(folds)
    event_of = dict(zip(patients.case_id, patients.event, strict=True))
    summary["folds"]["n_folds"] = int(folds.fold.nunique())
    summary["folds"]["per_fold"] = {
        str(fold): {
            split: {
                "patients": int((part.split == split).sum()),
                "events": int(sum(event_of[c] for c in part.case_id[part.split == split])),
            }
            for split in ("train", "val")
        }
        for fold, part in folds.groupby("fold")
    }

    summary["patients"] = {
        "in_clinical": labels.report["patients"],
        "in_cohort": len(patients),
        "with_omics": int(patients.has_omics.sum()),
        "without_omics": int((~patients.has_omics).sum()),
        "with_slides": int((patients.n_slides > 0).sum()),
        "slides": int(patients.n_slides.sum()),
        "excluded_by_reason": dict(Counter(_reason_kind(r) for r in excluded.values())),
        "excluded": dict(sorted(excluded.items())),
    }
    summary["events"] = {
        "observed": int(patients.event.sum()),
        "censored": int((patients.event == 0).sum()),
    }
    summary["time_months"] = {
        "min": float(patients.time.min()),
        "median": float(patients.time.median()),
        "max": float(patients.time.max()),
    }
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return CohortBuild(patients, folds, slide_table, omics, coverage, summary)


def _reason_kind(reason: str) -> str:
    # Group reasons whose details differ ("preflight status failed: <message>").
    return reason.split(":", 1)[0]


def _check_no_leak(folds: pd.DataFrame) -> None:
    both = folds.groupby(["fold", "case_id"]).split.nunique()
    leaked = both[both > 1]
    if len(leaked):
        raise CohortError(f"patients on both sides of a fold: {leaked.index.tolist()[:5]}")


def _omics_content(
    cfg: CohortConfig,
    expr: Any,
    gene_sets: list,
    patients: pd.DataFrame,
    summary: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rows of the cohort's patients with omics (patients.csv order), genes used by kept pathways."""
    row_of = {p: i for i, p in enumerate(expr.patients)}
    cases = patients.case_id[patients.has_omics].tolist()
    values = expr.values[[row_of[c] for c in cases]]
    finite = np.isfinite(values).all(axis=0)
    genes = [g for g, ok in zip(expr.genes, finite, strict=True) if ok]
    if not finite.all():
        log.warning(
            "%s: %d genes have missing values and were dropped", cfg.rna, int((~finite).sum())
        )
        values = values[:, finite]
    pathway_map = map_pathways(gene_sets, genes, cfg.min_coverage, expression_source=str(cfg.rna))
    columns, kept_genes, membership = compact_genes(genes, pathway_map)
    gene_set_source = ", ".join(str(Path(p).name) for p in cfg.signatures)
    n_dropped = len(pathway_map.coverage) - len(pathway_map.pathways)
    summary["omics"].update(
        {
            "orientation": expr.orientation,
            "log2_applied": expr.log2_applied,
            "genes_with_missing_values_dropped": int((~finite).sum()),
            "genes_measured": len(genes),
            "genes_found_in_pathways": len(kept_genes),
            "pathways_listed": len(pathway_map.coverage),
            "pathways_kept": len(pathway_map.pathways),
            "pathways_dropped": pathway_map.dropped,
            "pathways_dropped_count": n_dropped,
            "min_coverage": cfg.min_coverage,
            "gene_set_source": gene_set_source,
        }
    )
    attrs = {
        "sources": {
            "rna": summary["inputs"]["rna"],
            "signatures": summary["inputs"]["signatures"],
        },
        "gene_set_source": gene_set_source,
        "coverage": {
            c["pathway"]: {"listed": c["listed"], "found": c["found"]}
            for c in pathway_map.coverage
            if c["kept"]
        },
        "pathways_dropped": pathway_map.dropped,
        "log2_applied": expr.log2_applied,
        "orientation": expr.orientation,
        "min_coverage": cfg.min_coverage,
        "normalization": "none (raw values; fit per training fold with omics.fit_normalizer)",
    }
    content = {
        "expression": values[:, columns].astype(np.float32),
        "patients": cases,
        "genes": kept_genes,
        "pathways": pathway_map.pathways,
        "membership": membership,
        "attrs": attrs,
    }
    return content, pathway_map.coverage


def write_cohort(build: CohortBuild, out_dir: str | Path) -> Path:
    """Write the cohort directory atomically (built under a temporary name, then renamed)."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        build.patients.to_csv(tmp / "patients.csv", index=False, columns=list(PATIENT_COLUMNS))
        build.folds.to_csv(tmp / "folds.csv", index=False, columns=list(FOLD_COLUMNS))
        build.slides.to_csv(tmp / "slides.csv", index=False, columns=list(SLIDE_COLUMNS))
        if build.omics is not None:
            o = build.omics
            write_omics(
                tmp / "omics.zarr",
                o["expression"],
                o["patients"],
                o["genes"],
                o["pathways"],
                o["membership"],
                o["attrs"],
            )
            pd.DataFrame(build.coverage).to_csv(tmp / "pathways.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(build.summary, indent=2, default=str) + "\n")
    return out_dir


def assemble_cohort(cfg: CohortConfig, out_dir: str | Path) -> CohortBuild:
    """Build and write a cohort; returns the build (its ``summary`` is what was written)."""
    if cfg.name is None:
        cfg = replace(cfg, name=Path(out_dir).name)
    build = build_cohort(cfg)
    write_cohort(build, out_dir)
    s = build.summary
    log.info(
        "cohort %s: %d patients (%d events), %d with omics, %d with slides, %s excluded -> %s",
        s["name"],
        s["patients"]["in_cohort"],
        s["events"]["observed"],
        s["patients"]["with_omics"],
        s["patients"]["with_slides"],
        len(s["patients"]["excluded"]),
        out_dir,
    )
    return build


# ----------------------------------------------------------------------------------------------
# Reading a cohort
# ----------------------------------------------------------------------------------------------


@dataclass
class Cohort:
    """A written cohort directory, loaded."""

    path: Path
    patients: pd.DataFrame  # indexed by case_id
    folds: pd.DataFrame
    slides: pd.DataFrame
    omics: OmicsData | None
    summary: dict[str, Any]

    @property
    def n_folds(self) -> int:
        return int(self.folds.fold.nunique())

    def fold_split(self, k: int) -> tuple[list[str], list[str]]:
        """(train case ids, val case ids) of fold ``k``."""
        part = self.folds[self.folds.fold == k]
        if part.empty:
            raise KeyError(f"{self.path}: no fold {k} (folds {sorted(self.folds.fold.unique())})")
        return (
            part.case_id[part.split == "train"].tolist(),
            part.case_id[part.split == "val"].tolist(),
        )

    def slide_paths(self, case_id: str) -> list[Path]:
        """Feature stores of a patient's usable slides (all are concatenated for the model)."""
        return [Path(p) for p in self.slides.features_path[self.slides.case_id == case_id]]

    def omics_rows(self, case_ids: Sequence[str]) -> np.ndarray:
        """Row of each case in ``omics.expression`` (int64), -1 for patients without omics."""
        if self.omics is None:
            return np.full(len(case_ids), -1, dtype=np.int64)
        rows = self.omics.patient_row
        return np.array([rows.get(c, -1) for c in case_ids], dtype=np.int64)

    def fingerprint(self) -> str:
        """sha256 over everything a model trained on this cohort learns from.

        Why: a training fold resumes from (or reuses) its checkpoint only if the data are the
        same, and a cohort rebuilt after re-tiling or re-extraction keeps its file paths while
        its features change. Covered: the patient, fold and slide tables, the omics values, gene
        and pathway lists, and each feature store's metadata (its zarr.json: encoder, weights
        checksum, tiling settings hash, patch count), read without loading any features.
        """
        digest = hashlib.sha256()
        for name in ("patients.csv", "folds.csv", "slides.csv"):
            digest.update(sha256_file(self.path / name).encode())
        if self.omics is not None:
            om = self.omics
            digest.update(np.ascontiguousarray(om.expression, dtype=np.float32).tobytes())
            for values in (om.genes, om.pathways, om.pathway_gene_index, om.pathway_offsets):
                digest.update(json.dumps(np.asarray(values).tolist()).encode())
        for path in self.slides.features_path:
            meta = Path(path) / "zarr.json" if path else None
            digest.update(sha256_file(meta).encode() if meta and meta.is_file() else b"absent")
        return digest.hexdigest()


def load_cohort(cohort_dir: str | Path) -> Cohort:
    """Load a cohort directory written by ``slotspe-pipe cohort``; checks it is consistent."""
    cohort_dir = Path(cohort_dir)
    if not (cohort_dir / "patients.csv").is_file():
        raise CohortError(f"{cohort_dir}: not a cohort directory (no patients.csv)")
    patients = pd.read_csv(
        cohort_dir / "patients.csv",
        dtype={"case_id": str, "slide_ids": str, "time_unit": str},
        keep_default_na=False,
    )
    patients["has_omics"] = patients["has_omics"].astype(str).str.lower().isin(("true", "1"))
    patients["event"] = patients["event"].astype(int)
    patients = patients.set_index("case_id", drop=False)
    folds = pd.read_csv(cohort_dir / "folds.csv", dtype={"case_id": str, "split": str})
    slides = pd.read_csv(cohort_dir / "slides.csv", dtype=str, keep_default_na=False)
    summary_path = cohort_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    unknown = set(folds.case_id) - set(patients.index)
    if unknown:
        raise CohortError(
            f"{cohort_dir}/folds.csv: patients not in patients.csv: {sorted(unknown)[:5]}"
        )
    _check_no_leak(folds)
    omics = None
    if (cohort_dir / "omics.zarr").exists():
        omics = read_omics(cohort_dir / "omics.zarr")
        expected = patients.case_id[patients.has_omics].tolist()
        if omics.patients.tolist() != expected:
            raise StoreError(
                f"{cohort_dir}/omics.zarr: patients do not match the has_omics rows of patients.csv"
            )
    elif patients.has_omics.any():
        raise StoreError(f"{cohort_dir}: patients.csv has omics patients but omics.zarr is missing")
    return Cohort(cohort_dir, patients, folds, slides, omics, summary)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("clinical labels")
    g.add_argument(
        "--clinical",
        type=Path,
        required=True,
        metavar="CSV",
        help="clinical CSV (one row per patient or per slide)",
    )
    g.add_argument("--time-col", required=True, metavar="COL", help="survival time column")
    g.add_argument(
        "--event-col",
        required=True,
        metavar="COL",
        help="event column (1 = event observed, unless censorship)",
    )
    ev = g.add_mutually_exclusive_group()
    ev.add_argument(
        "--event-is-censorship",
        dest="event_is_censorship",
        action="store_true",
        default=None,
        help="the event column is 1 = censored (default: inferred when its name contains 'censor')",
    )
    ev.add_argument(
        "--event-is-observed",
        dest="event_is_censorship",
        action="store_false",
        help="the event column is 1 = event observed, whatever its name",
    )
    g.add_argument("--time-unit", choices=TIME_UNITS, default="months", help="unit of --time-col")
    g.add_argument(
        "--case-col", default="case_id", metavar="COL", help="patient id column (default case_id)"
    )

    o = parser.add_argument_group("omics")
    o.add_argument(
        "--rna",
        type=Path,
        metavar="FILE",
        help="expression matrix: .csv/.tsv/.parquet, gene symbols",
    )
    o.add_argument(
        "--signatures",
        type=Path,
        metavar="FILE",
        action="append",
        default=[],
        help="gene sets: .gmt or column-per-pathway .csv; repeat to take the union",
    )
    o.add_argument(
        "--rna-orientation",
        choices=ORIENTATIONS,
        default="auto",
        help="which axis holds samples (default auto: guessed from gene symbols and patient ids)",
    )
    o.add_argument("--rna-log2", action="store_true", help="apply log2(x + 1) (counts/TPM input)")
    o.add_argument(
        "--sample-map",
        type=Path,
        metavar="CSV",
        help="CSV sample_id,patient_id for non-TCGA sample ids",
    )
    o.add_argument(
        "--min-coverage",
        type=float,
        metavar="FRAC",
        default=0.0,
        help="drop pathways with a smaller fraction of genes measured (default 0: keep any with >= 1)",
    )

    f = parser.add_argument_group("folds")
    fx = f.add_mutually_exclusive_group()
    fx.add_argument(
        "--splits", type=Path, metavar="DIR", help="directory of splits_<k>.csv (train/val columns)"
    )
    fx.add_argument(
        "--folds",
        dest="n_folds",
        type=int,
        metavar="K",
        help=f"generate K folds (default {DEFAULT_FOLDS})",
    )
    f.add_argument("--seed", type=int, default=0, help="seed of generated folds")

    s = parser.add_argument_group("slides")
    s.add_argument(
        "--slides",
        type=Path,
        metavar="SHEET",
        help="slide sample sheet CSV (slide_id, path[, patient_id, mpp])",
    )
    s.add_argument(
        "--features",
        type=Path,
        metavar="DIR",
        help="directory holding {slide_id}.zarr feature stores",
    )
    s.add_argument("--encoder", metavar="NAME", help="required encoder name of the feature stores")
    s.add_argument(
        "--preflight-dir",
        type=Path,
        metavar="DIR",
        help="directory of {slide_id}.json preflight records",
    )

    parser.add_argument("--name", help="cohort name (default: the output directory name)")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        metavar="COHORT_DIR",
        help="cohort directory to write",
    )


def run_cli(args: argparse.Namespace) -> int:
    cfg = CohortConfig(
        clinical=args.clinical,
        time_col=args.time_col,
        event_col=args.event_col,
        case_col=args.case_col,
        time_unit=args.time_unit,
        event_is_censorship=args.event_is_censorship,
        rna=args.rna,
        signatures=list(args.signatures),
        rna_orientation=args.rna_orientation,
        rna_log2=args.rna_log2,
        sample_map=args.sample_map,
        min_coverage=args.min_coverage,
        splits=args.splits,
        n_folds=args.n_folds,
        seed=args.seed,
        slides=args.slides,
        features=args.features,
        encoder=args.encoder,
        preflight_dir=args.preflight_dir,
        name=args.name,
    )
    try:
        assemble_cohort(cfg, args.out)
    except (CohortError, OmicsError, StoreError) as exc:
        print(f"slotspe-pipe cohort: error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "Cohort",
    "CohortBuild",
    "CohortConfig",
    "CohortError",
    "Labels",
    "assemble_cohort",
    "assign_time_bins",
    "build_cohort",
    "load_cohort",
    "make_folds",
    "read_clinical",
    "read_slide_sheet",
    "read_splits",
    "time_bin_edges",
    "usable_slides",
    "write_cohort",
]
