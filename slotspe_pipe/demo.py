"""Synthetic demo cohort: slides, RNA-seq, survival and a known prognostic signal.

The default workflow run has to show the whole pipeline working without anyone's patient data,
and a C-index is only evidence if we know what it should find. So this module simulates patients
whose risk is planted on purpose in both modalities:

- each patient has a latent risk ``z ~ N(0, 1)`` and two noisy views of it, ``z_morph`` and
  ``z_omics`` (``z + noise``), so each modality helps alone and the two together help more;
- the true log-hazard is ``beta_morph * z_morph + beta_omics * z_omics``; survival times are
  Weibull with that hazard, scaled to a median of ``median_months``; censoring is independent of
  risk (uniform censoring times, scaled to censor a set fraction);
- RNA: log2-scale values (like the UCSC Xena TCGA hub) over the genes of the 50 MSigDB Hallmark
  gene sets; four pathways shift with ``z_omics`` (two up, two down), all pathways carry
  correlated noise; some patients have no RNA at all (absent rows);
- slides: synthetic H&E pyramidal TIFFs (``slotspe_pipe.synthetic``) whose nuclear density and
  haematoxylin strength rise with ``z_morph``, while eosin strength varies as a nuisance;
- ``n_broken`` extra slides whose tile data are zeroed, as an interrupted copy onto a
  preallocated file leaves them: the file opens, every pixel read fails. The run must survive
  them and the report must name them.

Everything that was planted is written to ``truth.json`` next to the data. Random streams are
split per component, so ``--no-slides`` yields the same patients and RNA as a full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
import tifffile
from shapely import affinity
from shapely.geometry import Point, Polygon, box
from tqdm import tqdm

from slotspe_pipe import __version__
from slotspe_pipe.omics import read_gmt
from slotspe_pipe.store.atomic import atomic_path
from slotspe_pipe.synthetic import TissueRegion, write_synthetic_slide

log = logging.getLogger(__name__)

TIME_COL = "survival_months"
CENSORSHIP_COL = "censorship"  # 1 = censored (SurvPath/TCGA convention), the opposite of event
GENE_SETS_RESOURCE = "hallmarks.gmt"
# Pathways whose genes shift with z_omics, and the sign of the shift (+1 = higher in high risk).
SIGNAL_PATHWAYS: dict[str, int] = {
    "HALLMARK_E2F_TARGETS": 1,
    "HALLMARK_G2M_CHECKPOINT": 1,
    "HALLMARK_OXIDATIVE_PHOSPHORYLATION": -1,
    "HALLMARK_BILE_ACID_METABOLISM": -1,
}
XENA_FLOOR_LOG2 = -9.9658  # log2(0.001): the "not expressed" value of the Xena TCGA hub
BROKEN_KIND = "zeroed_tile_data"
BROKEN_DESCRIPTION = (
    "Aperio TIFF whose header and directories are intact but whose JPEG tile and strip data "
    "are all zero bytes, as an interrupted copy onto a preallocated file leaves it: the slide "
    "opens and reports its size and µm/px, and every pixel read fails with a JPEG decode error"
)
# Morphology: slide z -> stain and cellularity parameters of its tissue regions.
_DENSITY_PER_Z = 0.35  # log nuclear density per unit z_morph
_DENSITY_RANGE = (0.35, 1.8)  # synthetic.py saturates near 1.8 (every lattice site filled)
_HEMATOXYLIN_PER_Z = 0.15
_HEMATOXYLIN_RANGE = (0.6, 1.5)
_EOSIN_RANGE = (0.8, 1.2)  # nuisance stain variation, unrelated to risk
_SLIDE_NOISE_SD = 0.25  # slides of one patient differ a little
_REGION_NOISE_SD = 0.08
_TWO_SLIDE_PROB = 0.5  # 40 patients -> about 60 slides
# Independent random streams (numbers are arbitrary but fixed: changing one changes outputs).
_STREAM = {"patients": 1, "omics": 2, "slides": 3}


@dataclass(frozen=True)
class DemoSpec:
    """What to simulate. Times in months, mpp in µm/px, slide sizes in level-0 px."""

    n_patients: int = 40
    seed: int = 0
    n_broken: int = 1
    slides: bool = True
    slide_px: tuple[int, int] = (4000, 3000)
    mpp: float = 0.5
    objective_power: float = 20.0
    missing_omics_fraction: float = 0.125
    censored_fraction: float = 0.35
    median_months: float = 30.0
    n_folds: int = 5  # only used to keep enough events per fold in small cohorts
    min_events_per_fold: int = 2
    latent_noise_sd: float = 0.5  # z_morph = z + sd * e1, z_omics = z + sd * e2
    beta_morph: float = 0.9
    beta_omics: float = 0.9
    weibull_shape: float = 1.5
    omics_effect: float = 1.0  # shift of a responsive gene, in its own sd, per unit z_omics
    responsive_fraction: float = 0.8  # fraction of a signal pathway's genes that respond
    tissue_fraction: tuple[float, float] = (0.25, 0.45)  # of the slide area, per slide

    def __post_init__(self) -> None:
        problems = []
        if self.n_patients < 2:
            problems.append(f"n_patients={self.n_patients}: need at least 2")
        if self.n_broken < 0:
            problems.append(f"n_broken={self.n_broken}: must be >= 0")
        if not (0 <= self.missing_omics_fraction < 1):
            problems.append(f"missing_omics_fraction={self.missing_omics_fraction}: need [0, 1)")
        if not (0 <= self.censored_fraction < 1):
            problems.append(f"censored_fraction={self.censored_fraction}: need [0, 1)")
        width, height = self.slide_px
        if min(width, height) < 256:
            problems.append(f"slide_px={self.slide_px}: each side must be >= 256 px")
        if not (0.05 <= self.mpp <= 50):
            problems.append(f"mpp={self.mpp}: not a plausible µm/px")
        if problems:
            raise ValueError("demo cohort settings: " + "; ".join(problems))


@dataclass(frozen=True)
class SlidePlan:
    """One demo slide: whose it is, how its tissue looks, and whether it is broken."""

    slide_id: str
    case_id: str
    seed: int
    z_morph: float  # the slide's own view of the patient's z_morph
    eosin: float
    regions: tuple[TissueRegion, ...]
    broken: str | None = None  # BROKEN_KIND or None


# --------------------------------------------------------------------------------------------
# Gene sets


def package_gene_sets_path() -> Path:
    """The Hallmark GMT shipped with the package (see slotspe_pipe/data/PROVENANCE.md)."""
    return Path(str(importlib.resources.files("slotspe_pipe") / "data" / GENE_SETS_RESOURCE))


def demo_gene_sets() -> dict[str, list[str]]:
    """Pathway name -> gene symbols of the package's Hallmark GMT, read by the omics reader."""
    return {gs.name: list(gs.genes) for gs in read_gmt(package_gene_sets_path())}


