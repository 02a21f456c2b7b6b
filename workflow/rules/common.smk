"""Shared workflow logic: config validation, the sample sheet, wildcard constraints, input functions.

Rule files hold rules only. Everything here is cheap at parse time: the sample sheet is read once,
no file system scans, no per-slide checkpoints. Two aggregate checkpoints exist: the demo cohort
(its sample sheet is made by the workflow) and the slide status table (which slides passed preflight).
"""

import os
import re
import sys
from functools import cache
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

PKG_ROOT = Path(workflow.basedir).parent
# The package is importable both from an installed env and from the checkout.
sys.path.insert(0, str(PKG_ROOT))
from slotspe_pipe.sheet import load_sample_sheet  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")

# Rules run `python -m slotspe_pipe ...`; the prefix makes the package importable with and without
# --use-conda (conda jobs do not inherit PYTHONPATH).
# shell.prefix is str.format-ed again for every job, hence the doubled braces.
PYTHONPATH_PREFIX = str(PKG_ROOT).replace("{", "{{").replace("}", "}}")
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + PYTHONPATH_PREFIX
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

COHORT = config["cohort"]
DEMO = bool(config["demo"]["enabled"])
DEMO_DIR = "resources/demo"
ENCODER = config["extraction"]["encoder"]
ENCODER_TAG = re.sub(r"[^A-Za-z0-9._-]", "-", ENCODER)


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"slotspe|snn|abmil|coxph",
    fold=r"\d+",
    seed=r"\d+",


def input_paths():
    """Clinical table, RNA matrix and gene sets: the demo's own files or the user's."""
    if DEMO:
        return {
            "clinical": f"{DEMO_DIR}/clinical.csv",
            "rna": f"{DEMO_DIR}/rna.csv",
            "gene_sets": [f"{DEMO_DIR}/genesets.gmt"],
            "sheet": f"{DEMO_DIR}/slides.csv",
        }
    return {
        "clinical": config["clinical"]["path"],
        "rna": config["rna"]["path"],
        "gene_sets": list(config.get("gene_sets", [])),
        "sheet": config["samples"],
    }


@cache
def _user_samples():
    return load_sample_sheet(
        config["samples"], check_files=config.get("check_slide_files", True)
    )


def samples():
    """The validated sample sheet (DataFrame indexed by slide_id)."""
    if DEMO:
        sheet = checkpoints.demo_cohort.get().output.sheet
        return load_sample_sheet(sheet)
    return _user_samples()


def slide_path(wildcards):
    return samples().loc[wildcards.slide, "path"]


def slide_mpp_arg(wildcards):
    mpp = samples().loc[wildcards.slide, "mpp"]
    return "" if pd.isna(mpp) else f"--mpp {float(mpp)}"


def preflight_records(wildcards):
    return expand("results/preflight/{slide}.json", slide=samples().index)


def ok_slides():
    """Slides whose preflight passed (read from the aggregate slide-status checkpoint)."""
    table = checkpoints.slide_status.get().output.table
    status = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    return list(status.loc[status["status"] == "ok", "slide_id"])


def feature_records(wildcards):
    return expand(
        "results/features/{encoder}/{slide}.json",
        encoder=ENCODER_TAG,
        slide=ok_slides(),
    )


def annotation_arg(wildcards):
    folder = config.get("segmentation", {}).get("annotations_dir", "")
    if not folder:
        return ""
    path = Path(folder) / f"{wildcards.slide}.geojson"
    return f"--annotation {path}" if path.exists() else ""


def n_folds():
    splits = config.get("splits", "")
    if splits and not DEMO:
        return len(list(Path(splits).glob("splits_*.csv")))
    return int(config["folds"])


def seeds():
    return [int(s) for s in config["training"]["seeds"]]


def fold_metrics(wildcards):
    return expand(
        "results/models/{cohort}/{model}/seed_{seed}/fold_{fold}/metrics.json",
        cohort=wildcards.cohort,
        model=wildcards.model,
        seed=wildcards.seed,
        fold=range(n_folds()),
    )


def model_summaries(cohort=COHORT):
    return expand(
        "results/models/{cohort}/{model}/seed_{seed}/summary.json",
        cohort=cohort,
        model=config["models"],
        seed=seeds(),
    )


def all_targets(wildcards):
    # Intermediate results are listed too: with a checkpoint upstream, Snakemake does not
    # notice a missing intermediate behind an existing report, so an interrupted run would
    # otherwise not resume.
    return [
        f"results/report/{COHORT}/report.html",
        *model_summaries(),
        *feature_records(wildcards),
    ]


CLIN = config.get("clinical", {})
RNA = config.get("rna", {})


def omics_inputs(wildcards):
    paths = input_paths()
    if not paths["rna"]:
        return {}
    return {"rna": paths["rna"], "gene_sets": paths["gene_sets"]}


def cohort_args(wildcards, input):
    if DEMO:
        args = [
            "--time-col survival_months --event-col censorship --event-is-censorship"
        ]
    else:
        args = [
            f"--time-col {CLIN['time_col']} --event-col {CLIN['event_col']}",
            f"--case-col {CLIN.get('case_col', 'case_id')}",
            f"--time-unit {CLIN.get('time_unit', 'months')}",
            (
                "--event-is-censorship"
                if CLIN.get("event_is_censorship")
                else "--event-is-observed"
            ),
        ]
    if "rna" in input.keys():
        args.append(f"--rna {input.rna}")
        args += [f"--signatures {g}" for g in input.gene_sets]
        if not DEMO:
            args.append(f"--rna-orientation {RNA.get('orientation', 'auto')}")
            args.append("--rna-log2" if RNA.get("log2") else "")
        args.append(f"--min-coverage {config.get('min_pathway_coverage', 0.0)}")
    if config.get("splits") and not DEMO:
        args.append(f"--splits {config['splits']}")
    else:
        args.append(f"--folds {config['folds']} --seed {config.get('fold_seed', 0)}")
    return " ".join(a for a in args if a)


TRAIN = config["training"]


# training.epochs/patches/batch_size size the slide models' training; the omics-only SNN keeps
# its own recipe (train.py TRAIN_DEFAULTS: batch 32 matters to its Cox ranking term) unless
# model_config.snn sets train.<key>; coxph has no epochs.
SLIDE_MODELS = ("slotspe", "abmil")


def train_args(wildcards):
    args = [
        f"--device {TRAIN.get('device', 'cpu')}",
        f"--time-bins {TRAIN.get('time_bins', 'quantile')}",
    ]
    if wildcards.model in SLIDE_MODELS:
        args += [
            f"--epochs {TRAIN.get('epochs', 30)}",
            f"--patches {TRAIN.get('patches', 4096)}",
            f"--batch-size {TRAIN.get('batch_size', 32)}",
        ]
    overrides = TRAIN.get("model_config", {}).get(wildcards.model, {})
    args += [f"--set {key}={value}" for key, value in overrides.items()]
    if wildcards.model == "slotspe" and TRAIN.get("missing_omics_eval", True):
        args.append("--missing-omics")
    return " ".join(args)
