"""The slide status table: one row per slide, which slides go on and why the others stopped.

Gathered from the per-slide preflight records so that the workflow can exclude failed slides
downstream without failing the run, and so the report can list every failure with its reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from slotspe_pipe.store.atomic import atomic_path

COLUMNS = ("slide_id", "status", "reason", "reader", "mpp", "mpp_source", "slide_path")


def gather_status(records: list[Path]) -> pd.DataFrame:
    """Read preflight records into a table; an unreadable record counts as a failed slide."""
    rows = []
    for path in records:
        path = Path(path)
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            rows.append(
                {
                    "slide_id": path.stem,
                    "status": "failed",
                    "reason": f"preflight record unreadable: {exc}",
                }
            )
            continue
        rows.append(
            {
                "slide_id": rec.get("slide_id") or path.stem,
                "status": rec.get("status", "failed"),
                "reason": rec.get("reason") or "",
                "reader": rec.get("reader") or "",
                "mpp": rec.get("mpp"),
                "mpp_source": rec.get("mpp_source") or "",
                "slide_path": rec.get("slide_path") or "",
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_status(table: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", nargs="+", type=Path, help="preflight record JSON files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="status table (TSV)")


def run_cli(args: argparse.Namespace) -> int:
    table = gather_status(args.records)
    write_status(table, args.output)
    failed = table[table["status"] != "ok"]
    print(f"{len(table)} slides: {len(table) - len(failed)} ok, {len(failed)} failed")
    for row in failed.itertuples(index=False):
        print(f"  failed {row.slide_id}: {row.reason}")
    return 0