# --------------------------------------------------------------------------------------------
# Patients and survival


def _rng(spec: DemoSpec, stream: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _STREAM[stream]])


def n_censored(spec: DemoSpec) -> int:
    """How many patients are censored: ``censored_fraction`` of them, but small cohorts keep
    at least ``min_events_per_fold`` events per fold where the cohort allows (and one censored
    patient whenever censoring is asked for)."""
    n = spec.n_patients
    wanted = round(spec.censored_fraction * n)
    min_events = min(spec.min_events_per_fold * spec.n_folds, n - 1)
    return int(max(0, min(wanted, n - min_events)))


def simulate_patients(spec: DemoSpec) -> pd.DataFrame:
    """One row per patient: case_id, latent risks, log-hazard, observed time, censorship, age,
    has_rna. Deterministic in ``spec.seed``."""
    rng = _rng(spec, "patients")
    n = spec.n_patients
    z = rng.standard_normal(n)
    z_morph = z + spec.latent_noise_sd * rng.standard_normal(n)
    z_omics = z + spec.latent_noise_sd * rng.standard_normal(n)
    log_hazard = spec.beta_morph * z_morph + spec.beta_omics * z_omics
    # Weibull: S(t) = exp(-(t / scale)^k * exp(log_hazard)); invert with a unit exponential.
    event_time = (rng.standard_exponential(n) * np.exp(-log_hazard)) ** (1.0 / spec.weibull_shape)
    event_time *= spec.median_months / np.median(event_time)
    # Censoring times c * V with V uniform: c is set so exactly n_censored patients have C < T.
    v = rng.uniform(0.05, 1.0, n)
    k = n_censored(spec)
    ratio = np.sort(event_time / v)[::-1]
    c = math.inf if k == 0 else float(np.sqrt(ratio[k - 1] * ratio[k]) if k < n else ratio[-1] / 2)
    censor_time = c * v
    censored = censor_time < event_time
    observed = np.where(censored, censor_time, event_time)
    observed = np.maximum(np.round(observed, 2), 0.1)
    ages = np.clip(np.round(rng.normal(64, 10, n)), 30, 90).astype(int)
    missing = rng.choice(n, size=round(spec.missing_omics_fraction * n), replace=False)
    has_rna = np.ones(n, bool)
    has_rna[missing] = False
    return pd.DataFrame(
        {
            "case_id": [f"DEMO-{i + 1:04d}" for i in range(n)],
            "z": z,
            "z_morph": z_morph,
            "z_omics": z_omics,
            "log_hazard": log_hazard,
            TIME_COL: observed,
            CENSORSHIP_COL: censored.astype(int),
            "age": ages,
            "has_rna": has_rna,
        }
    )


