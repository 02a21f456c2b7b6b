"""The run report: one self-contained HTML page that says what happened to every slide and model.

A pipeline over a hospital archive fails quietly unless someone looks: a slide the reader could not
open, an mpp guessed from a default, a tissue mask that missed half the section, an encoder that ran
with random weights. This page puts those facts first (failures before anything else, with the
reason each stage recorded), then the per-slide QC that lets a person check segmentation and the
patch grid by eye, the cohort that came out of the join, the cross-validated metrics, and for a few
validation patients the model's attention drawn over the slide's own tissue thumbnail
(``attention_overlay``).

Inputs are the files the other stages write (see DESIGN.md). Only the slide status table is
required; every other input may be absent or partial, and whatever is missing is shown as missing
on the page, never skipped, so a failed slide can not disappear from the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from slotspe_pipe import __version__
from slotspe_pipe import attention_overlay as ov
from slotspe_pipe import report_html as h
from slotspe_pipe.store.atomic import write_text
from slotspe_pipe.store.features import FeatureReader
from slotspe_pipe.store.tiles import read_tiles
from slotspe_pipe.store.zarr_group import StoreError

log = logging.getLogger(__name__)

THUMB_PX = 400  # max width of embedded slide thumbnails (keeps the page small)
KM_PX = 560
THUMB_MAX_HEIGHT_PX = 520  # tall sections (needle biopsies) must not make one card a page long
THUMB_FORMAT = "jpeg"  # tissue images: JPEG is half the size of a palette PNG and 100x faster
ATTENTION_PX = 640  # width of a training-time attention plot shown as a fallback
OVERLAY_PX = (480, 440)  # max width, height of the tissue in one attention panel
OVERLAY_SLOTS = 2  # most gated WSI slots drawn per slide
OMICS_SLOTS = 2  # most gated omics slots listed per patient
OMICS_TOP = 5  # pathways listed per omics slot
STAGES = ("preflight", "segmentation", "tiling", "extraction", "cohort")
# Problem kinds, worst first: decides a slide's overall outcome and the row colour.
KINDS = ("failed", "missing", "excluded")
MODEL_ORDER = ("slotspe", "snn", "abmil", "coxph")


@dataclass(frozen=True)
class Problem:
    """One reason a slide did not make it through a stage."""

    slide_id: str
    stage: str  # one of STAGES
    kind: str  # one of KINDS: the stage failed, its output is missing, or the cohort left it out
    reason: str
    check: str = ""  # which check of the stage failed, where the stage records it (preflight)

    @property
    def where(self) -> str:
        return f"{self.stage} ({self.check})" if self.check else self.stage


@dataclass
class SlideQC:
    """Everything the stages recorded about one slide (None where a stage left nothing)."""

    slide_id: str
    status: dict[str, Any]
    preflight: dict[str, Any] | None = None
    tissue: dict[str, Any] | None = None
    tissue_folder: Path | None = None  # {tissue_dir}/{slide}, where the thumbnail should be
    tissue_thumbnail: Path | None = None
    tiles: dict[str, Any] | None = None  # tiles store attrs plus "n" (patch count)
    grid_png: Path | None = None
    extraction: dict[str, Any] | None = None
    feature_attrs: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """ok, or the worst problem kind (failed > missing > excluded)."""
        kinds = {p.kind for p in self.problems}
        return next((k for k in KINDS if k in kinds), "ok")

    def fact(self, key: str) -> Any:
        """A slide fact from the first stage that recorded it (status table, preflight, tiles)."""
        for source in (self.status, self.preflight or {}, self.tiles or {}):
            value = source.get(key)
            if value not in (None, "") and not (isinstance(value, float) and math.isnan(value)):
                return value
        return None


@dataclass
class Cohort:
    """The cohort directory's tables and summary, with whatever could not be read."""

    path: Path | None
    patients: pd.DataFrame | None = None
    folds: pd.DataFrame | None = None
    slides: pd.DataFrame | None = None
    summary: dict[str, Any] | None = None
    excluded_slides: list[tuple[str, str]] = field(default_factory=list)
    excluded_patients: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.summary:
            for key in ("name", "cohort"):
                if isinstance(self.summary.get(key), str):
                    return self.summary[key]
        return self.path.name if self.path else "(unknown cohort)"


@dataclass
class PatientAttention:
    """A validation patient's attention outputs in one fold: the record and any trainer plots."""

    fold: int
    case_id: str
    record: Path | None  # fold_{k}/attention/{case}.npz
    pngs: list[Path] = field(default_factory=list)  # fold_{k}/attention/{case}*.png


@dataclass
class ModelRun:
    """One model and seed: its summary over folds, KM plot and attention outputs."""

    model: str
    seed: int
    path: Path
    summary: dict[str, Any] | None
    error: str | None
    attention: list[PatientAttention]  # sorted by fold, then case


# ---------------------------------------------------------------------------------------------
# Reading the run
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None), or (None, why) when the file is missing or is not a JSON object."""
    if not path.is_file():
        return None, f"missing: {path}"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"unreadable: {path} ({exc})"
    if not isinstance(record, dict):
        return None, f"unreadable: {path} (expected a JSON object, got {type(record).__name__})"
    return record, None


def read_status(path: Path) -> pd.DataFrame:
    """The slide status table (STATUS.tsv from ``slide-status``); the report's list of slides."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: slide status table not found (written by slide-status)")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("slide_id", "status"):
        if column not in table.columns:
            raise ValueError(
                f"{path}: column {column!r} missing (expected slide_id, status, reason, ...)"
            )
    return table


def gather_slide(
    row: dict[str, Any],
    *,
    preflight_dir: Path | None,
    tissue_dir: Path | None,
    tiles_dir: Path | None,
    features_dir: Path | None,
) -> SlideQC:
    """Collect one slide's records from every stage directory; absences become Problems."""
    sid = row["slide_id"]
    qc = SlideQC(slide_id=sid, status=row)
    if preflight_dir is not None:
        qc.preflight, err = _read_json(preflight_dir / f"{sid}.json")
        if err:
            qc.warnings.append(f"preflight record {err}")
        elif qc.preflight:
            qc.warnings += [str(w) for w in qc.preflight.get("warnings") or []]
            if qc.preflight.get("mpp_is_estimate"):
                qc.warnings.append(
                    f"µm/px is an estimate (source: {qc.preflight.get('mpp_source') or 'unknown'})"
                )
    if row.get("status") != "ok":
        pre = qc.preflight or {}
        reason = row.get("reason") or pre.get("reason") or "no reason recorded"
        check = pre.get("failed_check")
        qc.problems.append(Problem(sid, "preflight", "failed", reason, check=check or ""))
        return qc  # later stages never ran for this slide; their absence is not news
    if tissue_dir is not None:
        _gather_tissue(qc, tissue_dir / sid)
    if tiles_dir is not None:
        _gather_tiles(qc, tiles_dir)
    if features_dir is not None:
        _gather_features(qc, features_dir)
    return qc


def _gather_tissue(qc: SlideQC, folder: Path) -> None:
    qc.tissue_folder = folder
    if not folder.is_dir():
        qc.problems.append(
            Problem(qc.slide_id, "segmentation", "missing", f"tissue output missing: {folder}")
        )
        return
    thumb = folder / "thumbnail.png"
    qc.tissue_thumbnail = thumb if thumb.is_file() else None
    qc.tissue, err = _read_json(folder / "summary.json")
    if err:  # summary.json is written last: without it the segmentation did not finish
        qc.problems.append(
            Problem(qc.slide_id, "segmentation", "missing", f"tissue summary.json {err}")
        )
        return
    qc.warnings += [f"segmentation: {w}" for w in qc.tissue.get("warnings") or []]


def _gather_tiles(qc: SlideQC, tiles_dir: Path) -> None:
    store = tiles_dir / f"{qc.slide_id}.zarr"
    grid = tiles_dir / f"{qc.slide_id}.grid.png"
    qc.grid_png = grid if grid.is_file() else None
    if not store.exists():
        qc.problems.append(
            Problem(qc.slide_id, "tiling", "missing", f"tiles store missing: {store}")
        )
        return
    try:
        tiles = read_tiles(store)
    except (StoreError, OSError, ValueError, KeyError) as exc:
        qc.problems.append(
            Problem(qc.slide_id, "tiling", "failed", f"tiles store unreadable: {exc}")
        )
        return
    qc.tiles = {**tiles.attrs, "n": tiles.n}
    if tiles.n == 0:
        qc.problems.append(
            Problem(
                qc.slide_id,
                "tiling",
                "failed",
                f"no patches passed min_tissue={tiles.attrs.get('min_tissue')} at "
                f"{tiles.attrs.get('target_mpp')} µm/px",
            )
        )


def _gather_features(qc: SlideQC, features_dir: Path) -> None:
    record_path = features_dir / f"{qc.slide_id}.json"
    qc.extraction, err = _read_json(record_path)
    if err:
        qc.problems.append(
            Problem(qc.slide_id, "extraction", "missing", f"extraction record {err}")
        )
        return
    if qc.extraction.get("status", "ok") != "ok":
        reason = qc.extraction.get("reason") or "no reason recorded"
        qc.problems.append(Problem(qc.slide_id, "extraction", "failed", reason))
        return
    store = features_dir / f"{qc.slide_id}.zarr"
    if not store.exists():
        qc.problems.append(
            Problem(qc.slide_id, "extraction", "missing", f"feature store missing: {store}")
        )
        return
    try:
        reader = FeatureReader(store)
    except (StoreError, OSError, ValueError, KeyError) as exc:
        qc.problems.append(
            Problem(qc.slide_id, "extraction", "failed", f"feature store unreadable: {exc}")
        )
        return
    qc.feature_attrs = {**reader.attrs, "n": reader.n}
    if qc.tiles is not None:
        if reader.n != qc.tiles["n"]:
            qc.warnings.append(f"feature store has {reader.n} rows, tiles store {qc.tiles['n']}")
        tiles_hash = qc.tiles.get("settings_hash")
        feat_hash = reader.attrs.get("tiles_settings_hash")
        if tiles_hash and feat_hash and tiles_hash != feat_hash:
            qc.warnings.append(
                f"features were extracted from other tiles (settings hash {feat_hash} != {tiles_hash})"
            )


def gather_cohort(cohort_dir: Path | None) -> Cohort:
    """Read patients.csv, folds.csv, slides.csv and summary.json, tolerating any of them missing."""
    cohort = Cohort(path=cohort_dir)
    if cohort_dir is None:
        return cohort
    if not cohort_dir.is_dir():
        cohort.errors.append(f"cohort directory missing: {cohort_dir}")
        return cohort
    for name in ("patients", "folds", "slides"):
        path = cohort_dir / f"{name}.csv"
        if not path.is_file():
            cohort.errors.append(f"{name}.csv missing: {path}")
            continue
        try:
            frame = pd.read_csv(path, dtype={"case_id": str, "slide_id": str, "slide_ids": str})
        except (OSError, ValueError) as exc:
            cohort.errors.append(f"{path}: unreadable ({exc})")
            continue
        setattr(cohort, name, frame)
    cohort.summary, err = _read_json(cohort_dir / "summary.json")
    if err:
        cohort.errors.append(f"cohort summary {err}")
    cohort.excluded_slides = _unique(
        _exclusions(cohort.summary or {}, "slide") + _slide_table_exclusions(cohort.slides)
    )
    cohort.excluded_patients = _unique(
        _exclusions(cohort.summary or {}, "patient") + _exclusions(cohort.summary or {}, "case")
    )
    return cohort


_EXCLUDED_KEY = re.compile(r"exclu|dropped|removed|skipped|_out$|^out$", re.IGNORECASE)
_ID_KEYS = ("slide_id", "case_id", "patient_id", "slide", "case", "patient", "id")
_REASON_KEYS = ("reason", "reasons", "why", "error", "cause")


