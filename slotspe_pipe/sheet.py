"""The slide sample sheet: `slide_id, path` plus optional `patient_id`, `mpp`.

Read once, validated once (JSON Schema per row + cross-row checks), so that every later stage can
trust it. Errors name the sheet, the row (1-based, as a spreadsheet shows it) and the column.
The workflow reads it at parse time, so this module must stay light (no torch, no slide readers)
and must not touch the slide files beyond an existence check that can be switched off.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "samples.schema.yaml"
TCGA_CASE_RE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")
COLUMNS = ("slide_id", "path", "patient_id", "mpp")


class SampleSheetError(ValueError):
    """The sample sheet is malformed; the message names the file, row and column."""


def patient_from_slide_id(slide_id: str) -> str:
    """TCGA barcodes carry the case id in their first 12 characters; otherwise one slide = one case."""
    match = TCGA_CASE_RE.match(slide_id)
    return match.group(0) if match else slide_id


def load_sample_sheet(path: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Load and validate a sample sheet; returns a DataFrame indexed by slide_id.

    Paths are resolved against the sheet's directory. ``patient_id`` is filled from TCGA
    barcodes where missing; ``mpp`` is float with NaN for "read from the slide".
    """
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"{path}: sample sheet not found")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except Exception as exc:  # pandas raises many parser errors
        raise SampleSheetError(f"{path}: cannot be parsed as a table ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("slide_id", "path") if c not in df.columns]
    if missing:
        raise SampleSheetError(
            f"{path}: missing required column(s) {missing}; found {list(df.columns)} "
            "(expected slide_id, path and optionally patient_id, mpp)"
        )
    unknown = [c for c in df.columns if c not in COLUMNS]
    df = df[[c for c in COLUMNS if c in df.columns] + unknown].copy()
    for col in df.columns:
        df[col] = df[col].str.strip()
    if df.empty:
        raise SampleSheetError(f"{path}: the sample sheet has no rows")
    errors: list[str] = []
    validator = _row_validator()
    mpps: list[float] = []
    for i, record in enumerate(df.to_dict("records"), start=2):
        row = {k: v for k, v in record.items() if k in COLUMNS}
        row["mpp"] = _parse_mpp(row.get("mpp", ""))
        for err in validator.iter_errors(row):
            column = err.path[0] if err.path else "?"
            errors.append(f"row {i}, column {column}: {err.message}")
        mpps.append(row["mpp"] if isinstance(row["mpp"], float) else math.nan)
    df["mpp"] = mpps
    dup = df.loc[df["slide_id"].duplicated(keep=False) & (df["slide_id"] != ""), "slide_id"]
    for sid in sorted(set(dup)):
        rows = [str(i + 2) for i in df.index[df["slide_id"] == sid]]
        errors.append(f"column slide_id: {sid!r} appears more than once (rows {', '.join(rows)})")
    if "patient_id" not in df.columns:
        df["patient_id"] = ""
    df["patient_id"] = [
        pid if pid else patient_from_slide_id(sid)
        for pid, sid in zip(df["patient_id"], df["slide_id"], strict=True)
    ]
    base = path.resolve().parent
    df["path"] = [str((base / p).resolve()) if p else p for p in df["path"]]
    if check_files:
        for i, (sid, p) in enumerate(zip(df["slide_id"], df["path"], strict=True), start=2):
            if p and not Path(p).exists():
                errors.append(f"row {i}, column path: slide {sid!r} file not found: {p}")
    if errors:
        shown = "\n  ".join(errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        raise SampleSheetError(
            f"{path}: {len(errors)} problem(s) in the sample sheet:\n  {shown}{more}"
        )
    return df.set_index("slide_id", drop=False)


def _parse_mpp(value: str) -> float | str | None:
    """Empty -> None (read from the slide); a number -> float; anything else stays a string
    so that the schema reports it as "not of type number"."""
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


@functools.cache
def _row_validator() -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sheet", type=Path, help="sample sheet CSV/TSV")
    parser.add_argument(
        "--no-check-files", action="store_true", help="do not check that slide files exist"
    )


def run_cli(args: argparse.Namespace) -> int:
    try:
        df = load_sample_sheet(args.sheet, check_files=not args.no_check_files)
    except SampleSheetError as exc:
        print(f"error: {exc}")
        return 1
    print(
        f"{args.sheet}: {len(df)} slides, {df['patient_id'].nunique()} patients, "
        f"{int(df['mpp'].notna().sum())} with an mpp override"
    )
    return 0