# --------------------------------------------------------------------------------------------
# Expression


def simulate_expression(
    patients: pd.DataFrame, gene_sets: dict[str, list[str]], spec: DemoSpec
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Patients x genes log2 expression (all patients; callers drop those without RNA) and a
    record of the planted omics signal.

    Each gene has its own mean and sd; every pathway has a per-patient activity that moves its
    genes together (correlated noise, as co-expressed programs do); the responsive genes of
    :data:`SIGNAL_PATHWAYS` shift by ``omics_effect * sign * z_omics`` gene sds.
    """
    missing = [p for p in SIGNAL_PATHWAYS if p not in gene_sets]
    if missing:
        raise ValueError(f"gene sets lack the demo's signal pathways {missing}")
    rng = _rng(spec, "omics")
    genes = sorted({g for members in gene_sets.values() for g in members})
    index = {g: i for i, g in enumerate(genes)}
    names = list(gene_sets)
    membership = np.zeros((len(genes), len(names)), np.float64)
    for j, name in enumerate(names):
        membership[[index[g] for g in gene_sets[name]], j] = 1.0
    n, n_genes = len(patients), len(genes)
    expressed = rng.random(n_genes) < 0.85
    mean = np.where(expressed, rng.normal(6.0, 2.5, n_genes), rng.normal(-2.0, 3.0, n_genes))
    sd = np.clip(np.exp(rng.normal(0.0, 0.4, n_genes)), 0.2, 4.0)
    activity = rng.standard_normal((n, len(names)))
    shared = activity @ membership.T / np.sqrt(membership.sum(axis=1))  # unit variance per gene
    noise = rng.standard_normal((n, n_genes))
    responsive = rng.random(n_genes) < spec.responsive_fraction
    signs = np.array([SIGNAL_PATHWAYS.get(name, 0) for name in names], np.float64)
    n_signal = (membership * (signs != 0)).sum(axis=1)
    coef = np.where(
        responsive & (n_signal > 0), (membership @ signs) / np.maximum(n_signal, 1), 0.0
    )
    z_omics = patients["z_omics"].to_numpy()[:, None]
    values = mean + sd * (0.5 * shared + 0.8 * noise + spec.omics_effect * coef * z_omics)
    values = np.round(np.maximum(values, XENA_FLOOR_LOG2), 4)
    frame = pd.DataFrame(values, index=pd.Index(patients["case_id"], name="case_id"), columns=genes)
    signal = {
        "n_genes": n_genes,
        "pathways": dict(SIGNAL_PATHWAYS),
        "effect_gene_sd_per_unit_z_omics": spec.omics_effect,
        "responsive_genes": {
            p: sorted(g for g in gene_sets[p] if coef[index[g]] != 0) for p in SIGNAL_PATHWAYS
        },
        "noise": "per-gene mean/sd; 0.5 x shared pathway activity + 0.8 x independent noise (gene sd units)",
    }
    return frame, signal


# --------------------------------------------------------------------------------------------
# Slides


def morphology_for(z_morph: float) -> tuple[float, float]:
    """(nuclei_density, hematoxylin) of tissue whose morphology risk is ``z_morph``:
    both rise monotonically with risk (denser, darker nuclei), clipped to what renders."""
    density = float(np.clip(math.exp(_DENSITY_PER_Z * z_morph), *_DENSITY_RANGE))
    hematoxylin = float(np.clip(1.0 + _HEMATOXYLIN_PER_Z * z_morph, *_HEMATOXYLIN_RANGE))
    return density, hematoxylin


def random_regions(
    width: int,
    height: int,
    z_morph: float,
    eosin: float,
    rng: np.random.Generator,
    *,
    tissue_fraction: tuple[float, float] = (0.25, 0.45),
) -> tuple[TissueRegion, ...]:
    """1-3 non-overlapping lobed tissue pieces at random places, together covering about
    ``tissue_fraction`` of the slide, stained according to ``z_morph`` (level-0 px)."""
    n_regions = int(rng.integers(1, 4))
    total_area = rng.uniform(*tissue_fraction) * width * height
    shares = rng.dirichlet(np.full(n_regions, 3.0))
    margin = 0.03 * min(width, height)
    frame = box(margin, margin, width - margin, height - margin)
    room_x, room_y = width - 2 * margin, height - 2 * margin
    placed: list[Polygon] = []
    regions = []
    for share in shares:
        area = share * total_area
        for attempt in range(60):
            shrink = 0.85 ** (attempt // 15)  # crowded slide: try smaller pieces
            shape = _lobed_piece(area * shrink, rng)
            minx, miny, maxx, maxy = shape.bounds
            fit = min(1.0, 0.98 * room_x / (maxx - minx), 0.98 * room_y / (maxy - miny))
            if fit < 1.0:  # long thin slides: the piece must fit across the short side
                shape = affinity.scale(shape, fit, fit, origin=(0, 0))
                minx, miny, maxx, maxy = shape.bounds
            dx = rng.uniform(frame.bounds[0] - minx, frame.bounds[2] - maxx)
            dy = rng.uniform(frame.bounds[1] - miny, frame.bounds[3] - maxy)
            shape = affinity.translate(shape, dx, dy)
            if all(not shape.intersects(p.buffer(margin)) for p in placed):
                break
        else:
            continue  # no room left for this piece
        placed.append(shape)
        density, hematoxylin = morphology_for(z_morph + _REGION_NOISE_SD * rng.standard_normal())
        regions.append(TissueRegion(shape, density, hematoxylin, eosin))
    return tuple(regions)


def _lobed_piece(area: float, rng: np.random.Generator) -> Polygon:
    """An irregular tissue outline of roughly ``area`` px²: an ellipse with 1-2 smaller
    overlapping ellipses (lobes), centred at the origin."""
    aspect = rng.uniform(1.0, 1.8)
    rx = math.sqrt(area * aspect / math.pi) / 1.1  # lobes add about 20 % area
    ry = rx / aspect
    parts = [affinity.scale(Point(0, 0).buffer(1.0, quad_segs=24), rx, ry)]
    for _ in range(int(rng.integers(1, 3))):
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = 0.75 * rx * math.cos(angle), 0.75 * ry * math.sin(angle)
        lobe_r = rng.uniform(0.3, 0.5) * rx
        lobe = affinity.scale(Point(0, 0).buffer(1.0, quad_segs=16), lobe_r, lobe_r * 0.8)
        parts.append(affinity.translate(lobe, cx, cy))
    shape = shapely.union_all(parts)
    shape = affinity.rotate(shape, rng.uniform(0, 180), origin=(0, 0))
    return shapely.simplify(shape, 1.0)


def plan_slides(patients: pd.DataFrame, spec: DemoSpec) -> list[SlidePlan]:
    """1-2 slides per patient, then ``n_broken`` extra broken slides for random patients."""
    rng = _rng(spec, "slides")
    width, height = spec.slide_px
    plans: list[SlidePlan] = []
    count: dict[str, int] = {}

    def new_slide(case_id: str, z_morph: float, broken: str | None) -> SlidePlan:
        count[case_id] = count.get(case_id, 0) + 1
        z_slide = z_morph + _SLIDE_NOISE_SD * rng.standard_normal()
        eosin = rng.uniform(*_EOSIN_RANGE)
        regions = random_regions(
            width, height, z_slide, eosin, rng, tissue_fraction=spec.tissue_fraction
        )
        return SlidePlan(
            slide_id=f"{case_id}-S{count[case_id]}",
            case_id=case_id,
            seed=int(rng.integers(2**31 - 1)),
            z_morph=float(z_slide),
            eosin=float(eosin),
            regions=regions,
            broken=broken,
        )

    for case_id, z_morph in zip(patients["case_id"], patients["z_morph"], strict=True):
        for _ in range(1 + int(rng.random() < _TWO_SLIDE_PROB)):
            plans.append(new_slide(case_id, float(z_morph), None))
    owners = rng.choice(len(patients), size=spec.n_broken, replace=spec.n_broken > len(patients))
    for i in owners:
        row = patients.iloc[int(i)]
        plans.append(new_slide(row["case_id"], float(row["z_morph"]), BROKEN_KIND))
    return plans


def write_plan_slide(plan: SlidePlan, path: Path, spec: DemoSpec) -> dict[str, Any]:
    """Write one planned slide (and break it if planned); return its truth record."""
    width, height = spec.slide_px
    slide = write_synthetic_slide(
        path,
        width,
        height,
        mpp=spec.mpp,
        objective_power=spec.objective_power,
        regions=plan.regions,
        seed=plan.seed,
    )
    broken = corrupt_tile_data(path) if plan.broken == BROKEN_KIND else None
    return {
        "slide_id": plan.slide_id,
        "case_id": plan.case_id,
        "z_morph_slide": round(plan.z_morph, 6),
        "width": width,
        "height": height,
        "mpp": spec.mpp,
        "objective_power": spec.objective_power,
        "tissue_area_mm2": round(slide.tissue_area_mm2, 4),
        "regions": [
            {
                "nuclei_density": round(r.nuclei_density, 6),
                "hematoxylin": round(r.hematoxylin, 6),
                "eosin": round(r.eosin, 6),
                "area_mm2": round(r.polygon_level0.area * (spec.mpp * 1e-3) ** 2, 4),
            }
            for r in plan.regions
        ],
        "broken": broken,
    }


def corrupt_tile_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Zero every tile and strip of every page of a TIFF in place; keep header and directories.

    The result is what an interrupted copy onto a preallocated file leaves: readers open it and
    see the right size and µm/px, and fail on the first pixel read.
    """
    with tifffile.TiffFile(path) as tif:
        spans = [
            (int(offset), int(length))
            for page in tif.pages
            for offset, length in zip(page.dataoffsets, page.databytecounts, strict=True)
            if length
        ]
    with open(path, "r+b") as fh:
        for offset, length in spans:
            fh.seek(offset)
            fh.write(bytes(length))
    return {
        "kind": BROKEN_KIND,
        "description": BROKEN_DESCRIPTION,
        "bytes_zeroed": sum(length for _, length in spans),
    }


def write_demo_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    objective_power: float = 20.0,
    z_morph: float = 0.0,
    seed: int = 0,
    broken: bool = False,
) -> dict[str, Any]:
    """Write one demo-style slide (random tissue stained for morphology risk ``z_morph``);
    ``broken`` zeroes its tile data. Returns the slide's truth record."""
    spec = DemoSpec(slide_px=(width, height), mpp=mpp, objective_power=objective_power)
    rng = np.random.default_rng([seed, _STREAM["slides"]])
    eosin = float(rng.uniform(*_EOSIN_RANGE))
    plan = SlidePlan(
        slide_id=Path(path).stem,
        case_id=Path(path).stem,
        seed=seed,
        z_morph=z_morph,
        eosin=eosin,
        regions=random_regions(width, height, z_morph, eosin, rng),
        broken=BROKEN_KIND if broken else None,
    )
    return write_plan_slide(plan, Path(path), spec)