def _exclusions(summary: dict[str, Any], entity: str) -> list[tuple[str, str]]:
    """(id, reason) pairs under any key that names ``entity`` and an exclusion, at any depth.

    The cohort stage owns the exact keys (``excluded_slides``, ``patients: {out: ...}``, ...), so
    the report looks for the meaning rather than one spelling.
    """
    found: list[tuple[str, str]] = []

    def walk(node: Any, trail: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            path = (*trail, str(key))
            names_entity = any(entity in part.lower() for part in path)
            if names_entity and _EXCLUDED_KEY.search(str(key)):
                # An id listed without a reason gets the key it was listed under as its reason.
                found.extend(_as_pairs(value, default_reason=" / ".join(path).replace("_", " ")))
            elif isinstance(value, dict):
                walk(value, path)

    walk(summary, ())
    return found


def _as_pairs(value: Any, default_reason: str = "") -> list[tuple[str, str]]:
    """Exclusions written as {id: reason}, [{slide_id, reason}], [id, ...] or {reason: [ids]}.

    Numbers are counts (``excluded_by_reason: {"no usable slide": 3}``), not ids: skipped.
    """
    if isinstance(value, dict):
        pairs: list[tuple[str, str]] = []
        for key, val in value.items():
            if isinstance(val, int | float):
                continue
            if isinstance(val, list) and all(isinstance(v, str) for v in val):
                pairs += [(v, str(key)) for v in val]  # {reason: [ids]}
            else:
                pairs.append((str(key), _reason_text(val) or default_reason))
        return pairs
    if isinstance(value, list):
        pairs = []
        for item in value:
            if isinstance(item, dict):
                ident = next((item[k] for k in _ID_KEYS if item.get(k) not in (None, "")), None)
                reason = next((item[k] for k in _REASON_KEYS if item.get(k) not in (None, "")), "")
                rest = {k: v for k, v in item.items() if k not in _ID_KEYS}
                pairs.append((str(ident), _reason_text(reason or rest) or default_reason))
            elif isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((str(item[0]), _reason_text(item[1]) or default_reason))
            elif isinstance(item, str):
                pairs.append((item, default_reason))
        return pairs
    return []  # a bare count: rendered with the summary, nothing to list


def _reason_text(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _slide_table_exclusions(slides: pd.DataFrame | None) -> list[tuple[str, str]]:
    """Rows of the cohort's slides.csv marked as not used, with their reason column."""
    if slides is None or "slide_id" not in slides.columns:
        return []
    reason_col = next((c for c in slides.columns if "reason" in c.lower()), None)
    flag_col = next(
        (c for c in ("included", "used", "in_cohort", "status", "excluded") if c in slides.columns),
        None,
    )
    if flag_col is None:
        return []
    pairs = []
    for row in slides.to_dict("records"):
        flag = str(row.get(flag_col, "")).strip().lower()
        excluded = (
            flag in ("true", "1", "yes")
            if flag_col == "excluded"
            else flag not in ("true", "1", "yes", "ok", "included", "used")
        )
        if excluded:
            reason = row.get(reason_col) if reason_col else ""
            reason = (
                ""
                if reason is None or (isinstance(reason, float) and math.isnan(reason))
                else reason
            )
            pairs.append((str(row["slide_id"]), str(reason) or f"{flag_col}={flag}"))
    return pairs


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeats of the same id; keep the most informative (non-empty) reason."""
    best: dict[str, str] = {}
    for ident, reason in pairs:
        if ident not in best or (not best[ident] and reason):
            best[ident] = reason
    return list(best.items())


def gather_models(models_dir: Path | None) -> tuple[list[ModelRun], str | None]:
    """Every ``{model}/seed_{s}`` run under ``models_dir``; (runs, why none) when there are none."""
    if models_dir is None:
        return [], "no models directory given"
    if not models_dir.is_dir():
        return [], f"models directory missing: {models_dir}"
    runs = []
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        for seed_dir in sorted(model_dir.glob("seed_*"), key=_seed_number):
            summary, err = _read_json(seed_dir / "summary.json")
            runs.append(
                ModelRun(
                    model_dir.name,
                    _seed_number(seed_dir),
                    seed_dir,
                    summary,
                    err,
                    _gather_attention(seed_dir),
                )
            )
    runs.sort(key=lambda r: (_model_rank(r.model), r.model, r.seed))
    return runs, None if runs else f"no model runs found under {models_dir}"


def _gather_attention(seed_dir: Path) -> list[PatientAttention]:
    """Each (fold, patient) with an attention record or a trainer plot under fold_*/attention/."""
    found: dict[tuple[int, str], PatientAttention] = {}
    for npz in sorted(seed_dir.glob("fold_*/attention/*.npz")):
        if not npz.name.startswith("."):  # dot files are temp files of an interrupted write
            fold = _fold_number(npz)
            found[(fold, npz.stem)] = PatientAttention(fold, npz.stem, npz)
    for png in sorted(seed_dir.glob("fold_*/attention/*.png")):
        if png.name.startswith("."):
            continue
        fold = _fold_number(png)
        # {case}.png beside {case}.npz; older runs wrote {case}_slot{k}.png without records.
        case = png.stem if (fold, png.stem) in found else _patient_key(png)
        found.setdefault((fold, case), PatientAttention(fold, case, None)).pngs.append(png)
    return [found[k] for k in sorted(found)]


def _seed_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1


def _fold_number(png: Path) -> int:
    match = re.fullmatch(r"fold_(\d+)", png.parents[1].name)  # fold_{k}/attention/{case}.png
    return int(match.group(1)) if match else -1


def _model_rank(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _guarded(anchor: str, title: str, build: Callable[[], h.Html]) -> h.Html:
    """Build one section; an input in an unexpected shape shows as an error box, not a crash.

    The report runs last, after hours of compute: one odd file from another stage should cost one
    section, and the page says which section and why.
    """
    try:
        return build()
    except (KeyError, ValueError, TypeError, AttributeError, OSError, IndexError) as exc:
        log.exception("report section %r failed", title)
        return h.section(
            anchor,
            title,
            h.note(f"This section could not be built: {type(exc).__name__}: {exc}", "failed"),
        )


def _stat(value: Any, label: str, tone: str = "") -> h.Html:
    return h.Html(
        f'<div class="stat {tone}"><div class="v">{h.esc(value)}</div>'
        f'<div class="k">{h.esc(label)}</div></div>'
    )


def _overview(
    slides: list[SlideQC], problems: list[Problem], cohort: Cohort, runs: list[ModelRun]
) -> h.Html:
    failed_ids = {p.slide_id for p in problems if p.kind in ("failed", "missing")}
    excluded_ids = {p.slide_id for p in problems if p.kind == "excluded"} - failed_ids
    total = len(slides)
    ok = sum(1 for s in slides if s.slide_id not in failed_ids)
    patients, events, with_omics = _patient_counts(cohort)
    patches = sum(int(s.tiles["n"]) for s in slides if s.tiles)
    extracted = [s.extraction for s in slides if s.extraction and s.feature_attrs]
    seconds = sum(h.as_float(e.get("seconds")) or 0.0 for e in extracted)
    n_extracted = sum(int(h.as_float(e.get("n_patches")) or 0) for e in extracted)
    rate = f"{n_extracted / seconds:,.1f}" if seconds > 0 else "–"
    stats = [
        _stat(total, "slides"),
        _stat(ok, "slides processed", "good" if ok == total else ""),
        _stat(len(failed_ids), "slides failed", "bad" if failed_ids else "good"),
        _stat(len(excluded_ids), "excluded by cohort", "warn" if excluded_ids else ""),
        _stat(f"{patches:,}", "patches"),
        _stat(rate, "patches/s extracted"),
        _stat(patients, "patients"),
        _stat(events, "events (deaths)"),
        _stat(with_omics, "patients with RNA"),
        _stat(len({r.model for r in runs}), "models"),
    ]
    return h.section(
        "overview", "Run overview", h.Html(f'<div class="stats">{h.join(stats)}</div>')
    )


def _patient_counts(cohort: Cohort) -> tuple[Any, Any, Any]:
    """(patients, events, patients with omics) from patients.csv, else from summary counts."""
    frame = cohort.patients
    if frame is not None:
        events = (
            int((pd.to_numeric(frame["event"], errors="coerce") == 1).sum())
            if "event" in frame.columns
            else None
        )
        omics = (
            int(frame["has_omics"].astype(str).str.lower().isin(["true", "1", "1.0", "yes"]).sum())
            if "has_omics" in frame.columns
            else None
        )
        return len(frame), events, omics
    summary = cohort.summary or {}
    return (
        _find_count(summary, [("n_patients",), ("patients", "in_cohort"), ("patients", "in")]),
        _find_count(summary, [("n_events",), ("events", "observed"), ("events",)]),
        _find_count(summary, [("n_with_omics",), ("patients", "with_omics")]),
    )


def _find_count(summary: dict[str, Any], paths: Sequence[tuple[str, ...]]) -> Any:
    """The first of ``paths`` (key paths into the summary) that holds a count or a list."""
    for path in paths:
        value: Any = summary
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, list):
            return len(value)
    return None


def _failures(problems: list[Problem], slides: dict[str, SlideQC]) -> h.Html:
    if not problems:
        return h.section("failures", "Failures", h.note("Every slide passed every stage.", "ok"))
    order = {s: i for i, s in enumerate(STAGES)}
    rows, classes = [], []
    for p in sorted(
        problems, key=lambda p: (KINDS.index(p.kind), order.get(p.stage, 99), p.slide_id)
    ):
        qc = slides.get(p.slide_id)
        path = qc.fact("slide_path") if qc else None
        rows.append(
            [h.tag("b", p.slide_id), p.where, h.badge(p.kind, p.kind), p.reason, path or "–"]
        )
        classes.append(f"row-{p.kind}")
    n_slides = len({p.slide_id for p in problems})
    intro = h.tag(
        "p",
        f"{n_slides} slide(s) stopped or were left out ({len(problems)} record(s)). "
        "Failed: the stage ran and recorded an error. Missing: the stage's output is absent. "
        "Excluded: the cohort join left the slide out.",
    )
    return h.section(
        "failures",
        "Failures",
        intro,
        h.table(
            ["Slide", "Stage", "Kind", "Reason", "Slide file"],
            rows,
            sortable=True,
            row_classes=classes,
        ),
    )


def _mpp_text(qc: SlideQC) -> str:
    mpp = h.as_float(qc.fact("mpp"))
    return "–" if mpp is None else f"{mpp:.4f}"


def _patch_text(qc: SlideQC, short: bool = False) -> str:
    if not qc.tiles:
        return "–"
    t = qc.tiles
    if short:
        return f"{t.get('patch_px')} ({t.get('patch_px_level0')})"
    return f"{t.get('patch_px')} px @ {h.fmt(t.get('target_mpp'))} µm/px = {t.get('patch_px_level0')} px L0"


def _level0_text(qc: SlideQC) -> str:
    dims = (qc.preflight or {}).get("level_dimensions") or []
    if dims and isinstance(dims[0], list | tuple) and len(dims[0]) == 2:
        return f"{dims[0][0]:,} × {dims[0][1]:,}"
    level0 = (qc.tiles or {}).get("level0_dimensions")
    if isinstance(level0, list | tuple) and len(level0) == 2:
        return f"{level0[0]:,} × {level0[1]:,}"
    return "–"


def _status_badge(qc: SlideQC) -> h.Html:
    outcome = qc.outcome
    if outcome == "ok" and qc.warnings:
        return h.badge("ok, warnings", "warn")
    if outcome == "ok":
        return h.badge("ok", "ok")
    stages = sorted({p.stage for p in qc.problems if p.kind == outcome}, key=STAGES.index)
    return h.badge(f"{outcome}: {', '.join(stages)}", outcome)


def _slide_qc(slides: list[SlideQC]) -> h.Html:
    headers = [
        "Slide",
        "Status",
        "Reader",
        "µm/px",
        "µm/px source",
        "Level-0 px",
        "Tissue mm²",
        "Regions",
        "Patches",
        "Patch px (L0 px)",
        "Read level",
        "Extract s",
        "Patches/s",
    ]
    rows, classes = [], []
    for qc in slides:
        tissue = qc.tissue or {}
        extraction = qc.extraction or {}
        rows.append(
            [
                h.Html(f'<a href="#slide-{h.esc(qc.slide_id)}">{h.esc(qc.slide_id)}</a>'),
                _status_badge(qc),
                qc.fact("reader") or "–",
                _mpp_text(qc),
                qc.fact("mpp_source") or "–",
                _level0_text(qc),
                h.fmt_fixed(tissue.get("tissue_area_mm2"), 2),
                tissue.get("n_regions"),
                f"{qc.tiles['n']:,}" if qc.tiles else "–",
                _patch_text(qc, short=True),
                (qc.tiles or {}).get("read_level"),
                h.fmt_fixed(extraction.get("seconds"), 1),
                h.fmt_fixed(extraction.get("patches_per_s"), 1),
            ]
        )
        classes.append(f"row-{qc.outcome}" if qc.outcome != "ok" else None)
    table = h.table(
        headers,
        rows,
        sortable=True,
        row_classes=classes,
        numeric=(3, 6, 7, 8, 9, 10, 11, 12),
        nowrap=(0, 1, 4, 5),
    )
    # Reading and encoding thumbnails is the slow part of the report: show progress.
    progress = tqdm(slides, desc="report: slide cards", unit="slide", mininterval=5)
    cards = h.Html(f'<div class="cards">{h.join(_slide_card(qc) for qc in progress)}</div>')
    return h.section(
        "slides",
        "Per-slide QC",
        h.tag(
            "p",
            "One row and one card per slide. Card thumbnails show the patch grid; open "
            "“tissue contours” for the segmentation. Patch px is the patch side at the target "
            "µm/px, L0 px its side in level-0 pixels. Click a column header to sort.",
            cls="muted",
        ),
        table,
        cards,
    )


def _slide_card(qc: SlideQC) -> h.Html:
    """A slide's thumbnail, key facts, problems and warnings; raw records folded away."""
    parts: list[Any] = [
        h.Html(
            f'<h3 id="slide-{h.esc(qc.slide_id)}"><span>{h.esc(qc.slide_id)}</span>'
            f"{_status_badge(qc).markup}</h3>"
        )
    ]
    parts += [h.tag("div", f"{p.where}: {p.reason}", cls="reason") for p in qc.problems]
    ran = qc.status.get("status") == "ok"  # later stages ran only for slides preflight passed
    if ran:
        if qc.grid_png is not None or qc.tissue_thumbnail is None:
            grid = h.image(
                qc.grid_png,
                alt=f"{qc.slide_id} patch grid",
                max_width=THUMB_PX,
                max_height=THUMB_MAX_HEIGHT_PX,
                what="patch grid thumbnail",
                fmt=THUMB_FORMAT,
            )
        else:  # no grid drawn (tiling missing): the contour thumbnail is the best view left
            grid = h.image(
                qc.tissue_thumbnail,
                alt=f"{qc.slide_id} tissue",
                max_width=THUMB_PX,
                max_height=THUMB_MAX_HEIGHT_PX,
                fmt=THUMB_FORMAT,
            )
        parts.append(grid)
        parts.append(h.tag("div", h.kv_table(_card_facts(qc), humanize_keys=False), cls="facts"))
    else:
        parts.append(h.tag("div", f"file: {qc.fact('slide_path') or 'unknown'}", cls="facts"))
    parts += [h.tag("div", f"⚠ {w}", cls="muted") for w in qc.warnings]
    if ran and qc.grid_png is not None and qc.tissue_thumbnail is not None:
        contours = h.image(
            qc.tissue_thumbnail,
            alt=f"{qc.slide_id} tissue contours",
            max_width=THUMB_PX,
            max_height=THUMB_MAX_HEIGHT_PX,
            fmt=THUMB_FORMAT,
        )
        parts.append(h.details("tissue contours", contours))
    records = _slide_records(qc)
    if records is not None:
        parts.append(records)
    cls = "card" + (f" {qc.outcome}" if qc.outcome in ("failed", "missing") else "")
    return h.tag("div", h.join(parts), cls=cls)


def _card_facts(qc: SlideQC) -> list[tuple[str, Any]]:
    facts: list[tuple[str, Any]] = [
        ("µm/px", f"{_mpp_text(qc)} ({qc.fact('mpp_source') or 'source unknown'})"),
        ("reader", qc.fact("reader") or "–"),
    ]
    if qc.tissue:
        area = h.fmt_fixed(qc.tissue.get("tissue_area_mm2"), 2)
        facts.append(("tissue", f"{area} mm², {h.fmt(qc.tissue.get('n_regions'))} region(s)"))
    if qc.tiles:
        facts.append(("patches", f"{qc.tiles['n']:,} × {_patch_text(qc)}"))
    if qc.extraction and qc.extraction.get("status", "ok") == "ok":
        seconds = h.fmt_fixed(qc.extraction.get("seconds"), 1)
        rate = h.fmt_fixed(qc.extraction.get("patches_per_s"), 1)
        facts.append(("extraction", f"{seconds} s, {rate} patches/s"))
    return facts


def _slide_records(qc: SlideQC) -> h.Html | None:
    """Every stage record of the slide, as recorded (for the questions the card does not answer)."""
    records = {
        "preflight": _without(qc.preflight, ("associated_images",)),
        "tissue": qc.tissue,
        "tiles": _without(qc.tiles, ("slotspe_store",)),
        "extraction": qc.extraction,
        "features": _without(qc.feature_attrs, ("slotspe_store",)),
    }
    inner = [h.details(name, h.render_value(rec)) for name, rec in records.items() if rec]
    return h.details("stage records", h.join(inner)) if inner else None


def _without(record: dict[str, Any] | None, keys: Sequence[str]) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in keys}


def _cohort_section(cohort: Cohort) -> h.Html:
    parts: list[Any] = []
    for err in cohort.errors:
        parts.append(h.note(err, "warn"))
    patients, events, with_omics = _patient_counts(cohort)
    stats = [_stat(patients, "patients"), _stat(events, "events")]
    frame = cohort.patients
    if frame is not None and "time" in frame.columns:
        times = pd.to_numeric(frame["time"], errors="coerce").dropna()
        if len(times):
            unit = _time_unit(cohort)
            label = f"median follow-up ({unit})" if isinstance(unit, str) else "median follow-up"
            stats.append(_stat(f"{times.median():.1f}", label))
    stats.append(_stat(with_omics, "with RNA"))
    if frame is not None and "slide_ids" in frame.columns:
        n_slides = sum(len(_split_ids(v)) for v in frame["slide_ids"])
        stats.append(_stat(n_slides, "slides used"))
    parts.append(h.Html(f'<div class="stats">{h.join(stats)}</div>'))

    folds = _fold_table(cohort)
    if folds is not None:
        parts += [h.tag("h3", "Folds"), folds]
    if cohort.excluded_slides:
        parts += [
            h.tag("h3", f"Slides excluded by the cohort join ({len(cohort.excluded_slides)})"),
            h.table(["Slide", "Reason"], cohort.excluded_slides, sortable=True, cls="narrow"),
        ]
    if cohort.excluded_patients:
        parts += [
            h.tag("h3", f"Patients excluded ({len(cohort.excluded_patients)})"),
            h.table(["Patient", "Reason"], cohort.excluded_patients, sortable=True, cls="narrow"),
        ]
    if cohort.summary:
        # The counts and exclusions above are the summary's headline; the rest is for digging.
        parts.append(
            h.details("full cohort summary (summary.json)", h.render_value(cohort.summary))
        )
    if frame is not None:
        parts.append(
            h.details(
                f"patient table ({len(frame)} rows)",
                h.table(list(frame.columns), frame.itertuples(index=False), sortable=True),
            )
        )
    return h.section("cohort", f"Cohort: {cohort.name}", *parts)


def _time_unit(cohort: Cohort) -> str | None:
    """The survival time unit: patients.csv's time_unit column, else the summary's settings."""
    frame = cohort.patients
    if frame is not None and "time_unit" in frame.columns and len(frame):
        return str(frame["time_unit"].iloc[0])
    summary = cohort.summary or {}
    unit = (summary.get("settings") or {}).get("time_unit") or summary.get("time_unit")
    return unit if isinstance(unit, str) else None


def _split_ids(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [s for s in re.split(r"[;,|\s]+", str(value)) if s]


def _fold_table(cohort: Cohort) -> h.Html | None:
    """Patients (and events) per fold and split; folds.csv shown as is if its shape is unknown."""
    folds = cohort.folds
    if folds is None:
        return None
    if "fold" not in folds.columns:
        return h.details(
            f"folds.csv ({len(folds)} rows)",
            h.table(list(folds.columns), folds.head(50).itertuples(index=False)),
        )
    frame = folds
    patients = cohort.patients
    if (
        patients is not None
        and "case_id" in folds.columns
        and "event" in patients.columns
        and "event" not in folds.columns
    ):
        frame = folds.merge(patients[["case_id", "event"]], on="case_id", how="left")
    by = ["fold"] + [c for c in ("split", "set", "role") if c in frame.columns][:1]
    grouped = frame.groupby(by, sort=True)
    rows = []
    for key, group in grouped:
        key = key if isinstance(key, tuple) else (key,)
        events = (
            int((pd.to_numeric(group["event"], errors="coerce") == 1).sum())
            if "event" in group.columns
            else None
        )
        rows.append([*key, len(group), events])
    headers = [h.humanize(c) for c in by] + ["Patients", "Events"]
    return h.table(headers, rows, numeric=(len(by), len(by) + 1), cls="narrow")


# ------------------------------- models ---------------------------------------------------------


def metric(summary: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    """(mean, std) of a metric over folds: the summary's own ``{name}_mean``/``_std``, else computed.

    When the summary only lists folds, the std is the population std over folds (numpy default),
    the convention of the SurvPath/SlotSPE papers' tables.
    """
    mean = h.as_float(summary.get(f"{name}_mean"))
    if mean is None and not isinstance(summary.get(name), list | dict):
        mean = h.as_float(summary.get(name))
    std = h.as_float(summary.get(f"{name}_std"))
    values = _fold_values(summary, name)
    if mean is None and values:
        mean = float(np.mean(values))
    if std is None and len(values) > 1:
        std = float(np.std(values))
    return mean, std


def _fold_values(summary: dict[str, Any], name: str) -> list[float]:
    folds = summary.get("folds")
    if not isinstance(folds, list):
        return []
    return [v for f in folds if isinstance(f, dict) and (v := h.as_float(f.get(name))) is not None]


def mean_std(mean: float | None, std: float | None, decimals: int = 3) -> str:
    """``0.712 ± 0.034``; the mean alone when there is no spread; an en dash when missing."""
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


# (row label suffix, c-index metric name, note) for the extra rows a run may carry.
_EXTRA_ROWS = (
    ("missing omics", "c_index_missing_omics", "RNA withheld at validation"),
    (
        "best epoch",
        "c_index_best_epoch_selected_on_val",
        "best epoch, selected on validation — optimistic",
    ),
)


def _metrics_rows(run: ModelRun) -> list[tuple[list[Any], str | None]]:
    s = run.summary or {}
    n_folds = len(_fold_values(s, "c_index"))
    ipcw = metric(s, "c_index_ipcw")
    ibs = metric(s, "ibs")
    rows = [
        (
            [
                h.tag("b", run.model),
                run.seed,
                n_folds or "–",
                mean_std(*metric(s, "c_index")),
                h.fmt_fixed(s.get("c_index_pooled")),
                mean_std(*ipcw),
                mean_std(*ibs),
                "",
            ],
            None,
        )
    ]
    for label, name, remark in _EXTRA_ROWS:
        mean, std = metric(s, name)
        if mean is not None:
            rows.append(
                (
                    [
                        h.tag("b", f"{run.model} ({label})"),
                        run.seed,
                        n_folds or "–",
                        mean_std(mean, std),
                        "–",
                        "–",
                        "–",
                        remark,
                    ],
                    "row-extra",
                )
            )
    return rows


def _pooled_seed_row(model: str, runs: list[ModelRun]) -> list[Any]:
    """One row over all folds of all seeds of a model: the number to quote when seeds > 1."""

    def pooled(name: str) -> str:
        values = [v for r in runs for v in _fold_values(r.summary or {}, name)]
        return mean_std(float(np.mean(values)), float(np.std(values))) if values else "–"

    n = sum(len(_fold_values(r.summary or {}, "c_index")) for r in runs)
    seeds = ", ".join(str(r.seed) for r in runs)
    return [
        h.tag("b", f"{model} (all seeds)"),
        seeds,
        n,
        pooled("c_index"),
        "–",
        pooled("c_index_ipcw"),
        pooled("ibs"),
        "mean ± std over all folds of all seeds",
    ]


def _models_section(runs: list[ModelRun], why_none: str | None) -> h.Html:
    if not runs:
        return h.section("models", "Model metrics", h.note(f"No model results: {why_none}", "warn"))
    headers = ["Model", "Seed", "Folds", "C-index", "C-index pooled", "C-index IPCW", "IBS", "Note"]
    rows, classes = [], []
    by_model: dict[str, list[ModelRun]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    for model, model_runs in by_model.items():
        for run in model_runs:
            if run.summary is None:
                rows.append(
                    [
                        h.tag("b", run.model),
                        run.seed,
                        "–",
                        "–",
                        "–",
                        "–",
                        "–",
                        h.tag("span", f"summary {run.error}", cls="warn-text"),
                    ]
                )
                classes.append("row-missing")
                continue
            for row, cls in _metrics_rows(run):
                rows.append(row)
                classes.append(cls)
        with_summary = [r for r in model_runs if r.summary is not None]
        if len(with_summary) > 1:
            rows.append(_pooled_seed_row(model, with_summary))
            classes.append(None)
    parts: list[Any] = [
        h.tag(
            "p",
            "Concordance (Harrell's C-index, higher is better) and integrated Brier score (IBS, "
            "lower is better) on the validation folds: mean ± std over folds. Pooled: one C-index "
            "over the validation predictions of all folds together.",
            cls="muted",
        ),
        h.table(headers, rows, row_classes=classes, numeric=(1, 2, 3, 4, 5, 6), nowrap=(0,)),
    ]
    for run in runs:
        folds = (run.summary or {}).get("folds")
        if folds:
            parts.append(
                h.details(f"{run.model}, seed {run.seed}: per fold", h.render_value(folds))
            )
    return h.section("models", "Model metrics", *parts)


def _km_section(runs: list[ModelRun]) -> h.Html:
    if not runs:
        return h.section(
            "km", "Kaplan–Meier curves", h.note("No model runs, so no curves.", "warn")
        )
    figs = [
        h.figure(
            h.image(
                run.path / "km.png",
                alt=f"Kaplan–Meier {run.model} seed {run.seed}",
                max_width=KM_PX,
                what="KM plot",
            ),
            f"{run.model}, seed {run.seed}",
        )
        for run in runs
    ]
    return h.section(
        "km",
        "Kaplan–Meier curves",
        h.tag(
            "p",
            "Validation patients of all folds, split into low and high predicted risk at the "
            "median risk of each fold's training patients.",
            cls="muted",
        ),
        h.Html(f'<div class="figs">{h.join(figs)}</div>'),
    )


_SLOT_SUFFIX = re.compile(r"^(?P<case>.+?)[._-]+(?:slot|s)[._-]?\d+$", re.IGNORECASE)


def _patient_key(png: Path) -> str:
    """The patient a trainer plot belongs to: ``{case}.png`` or ``{case}_slot{k}.png``."""
    match = _SLOT_SUFFIX.match(png.stem)
    return match.group("case") if match else png.stem


_ATTENTION_INTRO = (
    "For up to {n} validation patients per model, taken from the folds in turn: each slide's "
    "tissue thumbnail (green: the segmentation's tissue outline) with the attention of the most "
    "gated WSI slots drawn as semi-transparent squares of the true patch size, one panel per "
    "slide and slot, cropped to the patched area. Values are the slot's attention weight × the "
    "patient's patch count N (1 = uniform attention; weights sum to 1 over all of the patient's "
    "patches). Colours are scaled per panel between the 1st and 99th percentile of that panel's "
    "values, so panels are not comparable by colour: read the colour bar (an arrow marks values "
    "beyond it, drawn in the end colour); cold patches are more transparent. Below: the pathways "
    "with the most attention in the most gated omics slots."
)


def _attention_section(
    runs: list[ModelRun], n_patients: int, cohort: Cohort, slides: dict[str, SlideQC]
) -> h.Html:
    with_maps: dict[str, ModelRun] = {}
    for run in runs:  # runs are sorted by seed: keep each model's first seed with attention
        if run.attention and run.model not in with_maps:
            with_maps[run.model] = run
    if n_patients <= 0:
        return h.section(
            "attention",
            "Slot attention",
            h.note("Attention heatmaps not requested (--attention-patients 0).", "info"),
        )
    if not with_maps:
        where = "fold_*/attention/*.npz or *.png"
        return h.section(
            "attention",
            "Slot attention",
            h.note(f"No attention records found ({where} under each model run).", "warn"),
        )
    info = _patient_info(cohort)
    no_rna = _patients_without_rna(cohort)
    views = _SlideViews(slides)
    parts: list[Any] = [h.tag("p", _ATTENTION_INTRO.format(n=n_patients), cls="muted")]
    for model, run in with_maps.items():
        chosen = _round_robin(run.attention, n_patients)
        patients = {(e.fold, e.case_id) for e in run.attention}
        parts.append(
            h.tag("h3", f"{model}, seed {run.seed} ({len(chosen)} of {len(patients)} patients)")
        )
        blocks = [_patient_block(entry, info, no_rna, views) for entry in chosen]
        parts.append(h.tag("div", h.join(blocks), cls="attn"))
    return h.section("attention", "Slot attention", *parts)


def _round_robin(entries: list[PatientAttention], n: int) -> list[PatientAttention]:
    """Up to ``n`` patients taken from the folds in turn, so one fold does not fill the page."""
    by_fold: dict[int, list[PatientAttention]] = {}
    for entry in sorted(entries, key=lambda e: (e.fold, e.case_id)):
        by_fold.setdefault(entry.fold, []).append(entry)
    chosen: list[PatientAttention] = []
    queues = list(by_fold.values())
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def _patient_info(cohort: Cohort) -> dict[str, h.Html]:
    frame = cohort.patients
    if frame is None or "case_id" not in frame.columns:
        return {}
    info = {}
    for row in frame.to_dict("records"):
        bits = []
        if "time" in row:
            bits.append(f"time {h.fmt(h.as_float(row['time']))}")
        if "event" in row:
            bits.append("event observed" if h.as_float(row["event"]) == 1 else "censored")
        info[str(row["case_id"])] = h.tag("div", ", ".join(bits), cls="muted")
    return info


def _patients_without_rna(cohort: Cohort) -> set[str]:
    frame = cohort.patients
    if frame is None or not {"case_id", "has_omics"} <= set(frame.columns):
        return set()
    has = frame["has_omics"].astype(str).str.lower().isin(["true", "1", "1.0", "yes"])
    return set(frame.loc[~has, "case_id"].astype(str))


@dataclass(frozen=True)
class SlideView:
    """What a slide's attention panels are drawn on, and why anything is missing."""

    canvas: ov.Canvas | None  # the tissue thumbnail with its scale; None: blank background
    patch_px_level0: float | None  # from the tiles store; None: the grid step stands in
    notes: tuple[str, ...] = ()


class _SlideViews:
    """Slide thumbnails loaded once per report, however many models show the patient."""

    def __init__(self, slides: dict[str, SlideQC]):
        self.slides = slides
        self.cache: dict[str, SlideView] = {}

    def get(self, slide_id: str) -> SlideView:
        if slide_id not in self.cache:
            self.cache[slide_id] = _slide_view(slide_id, self.slides.get(slide_id))
        return self.cache[slide_id]


def _slide_view(slide_id: str, qc: SlideQC | None) -> SlideView:
    """The slide's thumbnail as a canvas (scale from its size or µm/px) and the true patch size."""
    if qc is None:
        return SlideView(
            None,
            None,
            (f"no tissue thumbnail: slide {slide_id} is not in the slide status table",),
        )
    notes: list[str] = []
    patch = h.as_float((qc.tiles or {}).get("patch_px_level0"))
    if patch is None:
        notes.append("patch size unknown (no tiles store record): squares drawn at the grid step")
    if qc.tissue_thumbnail is None:
        where = (
            f"{qc.tissue_folder / 'thumbnail.png'} missing"
            if qc.tissue_folder is not None
            else "no tissue directory given"
        )
        return SlideView(None, patch, (f"no tissue thumbnail ({where})", *notes))
    tissue = qc.tissue or {}
    level0 = tissue.get("level0_dimensions") or (qc.tiles or {}).get("level0_dimensions")
    slide_mpp = h.as_float((tissue.get("slide") or {}).get("mpp")) or h.as_float(qc.fact("mpp"))
    try:
        with Image.open(qc.tissue_thumbnail) as img:
            rgb = np.asarray(img.convert("RGB"))
        scale, warning = ov.thumbnail_scale(
            (rgb.shape[1], rgb.shape[0]),
            level0_wh=level0 if isinstance(level0, list | tuple) else None,
            slide_mpp=slide_mpp,
            thumbnail_mpp=h.as_float(tissue.get("mask_mpp")),
        )
    except (OSError, ValueError) as exc:
        return SlideView(None, patch, (f"tissue thumbnail not usable: {exc}", *notes))
    if warning:
        notes.append(warning)
    return SlideView(ov.Canvas(rgb, scale), patch, tuple(notes))


def _load_record(entry: PatientAttention) -> tuple[ov.AttentionRecord | None, str]:
    if entry.record is None:
        return None, f"no attention record ({entry.case_id}.npz) in fold_{entry.fold}/attention"
    try:
        return ov.load_attention_record(entry.record), ""
    except ov.AttentionRecordError as exc:
        return None, str(exc)


def _patient_block(
    entry: PatientAttention,
    info: dict[str, h.Html],
    no_rna: set[str],
    views: _SlideViews,
) -> h.Html:
    parts: list[Any] = [
        h.tag("div", f"patient {entry.case_id}, validation fold {entry.fold}", cls="who"),
        info.get(entry.case_id, ""),
    ]
    record, why = _load_record(entry)
    if record is None:
        parts += [h.note(why, "warn"), *_trainer_plots(entry, why)]
    else:
        parts += _wsi_panels(record, entry, views)
        omics = _omics_block(record, entry.case_id in no_rna)
        if omics is not None:
            parts.append(omics)
    return h.tag("div", h.join(parts), cls="attn-patient")


def _trainer_plots(entry: PatientAttention, why: str) -> list[h.Html]:
    """The trainer's own plots (patch positions, no tissue): the fallback without a record."""
    if not entry.pngs:
        return [h.tag("div", "no attention plot either", cls="img-missing")]
    return [
        h.figure(
            h.image(png, alt=f"attention {entry.case_id}", max_width=ATTENTION_PX, what="heatmap"),
            f"{png.name}: the trainer's plot of patch positions without the tissue underneath "
            f"(fallback: {why})",
        )
        for png in entry.pngs
    ]


def _wsi_panels(
    record: ov.AttentionRecord, entry: PatientAttention, views: _SlideViews
) -> list[h.Html]:
    if record.coords is None or record.patch_slide is None or record.wsi_attention is None:
        missing = "patch coordinates" if record.coords is None else "WSI attention"
        why = f"{record.path.name} has no {missing}"
        return [h.note(why, "warn"), *_trainer_plots(entry, why)]
    out = []
    for index in record.slides_with_patches():
        slide_id = record.slide_name(index)
        view = views.get(slide_id)
        try:
            panels = ov.slide_panels(
                record,
                index,
                view.canvas,
                view.patch_px_level0,
                max_slots=OVERLAY_SLOTS,
                max_px=OVERLAY_PX,
            )
        except (ValueError, OSError) as exc:
            out.append(h.note(f"{slide_id}: attention could not be drawn ({exc})", "warn"))
            continue
        figs = []
        for slot, gate, panel in panels:
            img = ov.figure_image(panel.figure)
            what = "attention" if slot is None else f"slot {slot}"
            figs.append(
                h.figure(
                    h.embed(img, alt=f"{slide_id} {what}", max_width=img.width, fmt="jpeg"),
                    _panel_caption(slide_id, slot, gate, panel, view),
                )
            )
        out.append(h.tag("div", h.join(figs), cls="figs"))
    return out


def _panel_caption(
    slide_id: str, slot: int | None, gate: float | None, panel: ov.Panel, view: SlideView
) -> h.Html:
    head = slide_id if slot is None else f"{slide_id} · slot {slot}"
    if gate is not None:
        head += f" (gate {_gate_text(gate)})"
    lo, hi = panel.limits
    scale = f"{panel.n_patches:,} patches; colours {lo:.2g}–{hi:.2g} × uniform (1st–99th percentile"
    scale += f", {panel.clipped_high} above in the top colour)" if panel.clipped_high else ")"
    lines: list[Any] = [h.tag("b", head), scale]
    if view.canvas is None:
        lines.append(h.tag("span", "patches drawn on a blank background", cls="warn-text"))
    lines += [h.tag("span", note, cls="warn-text") for note in view.notes]
    return h.join(lines, "<br>")


def _gate_text(gate: float) -> str:
    """0.90, or 3.1e-03 for a kept slot whose gate would print as 0.00."""
    return f"{gate:.2f}" if gate == 0 or abs(gate) >= 0.01 else f"{gate:.1e}"


def _omics_block(record: ov.AttentionRecord, no_rna: bool) -> h.Html | None:
    """The pathways the most gated omics slots attend to, as small bar lists."""
    if record.omics_attention is None or record.omics_attention.size == 0:
        return None
    n_pathways = record.omics_attention.shape[1]
    groups = ov.top_pathways(
        record.omics_attention,
        record.omics_gate,
        record.pathways,
        max_slots=OMICS_SLOTS,
        top=OMICS_TOP,
    )
    tables = []
    for slot, gate, items in groups:
        peak = max((w for _, w in items), default=0.0) or 1.0
        rows = "".join(
            f'<tr><td class="pw-name">{h.esc(name)}</td><td class="pw-bar"><div class="pbar" '
            f'style="width:{100 * max(w, 0.0) / peak:.0f}%"></div></td>'
            f'<td class="num">{100 * w:.1f}%</td></tr>'
            for name, w in items
        )
        title = f"omics slot {slot}" + (f" (gate {_gate_text(gate)})" if gate is not None else "")
        tables.append(
            h.Html(
                f'<div><h4>{h.esc(title)}</h4><table class="pw"><tbody>{rows}</tbody></table></div>'
            )
        )
    intro = (
        f"Top pathways of the most gated omics slots: share of the slot's attention over "
        f"{n_pathways} pathways (uniform = {100 / n_pathways:.2g}%)."
    )
    parts: list[Any] = [h.tag("div", intro, cls="muted")]
    if no_rna:
        parts.append(
            h.note(
                "No RNA-seq for this patient: the omics slots attended to pathway tokens decoded "
                "from the slide, not to measured expression.",
                "warn",
            )
        )
    parts.append(h.tag("div", h.join(tables), cls="attn-omics"))
    return h.tag("div", h.join(parts))


# ------------------------------- header -------------------------------------------------------


def _distinct(values: list[str]) -> str:
    """One value, or every distinct value with its count (a mixed-settings run must show it)."""
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    if not counts:
        return "–"
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{v} ({n} slides)" for v, n in counts.items())


def _tiling_text(slides: list[SlideQC]) -> str:
    return _distinct(
        [
            f"{h.fmt(t.get('target_mpp'))} µm/px, {t.get('patch_px')} px patches, overlap "
            f"{h.fmt(t.get('overlap'))}, min tissue {h.fmt(t.get('min_tissue'))}"
            for s in slides
            if (t := s.tiles)
        ]
    )


def _weights_text(weights: Any) -> str:
    if isinstance(weights, dict):
        if weights.get("random_init"):
            return "RANDOM weights"
        for key in ("sha256", "revision", "source", "path"):
            if weights.get(key):
                value = str(weights[key])
                return f"{key} {value[:12]}…" if key == "sha256" else f"{key} {value}"
        return "weights unrecorded"
    return str(weights) if weights else "weights unrecorded"


def _encoder_text(slides: list[SlideQC]) -> str:
    return _distinct(
        [
            f"{a.get('encoder')} (dim {a.get('embedding_dim')}, {a.get('precision', '?')}, "
            f"{_weights_text(a.get('weights'))})"
            for s in slides
            if (a := s.feature_attrs)
        ]
    )


def _random_weights(slides: list[SlideQC]) -> list[str]:
    return [
        s.slide_id
        for s in slides
        if s.feature_attrs
        and isinstance(s.feature_attrs.get("weights"), dict)
        and s.feature_attrs["weights"].get("random_init")
    ]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def build_report(
    *,
    status: str | Path,
    cohort_dir: str | Path | None = None,
    preflight_dir: str | Path | None = None,
    tissue_dir: str | Path | None = None,
    tiles_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    attention_patients: int = 3,
    generated_at: datetime | None = None,
) -> str:
    """Render the run report as one self-contained HTML string.

    ``status`` (the slide status TSV) is required and lists the slides; each other directory is
    optional (None skips that stage's checks) and anything missing inside it is reported on the
    page. Raises FileNotFoundError/ValueError only for a missing or malformed status table.
    """
    paths = {
        k: Path(v) if v is not None else None
        for k, v in dict(
            cohort_dir=cohort_dir,
            preflight_dir=preflight_dir,
            tissue_dir=tissue_dir,
            tiles_dir=tiles_dir,
            features_dir=features_dir,
            models_dir=models_dir,
        ).items()
    }
    table = read_status(Path(status))
    slides = [
        gather_slide(
            row,
            preflight_dir=paths["preflight_dir"],
            tissue_dir=paths["tissue_dir"],
            tiles_dir=paths["tiles_dir"],
            features_dir=paths["features_dir"],
        )
        for row in table.to_dict("records")
    ]
    by_id = {s.slide_id: s for s in slides}
    cohort = gather_cohort(paths["cohort_dir"])
    for slide_id, reason in cohort.excluded_slides:
        problem = Problem(slide_id, "cohort", "excluded", reason or "no reason recorded")
        if slide_id in by_id:
            by_id[slide_id].problems.append(problem)
        else:  # excluded slides the status table does not list still belong on the page
            extra = SlideQC(slide_id=slide_id, status={"slide_id": slide_id, "status": "unknown"})
            extra.problems.append(problem)
            extra.warnings.append("slide is not in the slide status table")
            slides.append(extra)
            by_id[slide_id] = extra
    problems = [p for s in slides for p in s.problems]
    runs, why_none = gather_models(paths["models_dir"])
    log.info(
        "report: %d slides, %d problem record(s), %d model run(s)",
        len(slides),
        len(problems),
        len(runs),
    )

    body = [
        _guarded("overview", "Run overview", lambda: _overview(slides, problems, cohort, runs)),
        _failures(problems, by_id),
        _guarded("slides", "Per-slide QC", lambda: _slide_qc(slides)),
        _guarded("cohort", "Cohort", lambda: _cohort_section(cohort)),
        _guarded("models", "Model metrics", lambda: _models_section(runs, why_none)),
        _guarded("km", "Kaplan–Meier curves", lambda: _km_section(runs)),
        _guarded(
            "attention",
            "Slot attention",
            lambda: _attention_section(runs, attention_patients, cohort, by_id),
        ),
    ]
    random_ids = _random_weights(slides)
    if random_ids:
        body.insert(
            0,
            h.note(
                f"{len(random_ids)} slide(s) were embedded by an encoder with RANDOM weights "
                "(--allow-random-weights): their features are not those of a pretrained model, "
                "and metrics from them say nothing about the biology.",
                "failed",
            ),
        )
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    meta = [
        ("Cohort", cohort.name),
        ("Generated", when),
        ("slotspe-pipe", __version__),
        ("Encoder", _encoder_text(slides)),
        ("Tiling", _tiling_text(slides)),
    ]
    nav = [
        ("overview", "Overview"),
        ("failures", f"Failures ({len({p.slide_id for p in problems})})"),
        ("slides", "Slide QC"),
        ("cohort", "Cohort"),
        ("models", "Metrics"),
        ("km", "Kaplan–Meier"),
        ("attention", "Attention"),
    ]
    inputs = {"status": status, **paths}
    footer = h.Html(
        "Inputs: "
        + "; ".join(
            f"{h.esc(k)} <code>{h.esc(v)}</code>" for k, v in inputs.items() if v is not None
        )
    )
    return h.page(
        title=f"slotspe-pipe run report — {cohort.name}",
        meta=meta,
        nav=nav,
        body=body,
        footer=footer,
        version=__version__,
    )


def write_report(output: str | Path, **kwargs: Any) -> Path:
    """Build the report (``build_report`` keyword arguments) and write it atomically to ``output``."""
    text = build_report(**kwargs)
    output = Path(output)
    write_text(output, text)
    log.info("report written: %s (%.2f MB)", output, len(text.encode()) / 1e6)
    return output


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", type=Path, required=True, help="slide status table (TSV)")
    parser.add_argument(
        "--cohort-dir", type=Path, help="cohort directory (patients.csv, summary.json, ...)"
    )
    parser.add_argument(
        "--preflight-dir", type=Path, help="per-slide preflight records {slide}.json"
    )
    parser.add_argument("--tissue-dir", type=Path, help="per-slide tissue folders {slide}/")
    parser.add_argument(
        "--tiles-dir", type=Path, help="tiles stores {slide}.zarr and {slide}.grid.png"
    )
    parser.add_argument(
        "--features-dir", type=Path, help="feature stores and extraction records of one encoder"
    )
    parser.add_argument("--models-dir", type=Path, help="model runs {model}/seed_{s}/")
    parser.add_argument(
        "--attention-patients",
        type=int,
        default=3,
        help="attention heatmaps shown per model (patients)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="report HTML file")


def run_cli(args: argparse.Namespace) -> int:
    write_report(
        args.output,
        status=args.status,
        cohort_dir=args.cohort_dir,
        preflight_dir=args.preflight_dir,
        tissue_dir=args.tissue_dir,
        tiles_dir=args.tiles_dir,
        features_dir=args.features_dir,
        models_dir=args.models_dir,
        attention_patients=args.attention_patients,
    )
    return 0
