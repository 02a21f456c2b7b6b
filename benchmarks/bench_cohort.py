"""Cohort assembly at hospital scale: 1,000 patients x 20,000 genes x 331 pathways.

Synthesises a TCGA-like cohort in a temporary directory (expression CSV, samples x genes, with a
few metastatic duplicate samples; column-per-pathway signature CSV with pathways of 10-300 genes,
some unmeasured; a per-slide clinical CSV in days with a `censorship` column), then times the whole
`slotspe-pipe cohort` assembly (read, orient, map, join, folds, write) against the 30 s target.
For scale it also times a bare `pandas.read_csv` of the same expression file in the same run.

Run: python benchmarks/bench_cohort.py [--patients 1000 --genes 20000 --pathways 331 --repeats 1
     --layout samples-by-genes|genes-by-samples]
"""

from __future__ import annotations

import argparse
import logging
import string
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pacsv

from slotspe_pipe.cohort import CohortConfig, assemble_cohort, load_cohort

TARGET_S = 30.0


def _symbols(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list(string.ascii_uppercase + string.digits))
    out: set[str] = set()
    while len(out) < n:
        batch = rng.choice(letters, size=(n, 6))
        out.update("G" + "".join(row) for row in batch)
    return sorted(out)[:n]


def synthesise(
    root: Path,
    n_patients: int,
    n_genes: int,
    n_pathways: int,
    layout: str = "samples-by-genes",
    seed: int = 0,
) -> dict:
    rng = np.random.default_rng(seed)
    genes = _symbols(rng, int(n_genes * 1.1))
    measured, unmeasured = genes[:n_genes], genes[n_genes:]
    cases = [
        f"TCGA-{s[:2]}-{i:04d}" for i, s in enumerate(rng.choice(["BL", "XY", "ZK"], n_patients))
    ]
    samples = [f"{c}-01A" for c in cases]
    # 2% of patients also have a metastatic sample (-06A): the primary tumour must be kept.
    extra = rng.choice(n_patients, size=max(1, n_patients // 50), replace=False)
    samples += [f"{cases[i]}-06A" for i in extra]
    values = rng.gamma(2.0, 2.0, size=(len(samples), n_genes)).astype(np.float32)
    if layout == "samples-by-genes":
        table = pa.table({"sample": samples, **{g: values[:, j] for j, g in enumerate(measured)}})
    else:
        table = pa.table({"gene": measured, **{s: values[i] for i, s in enumerate(samples)}})
    rna = root / "rna.csv"
    pacsv.write_csv(table, rna)

    pool = np.array(measured + unmeasured)
    p_meas = np.where(np.arange(len(pool)) < n_genes, 0.9 / n_genes, 0.1 / len(unmeasured))
    columns = {}
    for p in range(n_pathways):
        size = int(rng.integers(10, 301))
        columns[f"PATHWAY_{p:03d}"] = list(rng.choice(pool, size=size, replace=False, p=p_meas))
    longest = max(len(v) for v in columns.values())
    sig = pd.DataFrame({k: v + [""] * (longest - len(v)) for k, v in columns.items()})
    signatures = root / "signatures.csv"
    sig.to_csv(signatures, index=False)

    days = rng.exponential(900.0, n_patients) + 1.0
    censorship = (rng.random(n_patients) < 0.65).astype(int)
    n_slides = rng.integers(1, 3, n_patients)
    clinical = pd.DataFrame(
        {
            "case_id": np.repeat(cases, n_slides),
            "slide_id": [
                f"{c}-01Z-00-DX{k + 1}"
                for c, n in zip(cases, n_slides, strict=True)
                for k in range(n)
            ],
            "survival_days": np.repeat(days, n_slides),
            "censorship": np.repeat(censorship, n_slides),
        }
    )
    clinical_path = root / "clinical.csv"
    clinical.to_csv(clinical_path, index=False)
    return {
        "rna": rna,
        "signatures": signatures,
        "clinical": clinical_path,
        "bytes": rna.stat().st_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--pathways", type=int, default=331)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--layout", choices=("samples-by-genes", "genes-by-samples"), default="samples-by-genes"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        files = synthesise(root, args.patients, args.genes, args.pathways, args.layout)
        print(
            f"synthesised {args.patients} patients x {args.genes} genes x {args.pathways} pathways "
            f"({files['bytes'] / 1e6:.0f} MB expression CSV, {args.layout}) in {time.perf_counter() - t:.1f} s"
        )
        t = time.perf_counter()
        pd.read_csv(files["rna"], index_col=0)
        reference_s = time.perf_counter() - t

        cfg = CohortConfig(
            clinical=files["clinical"],
            time_col="survival_days",
            event_col="censorship",
            time_unit="days",
            rna=files["rna"],
            signatures=[files["signatures"]],
            n_folds=5,
            seed=0,
        )
        timings = []
        for r in range(args.repeats):
            out = root / f"cohort_{r}"
            t = time.perf_counter()
            build = assemble_cohort(cfg, out)
            timings.append(time.perf_counter() - t)
        cohort = load_cohort(out)
        s = build.summary
        best = min(timings)
        print(
            f"cohort: {s['patients']['in_cohort']} patients, {s['events']['observed']} events, "
            f"{s['omics']['pathways_kept']} pathways kept, {s['omics']['genes_found_in_pathways']} "
            f"genes found, omics store {cohort.omics.expression.shape}, "
            f"{s['omics']['expression']['duplicated_samples']['n_patients']} duplicate-sample patients"
        )
        print(
            f"cohort assembly: {best:.2f} s (runs: {', '.join(f'{x:.2f}' for x in timings)}); "
            f"target {TARGET_S:.0f} s -> {best / TARGET_S:.2f} of the budget "
            f"({'PASS' if best < TARGET_S else 'FAIL'})"
        )
        print(
            f"reference: bare pandas.read_csv of the expression file {reference_s:.2f} s; "
            f"assembly / bare read = {best / reference_s:.2f}"
        )


if __name__ == "__main__":
    main()