# --------------------------------------------------------------------------------------------
# The cohort


def _c_index(patients: pd.DataFrame, score: np.ndarray) -> float | None:
    """Harrell's C-index of ``score`` on the observed labels; None without a comparable pair."""
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    event = patients[CENSORSHIP_COL].to_numpy() == 0
    try:
        result = concordance_index_censored(event, patients[TIME_COL].to_numpy(), score)
    except NoComparablePairException:
        return None
    return round(float(result[0]), 4)


def write_demo_cohort(out_dir: str | os.PathLike[str], spec: DemoSpec) -> dict[str, Any]:
    """Write the demo cohort directory atomically; return the truth record (also truth.json).

    Layout: slides/{slide_id}.svs, slides.csv (slide_id, path relative to the sheet, patient_id,
    mpp empty = read from the slide), rna.csv, clinical.csv (one row per slide), genesets.gmt,
    truth.json, README.md. Without slides (``spec.slides`` False) there is no slides/ or
    slides.csv and clinical.csv has one row per patient.
    """
    started = time.perf_counter()
    gene_sets_src = package_gene_sets_path()
    gene_sets = demo_gene_sets()
    patients = simulate_patients(spec)
    expression, omics_signal = simulate_expression(patients, gene_sets, spec)
    plans = plan_slides(patients, spec) if spec.slides else []
    slide_records: list[dict[str, Any]] = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shutil.copyfile(gene_sets_src, tmp / "genesets.gmt")
        rna = expression.loc[patients.loc[patients["has_rna"], "case_id"]]
        rna.to_csv(tmp / "rna.csv", float_format="%.4f", lineterminator="\n")
        if plans:
            (tmp / "slides").mkdir()
            slide_started = time.perf_counter()
            for plan in tqdm(plans, desc="demo slides", unit="slide"):
                record = write_plan_slide(plan, tmp / "slides" / f"{plan.slide_id}.svs", spec)
                record["path"] = f"slides/{plan.slide_id}.svs"
                slide_records.append(record)
            elapsed = time.perf_counter() - slide_started
            log.info(
                "wrote %d slides in %.1f s (%.2f s/slide)",
                len(plans),
                elapsed,
                elapsed / len(plans),
            )
            pd.DataFrame(
                {
                    "slide_id": [p.slide_id for p in plans],
                    "path": [f"slides/{p.slide_id}.svs" for p in plans],
                    "patient_id": [p.case_id for p in plans],
                    "mpp": ["" for _ in plans],
                }
            ).to_csv(tmp / "slides.csv", index=False, lineterminator="\n")
        _clinical_table(patients, plans).to_csv(
            tmp / "clinical.csv", index=False, lineterminator="\n"
        )
        truth_text = json.dumps(
            _truth(spec, patients, plans, slide_records, omics_signal), indent=2
        )
        (tmp / "truth.json").write_text(truth_text + "\n")
        truth = json.loads(truth_text)  # return exactly what the file says (lists, not tuples)
        (tmp / "README.md").write_text(_readme(spec, truth))
    log.info(
        "demo cohort %s: %d patients, %d slides (%d broken) in %.1f s",
        out_dir,
        spec.n_patients,
        len(plans),
        sum(p.broken is not None for p in plans),
        time.perf_counter() - started,
    )
    return truth


