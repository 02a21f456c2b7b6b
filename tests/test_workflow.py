"""The Snakemake workflow: lint, formatting, config/sheet validation, scale, and a real run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

SNAKEFILE = REPO_ROOT / "workflow" / "Snakefile"


def _snakemake(
    *args: str, cwd: Path = REPO_ROOT, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["snakemake", "--snakefile", str(SNAKEFILE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _write_config(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _real_data_dir(tmp_path: Path, n_slides: int) -> Path:
    slides = tmp_path / "slides"
    slides.mkdir()
    rows = ["slide_id,path"]
    for i in range(n_slides):
        (slides / f"S{i:05d}.svs").touch()
        rows.append(f"S{i:05d},slides/S{i:05d}.svs")
    (tmp_path / "slides.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "clinical.csv").write_text("case_id,time,event\n")
    return tmp_path


def _real_config(tmp_path: Path, n_slides: int = 3) -> Path:
    _real_data_dir(tmp_path, n_slides)
    return _write_config(
        tmp_path,
        demo={"enabled": False},
        samples=str(tmp_path / "slides.csv"),
        clinical={"path": str(tmp_path / "clinical.csv"), "time_col": "time", "event_col": "event"},
    )


def test_lint_is_clean():
    proc = _snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(
        ["snakefmt", "--check", str(REPO_ROOT / "workflow")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_large_sample_sheet_dry_run(tmp_path):
    cfg = _real_config(tmp_path, n_slides=2000)
    jobs = _planned_jobs(tmp_path, cfg)
    # One preflight job per slide and one status checkpoint; nothing per tile.
    assert jobs["preflight"] == 2000
    assert jobs["slide_status"] == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tiling": {"target_mpp": "half", "patch_px": 256}}, "target_mpp"),
        ({"models": ["slotspe", "transformer"]}, "transformer"),
        ({"extraction": {"encoder": "uni", "device": "tpu"}}, "tpu"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_malformed_config_names_the_key(tmp_path, change, expected):
    cfg = _write_config(tmp_path, **change)
    proc = _snakemake("-n", "--configfile", str(cfg), "--directory", str(tmp_path))
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr


def test_bad_sample_sheet_is_reported(tmp_path):
    cfg = _real_config(tmp_path, n_slides=2)
    sheet = tmp_path / "slides.csv"
    sheet.write_text(sheet.read_text() + "S00000,slides/missing.svs\n")
    proc = _snakemake("-n", "--configfile", str(cfg), "--directory", str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "appears more than once" in out
    assert "file not found" in out


@pytest.mark.parametrize("env", sorted((REPO_ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_files_parse_and_name_real_packages(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"][0] == "conda-forge"
    deps = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("python=") for d in deps)
    for dep in deps:
        name, _, version = dep.partition("=")
        assert version, f"{env.name}: {name} is not pinned"
    # Every conda package maps to an importable module of the same library here.
    modules = {
        "numpy": "numpy",
        "scipy": "scipy",
        "pandas": "pandas",
        "pyarrow": "pyarrow",
        "zarr": "zarr",
        "numcodecs": "numcodecs",
        "openslide-python": "openslide",
        "tiffslide": "tiffslide",
        "tifffile": "tifffile",
        "imagecodecs": "imagecodecs",
        "py-opencv": "cv2",
        "shapely": "shapely",
        "scikit-image": "skimage",
        "pillow": "PIL",
        "matplotlib-base": "matplotlib",
        "jsonschema": "jsonschema",
        "pyyaml": "yaml",
        "tqdm": "tqdm",
        "scikit-learn": "sklearn",
        "scikit-survival": "sksurv",
        "lifelines": "lifelines",
        "pytorch": "torch",
        "torchvision": "torchvision",
        "timm": "timm",
        "safetensors": "safetensors",
        "h5py": "h5py",
    }
    import importlib

    for dep in deps:
        name = dep.partition("=")[0]
        if name in ("python", "openslide"):
            continue
        assert name in modules, f"{env.name}: unknown package {name}"
        importlib.import_module(modules[name])


@pytest.mark.slow
def test_real_run_of_test_config(tmp_path):
    """The .test demo end to end: every stage runs, the broken slide is reported, metrics exist."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = _snakemake(
        "--cores",
        "2",
        "--configfile",
        str(REPO_ROOT / ".test" / "config.yaml"),
        "--directory",
        str(workdir),
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    report = workdir / "results" / "report" / "ci" / "report.html"
    assert report.is_file()
    status = (workdir / "results" / "slide_status.tsv").read_text()
    failed = [line for line in status.splitlines()[1:] if "\tfailed\t" in line]
    assert failed, "the demo's broken slide must be reported as failed"
    html = report.read_text()
    for line in failed:
        assert line.split("\t")[0] in html
    for model in ("slotspe", "snn", "abmil", "coxph"):
        summary = workdir / "results" / "models" / "ci" / model / "seed_1" / "summary.json"
        data = json.loads(summary.read_text())
        assert 0.0 <= data["c_index_mean"] <= 1.0
    # Each trained fold records the data it learned from, so a rerun on a rebuilt cohort
    # (e.g. after re-tiling) retrains instead of reusing the old checkpoint.
    from slotspe_pipe.cohort import load_cohort
    from slotspe_pipe.train import load_checkpoint

    fingerprint = load_cohort(workdir / "results" / "cohort" / "ci").fingerprint()
    checkpoints = list((workdir / "results" / "models" / "ci").glob("*/seed_1/fold_*/*.pt"))
    assert checkpoints
    for ckpt in checkpoints:
        assert load_checkpoint(ckpt)["run_key"]["data"] == fingerprint, ckpt

    # Changed tiling settings recompute tiles and everything downstream, and nothing else.
    changed = yaml.safe_load((REPO_ROOT / ".test" / "config.yaml").read_text())
    changed["tiling"]["patch_px"] = 224
    changed_cfg = tmp_path / "changed.yaml"
    changed_cfg.write_text(yaml.safe_dump(changed))
    jobs = _planned_jobs(workdir, changed_cfg)
    assert {"tile", "extract", "cohort", "train", "evaluate", "report"} <= set(jobs)
    assert not {"demo_cohort", "preflight", "slide_status", "segment"} & set(jobs), jobs

    # An interrupted run resumes: only the missing slide's work (and what depends on it) reruns.
    some_record = next((workdir / "results" / "features").glob("*/*.json"))
    some_record.unlink()
    jobs = _planned_jobs(workdir, REPO_ROOT / ".test" / "config.yaml")
    assert jobs.get("extract") == 1, jobs
    assert not {"tile", "segment", "preflight"} & set(jobs), jobs
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)


def _planned_jobs(workdir: Path, config: Path) -> dict[str, int]:
    """Job counts per rule of a dry run (`snakemake -n`), parsed from its job-stats table."""
    proc = _snakemake(
        "-n", "--quiet", "rules", "--configfile", str(config), "--directory", str(workdir)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts
