"""Dry-run time of the workflow for a large sample sheet (default 10,000 slides).

The workflow must scale to archive-sized sample sheets: no per-tile jobs, no per-slide
checkpoints, no file-system scans at parse time. This script writes a sheet of N slides (empty
placeholder files, so existence checks are real), a config pointing at it, and times
`snakemake -n` (parse + DAG up to the slide-status checkpoint), next to the time of
`snakemake --version` (interpreter + import overhead) measured in the same run.

    python benchmarks/bench_dryrun.py --slides 10000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_run_dir(root: Path, n_slides: int) -> Path:
    slides = root / "slides"
    slides.mkdir()
    rows = ["slide_id,path,patient_id"]
    for i in range(n_slides):
        sid = f"S{i:06d}"
        (slides / f"{sid}.svs").touch()
        rows.append(f"{sid},slides/{sid}.svs,P{i // 2:06d}")
    (root / "slides.csv").write_text("\n".join(rows) + "\n")
    (root / "clinical.csv").write_text("case_id,time,event\n")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    config["samples"] = str(root / "slides.csv")
    config["clinical"] = {
        "path": str(root / "clinical.csv"),
        "time_col": "time",
        "event_col": "event",
    }
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = make_run_dir(root, args.slides)
        base, _ = timed(["snakemake", "--version"], REPO)
        seconds, out = timed(
            [
                "snakemake",
                "-n",
                "--quiet",
                "rules",
                "--configfile",
                str(cfg),
                "--directory",
                tmp,
                "--snakefile",
                str(REPO / "workflow" / "Snakefile"),
            ],
            REPO,
        )
    print(f"slides in sheet:            {args.slides}")
    print(f"snakemake --version:        {base:.2f} s (startup bound)")
    print(f"snakemake -n (dry run):     {seconds:.2f} s  (target < 30 s)")
    print(f"dry run / startup:          {seconds / base:.1f}x")
    print("jobs planned (until the slide-status checkpoint):")
    print(out.strip()[-1500:])


if __name__ == "__main__":
    main()