def _clinical_table(patients: pd.DataFrame, plans: Sequence[SlidePlan]) -> pd.DataFrame:
    """TCGA-style clinical table: one row per slide (or per patient without slides)."""
    columns = ["case_id", "age", TIME_COL, CENSORSHIP_COL]
    table = patients[columns]
    if not plans:
        return table
    slides = pd.DataFrame(
        {"case_id": [p.case_id for p in plans], "slide_id": [p.slide_id for p in plans]}
    )
    merged = slides.merge(table, on="case_id", how="left", validate="many_to_one")
    return merged.sort_values(["case_id", "slide_id"], kind="stable")[
        ["case_id", "slide_id", "age", TIME_COL, CENSORSHIP_COL]
    ]


def _truth(
    spec: DemoSpec,
    patients: pd.DataFrame,
    plans: Sequence[SlidePlan],
    slide_records: list[dict[str, Any]],
    omics_signal: dict[str, Any],
) -> dict[str, Any]:
    slides_of: dict[str, list[str]] = {}
    for plan in plans:
        slides_of.setdefault(plan.case_id, []).append(plan.slide_id)
    spec_record = dataclasses.asdict(spec)
    return {
        "generator": f"slotspe_pipe.demo {__version__}",
        "spec": spec_record,
        "columns": {
            "time": TIME_COL,
            "time_unit": "months",
            "censorship": CENSORSHIP_COL,
            "censorship_meaning": "1 = censored (no event observed), 0 = event (death) observed",
        },
        "survival_model": {
            "latent": "z ~ N(0,1); z_morph = z + sd*e1; z_omics = z + sd*e2 (e1, e2 ~ N(0,1))",
            "latent_noise_sd": spec.latent_noise_sd,
            "log_hazard": "beta_morph * z_morph + beta_omics * z_omics",
            "beta_morph": spec.beta_morph,
            "beta_omics": spec.beta_omics,
            "times": f"Weibull shape {spec.weibull_shape}, scaled to median {spec.median_months} months",
            "censoring": "independent uniform censoring times, scaled to censor n_censored patients",
            "n_censored": int(patients[CENSORSHIP_COL].sum()),
            "age": "no signal",
        },
        # What a perfect model of each view would score on this very cohort: the ceiling
        # against which the pipeline's cross-validated C-index is read.
        "oracle_c_index": {
            "log_hazard": _c_index(patients, patients["log_hazard"].to_numpy()),
            "z_morph": _c_index(patients, patients["z_morph"].to_numpy()),
            "z_omics": _c_index(patients, patients["z_omics"].to_numpy()),
        },
        "omics_signal": omics_signal,
        "morphology_signal": {
            "nuclei_density": f"clip(exp({_DENSITY_PER_Z} * z), {_DENSITY_RANGE[0]}, {_DENSITY_RANGE[1]})",
            "hematoxylin": f"clip(1 + {_HEMATOXYLIN_PER_Z} * z, {_HEMATOXYLIN_RANGE[0]}, {_HEMATOXYLIN_RANGE[1]})",
            "eosin": f"uniform{_EOSIN_RANGE} per slide, no signal",
            "z": f"z_morph_slide = z_morph + N(0, {_SLIDE_NOISE_SD}); per region + N(0, {_REGION_NOISE_SD})",
        },
        "patients": [
            {
                "case_id": row.case_id,
                "z": round(float(row.z), 6),
                "z_morph": round(float(row.z_morph), 6),
                "z_omics": round(float(row.z_omics), 6),
                "log_hazard": round(float(row.log_hazard), 6),
                TIME_COL: float(getattr(row, TIME_COL)),
                CENSORSHIP_COL: int(getattr(row, CENSORSHIP_COL)),
                "has_rna": bool(row.has_rna),
                "slide_ids": slides_of.get(row.case_id, []),
            }
            for row in patients.itertuples(index=False)
        ],
        "slides": slide_records,
        "broken_slides": [p.slide_id for p in plans if p.broken is not None],
    }


def _readme(spec: DemoSpec, truth: dict[str, Any]) -> str:
    n_slides = len(truth["slides"])
    broken = truth["broken_slides"]
    missing = [p["case_id"] for p in truth["patients"] if not p["has_rna"]]
    width, height = spec.slide_px
    oracle = truth["oracle_c_index"]["log_hazard"]
    oracle = "undefined (no comparable pair)" if oracle is None else oracle
    lines = [
        "# slotspe-pipe synthetic demo cohort",
        "",
        f"Simulated by `slotspe-pipe demo cohort` (seed {spec.seed}); no real patient data.",
        "",
        f"- {spec.n_patients} patients, {n_slides} slides"
        + (f" ({width} x {height} px at {spec.mpp} µm/px)" if n_slides else ""),
        f"- `clinical.csv`: one row per {'slide' if n_slides else 'patient'}; `{TIME_COL}` in "
        f"months, `{CENSORSHIP_COL}` = 1 when censored ({truth['survival_model']['n_censored']} "
        f"of {spec.n_patients} patients).",
        f"- `rna.csv`: patients x {truth['omics_signal']['n_genes']} genes (every gene of the "
        "Hallmark sets), log2 scale; patients without RNA have no row: "
        + (", ".join(missing) if missing else "none"),
        "- `genesets.gmt`: the 50 MSigDB Hallmark gene sets (CC BY 4.0).",
        "- `slides.csv`: sample sheet; paths are relative to this directory; empty `mpp` = read "
        "it from the slide."
        if n_slides
        else "- no slides (generated with --no-slides)",
        "",
        "## Planted signal",
        "",
        "Risk rises with nuclear density and haematoxylin strength of the tissue, with "
        + ", ".join(f"{p} ({'up' if s > 0 else 'down'})" for p, s in SIGNAL_PATHWAYS.items())
        + ". Details and per-patient values in `truth.json`.",
        f"C-index of the true log-hazard on these labels (what a perfect model scores): {oracle}.",
        "",
        "## Broken slides (on purpose)",
        "",
    ]
    if broken:
        lines += [f"- `{sid}`: {BROKEN_DESCRIPTION}." for sid in broken]
        lines += ["", "The pipeline must finish and report these as failed."]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="demo_command", metavar="WHAT", required=True)
    cohort = sub.add_parser("cohort", help="write the synthetic demo cohort directory")
    cohort.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    cohort.add_argument("--patients", type=int, default=DemoSpec.n_patients)
    cohort.add_argument("--seed", type=int, default=DemoSpec.seed)
    cohort.add_argument(
        "--broken", type=int, default=DemoSpec.n_broken, help="extra unreadable slides"
    )
    cohort.add_argument(
        "--slide-px",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        default=DemoSpec.slide_px,
        help="level-0 slide size in px",
    )
    cohort.add_argument("--mpp", type=float, default=DemoSpec.mpp, help="level-0 µm/px")
    cohort.add_argument("--objective-power", type=float, default=DemoSpec.objective_power)
    cohort.add_argument("--no-slides", action="store_true", help="clinical and RNA only")
    slide = sub.add_parser("slide", help="write one synthetic demo slide")
    slide.add_argument("-o", "--out", type=Path, required=True, help="output .svs path")
    slide.add_argument("--width", type=int, default=DemoSpec.slide_px[0], help="level-0 px")
    slide.add_argument("--height", type=int, default=DemoSpec.slide_px[1], help="level-0 px")
    slide.add_argument("--mpp", type=float, default=DemoSpec.mpp, help="level-0 µm/px")
    slide.add_argument("--objective-power", type=float, default=DemoSpec.objective_power)
    slide.add_argument("--z-morph", type=float, default=0.0, help="morphology risk (N(0,1) scale)")
    slide.add_argument("--seed", type=int, default=0)
    slide.add_argument("--broken", action="store_true", help="zero the tile data")


def run_cli(args: argparse.Namespace) -> int:
    if args.demo_command == "slide":
        record = write_demo_slide(
            args.out,
            args.width,
            args.height,
            mpp=args.mpp,
            objective_power=args.objective_power,
            z_morph=args.z_morph,
            seed=args.seed,
            broken=args.broken,
        )
        print(json.dumps(record, indent=2))
        return 0
    try:
        spec = DemoSpec(
            n_patients=args.patients,
            seed=args.seed,
            n_broken=args.broken if not args.no_slides else 0,
            slides=not args.no_slides,
            slide_px=tuple(args.slide_px),
            mpp=args.mpp,
            objective_power=args.objective_power,
        )
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    truth = write_demo_cohort(args.out, spec)
    print(
        f"{args.out}: {spec.n_patients} patients, {len(truth['slides'])} slides "
        f"(broken: {', '.join(truth['broken_slides']) or 'none'}), "
        f"{truth['survival_model']['n_censored']} censored, "
        f"oracle C-index {truth['oracle_c_index']['log_hazard']}"
    )
    return 0
