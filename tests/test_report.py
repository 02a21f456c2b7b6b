"""The run report: every failure visible with its reason, metrics as mean ± std, images embedded.

A small run tree is built in tmp_path with the real store writers (tiles, features) and
hand-written records in the layout the other stages write, including the ways a run goes wrong:
a slide that preflight could not open, one whose extraction failed, one whose tissue output is
missing, one the cohort join left out, and a model run without its summary.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw

from slotspe_pipe import attention_overlay as ov
from slotspe_pipe import cli
from slotspe_pipe import report_html as h
from slotspe_pipe.evaluate import write_attention_record
from slotspe_pipe.report import _as_pairs, _exclusions, build_report, metric, write_report
from slotspe_pipe.store.features import write_features
from slotspe_pipe.store.tiles import write_tiles

OK_SLIDES = ("S1", "S2", "S4", "S5", "S6")
PREFLIGHT_REASON = (
    "cannot open: OpenSlide and TiffSlide both failed <unsupported format> & no fallback"
)
EXTRACTION_REASON = "CUDA out of memory while embedding batch 3 (batch_size=512)"
COHORT_REASON = "no clinical record for patient P6"
SLOTSPE_FOLDS = [0.65, 0.70, 0.75]  # mean 0.700, population std 0.041
LEVEL0 = (46000, 32914)  # level-0 px of every synthetic slide, 0.2527 µm/px
THUMB_SIZE = (900, 644)  # tissue thumbnail: 46000 / 900 = 51.1 level-0 px per thumbnail px
PATCH_L0 = 507
# An 8 x 5 patch grid inside the first tissue blob of the thumbnail; one patch holds all of slot
# 1's attention.
ATTN_COORDS = np.stack(
    [
        a.ravel()
        for a in np.meshgrid(10000 + PATCH_L0 * np.arange(8), 8000 + PATCH_L0 * np.arange(5))
    ],
    axis=1,
).astype(np.int32)
HOT = 17  # column 1, row 2 of the grid
PATHWAYS = ["HALLMARK_HYPOXIA", "<b>KEGG & co</b>", "REACTOME_APOPTOSIS", "P4", "P5", "P6"]
TISSUE_RGB = (214, 140, 190)


def _thumbnail(path: Path, size: tuple[int, int] = (900, 640), grid: bool = False) -> None:
    """A slide-like thumbnail: pink tissue blobs on white, a green contour, optional patch grid."""
    img = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(img)
    draw.ellipse((120, 100, 520, 520), fill=TISSUE_RGB, outline=(0, 160, 0), width=4)
    draw.ellipse((560, 180, 820, 460), fill=(190, 110, 170), outline=(0, 160, 0), width=4)
    if grid:
        for x in range(120, 820, 40):
            for y in range(100, 520, 40):
                if img.getpixel((x + 20, y + 20))[1] < 200:
                    draw.rectangle((x, y, x + 40, y + 40), outline=(30, 60, 200), width=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _tiles_attrs(slide: str) -> dict:
    return {
        "slide_id": slide,
        "slide_path": f"/data/slides/{slide}.svs",
        "reader": "openslide",
        "mpp": 0.2527,
        "mpp_source": "openslide.mpp-x",
        "target_mpp": 0.5,
        "patch_px": 256,
        "patch_px_level0": 507,
        "stride_px_level0": 507,
        "read_level": 0,
        "read_downsample": 1.0,
        "resize": 0.5054,
        "overlap": 0,
        "min_tissue": 0.5,
        "level0_dimensions": [46000, 32914],
        "segmentation": {"preset": "default"},
        "settings_hash": "abc123",
    }


def _write_slide(root: Path, slide: str, n: int, *, tissue: bool = True) -> None:
    if tissue:
        folder = root / "tissue" / slide
        _thumbnail(folder / "thumbnail.png", size=THUMB_SIZE)
        summary = {
            "tissue_area_mm2": 81.25,
            "n_regions": 2,
            "mask_mpp": LEVEL0[0] / THUMB_SIZE[0] * 0.2527,
            "level0_dimensions": list(LEVEL0),
            "slide": {"mpp": 0.2527},
            "settings": {},
        }
        (folder / "summary.json").write_text(json.dumps(summary))
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 40000, size=(n, 2))
    write_tiles(root / "tiles" / f"{slide}.zarr", coords, np.ones(n), _tiles_attrs(slide))
    _thumbnail(root / "tiles" / f"{slide}.grid.png", grid=True)


def _write_features(root: Path, slide: str, n: int, *, random_init: bool = False) -> None:
    feats = root / "features"
    coords = np.zeros((n, 2), np.int32)
    write_features(
        feats / f"{slide}.zarr",
        np.ones((n, 8), np.float32),
        coords,
        {
            "slide_id": slide,
            "encoder": "builtin",
            "embedding_dim": 8,
            "weights": {"sha256": "f" * 64, "random_init": random_init},
            "input_size": 224,
            "normalization": "imagenet",
            "precision": "fp16",
            "tiles_settings_hash": "abc123",
        },
    )
    record = {"slide_id": slide, "status": "ok", "reason": "", "n_patches": n}
    record.update({"seconds": 12.5, "patches_per_s": n / 12.5})
    (feats / f"{slide}.json").write_text(json.dumps(record))


def _model_run(root: Path, model: str, folds: list[float], **extra) -> Path:
    run = root / "models" / model / "seed_1"
    run.mkdir(parents=True)
    summary = {
        "model": model,
        "c_index_pooled": 0.6912,
        "folds": [
            {
                "fold": k,
                "c_index": c,
                "c_index_ipcw": c - 0.02,
                "ibs": 0.18,
                "n_val": 10,
                "events_val": 4,
            }
            for k, c in enumerate(folds)
        ],
        **extra,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _attention_record(path: Path, case: str, slide: str) -> None:
    """A SlotSPE record in the trainer's format: slot 1 puts all its weight on patch HOT, slot 3
    is uniform; slots 0 and 2 are not kept (gate 0)."""
    n = len(ATTN_COORDS)
    wsi = np.full((4, n), 1.0 / n)
    wsi[1] = 0.0
    wsi[1, HOT] = 1.0
    omics = np.full((4, len(PATHWAYS)), 0.05)
    omics[0, [1, 2]] = [0.6, 0.15]  # slot 0: pathway 1, then 2
    omics[2, [5, 0]] = [0.5, 0.25]  # slot 2: pathway 5, then 0
    omics /= omics.sum(axis=1, keepdims=True)
    write_attention_record(
        path,
        case_id=case,
        arrays={
            "coords": ATTN_COORDS,
            "patch_slide": np.zeros(n, np.int32),
            "wsi_slot_attention": wsi,
            "wsi_gate": np.array([0.0, 0.9, 0.0, 0.4]),
            "omics_slot_attention": omics,
            "omics_gate": np.array([0.8, 0.0, 0.3, 0.0]),
        },
        slide_ids=[slide],
        pathways=PATHWAYS,
    )


def make_run(root: Path) -> dict:
    """A finished run with one failure of every kind; returns the build_report arguments."""
    status_rows = ["slide_id\tstatus\treason\treader\tmpp\tmpp_source\tslide_path"]
    for sid in OK_SLIDES:
        status_rows.append(
            f"{sid}\tok\t\topenslide\t0.2527\topenslide.mpp-x\t/data/slides/{sid}.svs"
        )
    status_rows.append(f"S3\tfailed\t{PREFLIGHT_REASON}\t\t\t\t/data/slides/S3.svs")
    (root / "slide_status.tsv").write_text("\n".join(status_rows) + "\n")
    pre = root / "preflight"
    pre.mkdir()
    for sid in (*OK_SLIDES, "S3"):
        ok = sid != "S3"
        record = {
            "slide_id": sid,
            "slide_path": f"/data/slides/{sid}.svs",
            "status": "ok" if ok else "failed",
            "reason": "" if ok else PREFLIGHT_REASON,
            "reader": "openslide" if ok else None,
            "vendor": "aperio" if ok else None,
            "level_dimensions": [[46000, 32914], [11500, 8228]] if ok else [],
            "level_downsamples": [1.0, 4.0] if ok else [],
            "mpp": 0.2527 if ok else None,
            "mpp_source": "openslide.mpp-x" if ok else None,
            "objective_power": 40,
            "associated_images": ["label", "macro"],
            "modality": "brightfield",
            "warnings": ["mpp-x and mpp-y differ by 0.4%"] if sid == "S2" else [],
        }
        (pre / f"{sid}.json").write_text(json.dumps(record))

    for sid in ("S1", "S2", "S4", "S6"):
        _write_slide(root, sid, 40)
    _write_slide(root, "S5", 25, tissue=False)  # tiles exist but the tissue folder is gone
    for sid in ("S1", "S2", "S5", "S6"):
        _write_features(root, sid, 40 if sid != "S5" else 25)
    (root / "features" / "S4.json").write_text(
        json.dumps({"slide_id": "S4", "status": "failed", "reason": EXTRACTION_REASON})
    )

    cohort = root / "cohort" / "demo"
    cohort.mkdir(parents=True)
    # The layout slotspe_pipe.cohort writes (patients/folds/slides.csv, summary.json).
    (cohort / "patients.csv").write_text(
        "case_id,time,event,has_omics,slide_ids,n_slides,time_unit\n"
        "P1,12.0,1,True,S1,1,months\nP2,30.5,0,True,S2,1,months\n"
        "P4,8.0,1,False,S4,1,months\nP5,22.0,0,False,S5,1,months\n"
    )
    folds = ["fold,case_id,split"]
    for fold, val in ((0, ("P1", "P2")), (1, ("P4", "P5"))):
        folds += [f"{fold},{c},{'val' if c in val else 'train'}" for c in ("P1", "P2", "P4", "P5")]
    (cohort / "folds.csv").write_text("\n".join(folds) + "\n")
    (cohort / "slides.csv").write_text(
        "slide_id,case_id,features_path\n"
        + "".join(f"S{i},P{i},{root}/features/S{i}.zarr\n" for i in (1, 2, 4, 5))
    )
    (cohort / "summary.json").write_text(
        json.dumps(
            {
                "name": "demo",
                "settings": {"time_unit": "months"},
                "slides": {
                    "in_sheet": 6,
                    "usable": 4,
                    "excluded": {"S6": COHORT_REASON},
                    "excluded_by_reason": {"no clinical record for patient P6": 1},
                },
                "omics": {"pathways_kept": 50, "genes_found": 4321},
                "patients": {
                    "in_cohort": 4,
                    "excluded_by_reason": {"no usable slide": 1},
                    "excluded": {"P9": "no RNA-seq and no slides"},
                },
                "events": {"observed": 2, "censored": 2},
                "genes_missing": [f"GENE{i}" for i in range(80)],
            }
        )
    )

    slot = _model_run(
        root,
        "slotspe",
        SLOTSPE_FOLDS,
        c_index_mean=0.7,
        c_index_std=0.0408,
        c_index_missing_omics_mean=0.612,
        c_index_missing_omics_std=0.031,
        c_index_best_epoch_selected_on_val=0.801,
    )
    _thumbnail(slot / "km.png", size=(1200, 900))
    # P1: record and trainer plot, slide with a thumbnail; P2: trainer plot only (an older run);
    # P5: record, but its slide's tissue output is missing.
    _attention_record(slot / "fold_0" / "attention" / "P1.npz", "P1", "S1")
    _thumbnail(slot / "fold_0" / "attention" / "P1.png", size=(800, 400))
    _thumbnail(slot / "fold_0" / "attention" / "P2.png", size=(800, 400))
    _attention_record(slot / "fold_1" / "attention" / "P5.npz", "P5", "S5")
    snn = _model_run(root, "snn", [0.60, 0.62, 0.64])
    _thumbnail(snn / "km.png", size=(1200, 900))
    (root / "models" / "abmil" / "seed_1").mkdir(parents=True)  # ran, but no summary

    return {
        "status": root / "slide_status.tsv",
        "cohort_dir": cohort,
        "preflight_dir": pre,
        "tissue_dir": root / "tissue",
        "tiles_dir": root / "tiles",
        "features_dir": root / "features",
        "models_dir": root / "models",
        "attention_patients": 2,
        "generated_at": datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
    }


@pytest.fixture(scope="module")
def run_tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def page(run_tree: dict) -> str:
    return build_report(**run_tree)


def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def _images(markup: str) -> list[Image.Image]:
    uris = re.findall(r'src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', markup)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def _patient(attention: str, case: str) -> str:
    """The markup of one patient's block in the attention section."""
    blocks = attention.split('<div class="attn-patient">')[1:]
    return next(b for b in blocks if f"patient {case}," in b)


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tol: float = 30) -> np.ndarray:
    return np.abs(rgb.astype(int) - np.array(colour)).sum(axis=2) < tol


def test_every_failed_slide_is_listed_first_with_its_reason(page: str) -> None:
    failures = _section(page, "failures")
    expected = {
        "S3": PREFLIGHT_REASON,
        "S4": EXTRACTION_REASON,
        "S5": "tissue output missing",
        "S6": COHORT_REASON,
    }
    for slide, reason in expected.items():
        row = next(r for r in failures.split("<tr") if f"<b>{slide}</b>" in r)
        assert html.escape(reason) in row, (slide, row)
    assert "S1" not in failures and "S2" not in failures
    # Failures come before the QC section, which comes before the metrics.
    assert page.index('id="failures"') < page.index('id="slides"') < page.index('id="models"')
    # Raw reason text is escaped, never injected as markup.
    assert "<unsupported format>" not in page


def test_overview_counts(page: str) -> None:
    overview = _section(page, "overview")
    stats = dict(
        (label, value)
        for value, label in re.findall(
            r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', overview
        )
    )
    assert stats["slides"] == "6"
    assert stats["slides failed"] == "3"  # S3 preflight, S4 extraction, S5 tissue missing
    assert stats["excluded by cohort"] == "1"
    assert stats["patients"] == "4" and stats["events (deaths)"] == "2"
    assert stats["patches"] == f"{4 * 40 + 25:,}"
    assert stats["patches/s extracted"] == f"{(3 * 40 + 25) / (4 * 12.5):.1f}"  # ok records only


def test_metrics_mean_std_per_model(page: str) -> None:
    models = _section(page, "models")
    # slotspe: the summary's own mean/std; snn: computed from its folds (population std).
    assert "0.700 ± 0.041" in models
    assert f"{np.mean([0.60, 0.62, 0.64]):.3f} ± {np.std([0.60, 0.62, 0.64]):.3f}" in models
    assert "0.691" in models  # pooled
    assert "slotspe (missing omics)" in models and "0.612 ± 0.031" in models
    assert "best epoch, selected on validation — optimistic" in models and "0.801" in models
    # IPCW computed from folds; IBS constant over folds -> std 0.
    assert f"{np.mean(SLOTSPE_FOLDS) - 0.02:.3f} ± {np.std(SLOTSPE_FOLDS):.3f}" in models
    assert "0.180 ± 0.000" in models
    # A run without summary is shown as missing, not dropped.
    abmil = next(r for r in models.split("<tr") if "<b>abmil</b>" in r)
    assert "summary missing" in abmil


def test_several_seeds_get_a_row_over_all_folds(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    args = make_run(root)
    seed2 = root / "models" / "snn" / "seed_2"
    seed2.mkdir()
    (seed2 / "summary.json").write_text(
        json.dumps(
            {"model": "snn", "folds": [{"fold": 0, "c_index": 0.5}, {"fold": 1, "c_index": 0.7}]}
        )
    )
    models = _section(build_report(**args), "models")
    row = next(r for r in models.split("<tr") if "snn (all seeds)" in r)
    values = [0.60, 0.62, 0.64, 0.5, 0.7]
    assert f"{np.mean(values):.3f} ± {np.std(values):.3f}" in row
    assert "1, 2" in row


def test_metric_prefers_summary_and_falls_back_to_folds() -> None:
    summary = {
        "c_index_mean": 0.8,
        "c_index_std": 0.1,
        "folds": [{"c_index": 0.5}, {"c_index": 0.7}],
    }
    assert metric(summary, "c_index") == (0.8, 0.1)
    assert metric({"folds": summary["folds"]}, "c_index") == pytest.approx((0.6, 0.1))
    assert metric({"ibs": 0.2}, "ibs") == (0.2, None)
    assert metric({}, "ibs") == (None, None)


def test_images_embedded_and_downscaled(page: str) -> None:
    slides = _section(page, "slides")
    thumbs = _images(slides)
    # Grid + contour thumbnails for S1, S2, S4, S6; grid only for S5 (tissue missing).
    assert len(thumbs) == 9
    assert all(img.width <= 400 for img in thumbs)
    assert all(img.format == "JPEG" for img in thumbs)  # tissue images: JPEG keeps the page small
    km = _images(_section(page, "km"))
    assert len(km) == 2 and all(img.width <= 560 for img in km)
    assert all(img.format == "PNG" for img in km)  # plots stay lossless
    attention = _section(page, "attention")
    # --attention-patients 2 of the 3 available, taken from the folds in turn: P1 (fold 0), then
    # P5 (fold 1), not P2; two kept slots each.
    assert "patient P1," in attention and "patient P5," in attention
    assert "patient P2," not in attention and "2 of 3 patients" in attention
    overlays = _images(attention)
    assert len(overlays) == 4 and all(img.format == "JPEG" for img in overlays)
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside


def test_attention_is_drawn_over_the_slide_thumbnail(page: str) -> None:
    p1 = _patient(_section(page, "attention"), "P1")
    # The kept slots, most gated first; the trainer's scatter plot is not needed.
    assert p1.index("S1 · slot 1 (gate 0.90)") < p1.index("S1 · slot 3 (gate 0.40)")
    assert "slot 0" not in p1.replace("omics slot 0", "") and "blank background" not in p1
    assert "percentile" in p1 and "× uniform" in p1
    hot_panel, uniform_panel = (np.asarray(img.convert("RGB")) for img in _images(p1))
    # Left of the colour bar is the cropped thumbnail; the 1-patch margin around the grid shows
    # the tissue itself, untinted.
    width = hot_panel.shape[1] - ov.COLOURBAR_PX
    tissue = hot_panel[:, :width]
    assert _near(tissue, TISSUE_RGB).sum() > 500
    # The one patch with all of slot 1's attention is the only square in the top colour, at its
    # place in the grid: column 1 of 8, row 2 of 5, inside a crop of one patch margin.
    top = np.asarray(matplotlib.colormaps[ov.DEFAULT_CMAP](1.0)[:3]) * 255
    hot_rgb = tuple(np.round(0.35 * np.array(TISSUE_RGB) + 0.65 * top).astype(int))
    ys, xs = np.nonzero(_near(tissue, hot_rgb, tol=45))
    assert len(ys) > 50
    cell_x, cell_y = width / 10, tissue.shape[0] / 7  # grid + margins, in patches
    assert abs(xs.mean() - 2.5 * cell_x) < 0.5 * cell_x
    assert abs(ys.mean() - 3.5 * cell_y) < 0.5 * cell_y
    assert xs.max() - xs.min() < 1.3 * cell_x  # one square, not a smear
    # Slot 3 is uniform: no patch in the top colour.
    assert _near(uniform_panel[:, :width], hot_rgb, tol=45).sum() < 10


def test_attention_without_a_thumbnail_is_drawn_on_a_blank_background(page: str) -> None:
    p5 = _patient(_section(page, "attention"), "P5")
    assert "no tissue thumbnail" in p5 and "S5/thumbnail.png missing" in p5
    assert p5.count("patches drawn on a blank background") == 2
    for img in _images(p5):
        rgb = np.asarray(img.convert("RGB"))
        assert _near(rgb, TISSUE_RGB).sum() == 0  # no tissue image underneath
        assert _near(rgb, (255, 255, 255), tol=6).sum() > 500


def test_omics_slots_list_their_top_pathways(page: str) -> None:
    attention = _section(page, "attention")
    p1 = _patient(attention, "P1")
    assert p1.index("omics slot 0 (gate 0.80)") < p1.index("omics slot 2 (gate 0.30)")
    slot0 = p1[p1.index("omics slot 0") : p1.index("omics slot 2")]
    assert slot0.index("&lt;b&gt;KEGG &amp; co&lt;/b&gt;") < slot0.index("REACTOME_APOPTOSIS")
    assert "<b>KEGG" not in attention  # pathway names are escaped
    assert "uniform = 17%" in p1  # 6 pathways
    assert "No RNA-seq for this patient" in _patient(attention, "P5")
    assert "No RNA-seq" not in p1


def test_attention_falls_back_to_the_trainer_plot_without_a_record(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    args = make_run(root)
    (root / "models" / "slotspe" / "seed_1" / "fold_0" / "attention" / "P1.npz").write_bytes(
        b"truncated"
    )
    # ABMIL's record: one attention map over the patches, no slots, no gate, no omics.
    abmil = root / "models" / "abmil" / "seed_1" / "fold_0" / "attention" / "P1.npz"
    n = len(ATTN_COORDS)
    write_attention_record(
        abmil,
        case_id="P1",
        arrays={
            "coords": ATTN_COORDS,
            "patch_slide": np.zeros(n, np.int32),
            "patch_attention": np.full(n, 1.0 / n),
        },
        slide_ids=["S1"],
    )
    attention = _section(build_report(**{**args, "attention_patients": 3}), "attention")
    abmil_part = attention[attention.index("<h3>abmil, seed 1") :]
    assert "(1 of 1 patients)" in abmil_part and "<b>S1</b><br>40 patches" in abmil_part
    assert [img.format for img in _images(abmil_part)] == ["JPEG"]
    assert "omics slot" not in abmil_part
    attention = attention[: attention.index("<h3>abmil, seed 1")]
    p2 = _patient(attention, "P2")
    assert "no attention record (P2.npz) in fold_0/attention" in p2
    assert "P2.png: the trainer&#x27;s plot of patch positions without the tissue" in p2
    assert [img.format for img in _images(p2)] == ["PNG"]
    p1 = _patient(attention, "P1")
    assert "P1.npz: not a readable .npz" in p1 and "fallback" in p1
    assert [img.format for img in _images(p1)] == ["PNG"]


def test_slide_facts(page: str) -> None:
    slides = _section(page, "slides")
    assert "openslide.mpp-x" in slides and "0.2527" in slides
    assert "81.25" in slides  # tissue area, mm²
    assert "256 px @ 0.5 µm/px = 507 px L0" in slides
    assert "46,000 × 32,914" in slides
    assert "mpp-x and mpp-y differ by 0.4%" in slides  # preflight warning surfaces
    header = page[: page.index("<main>")]
    assert "builtin (dim 8, fp16, sha256 ffffffffffff…)" in header
    assert "0.5 µm/px, 256 px patches, overlap 0, min tissue 0.5" in header
    assert "2025-01-02 03:04 UTC" in header


def test_cohort_section(page: str) -> None:
    cohort = _section(page, "cohort")
    assert "Cohort: demo" in cohort
    assert "P9" in cohort and "no RNA-seq and no slides" in cohort  # excluded patient
    assert "4321" in cohort and "Pathways kept" in cohort
    assert "(80 in all)" in cohort  # a long list is folded, not dropped
    assert "median follow-up (months)" in cohort
    # Per fold and split, with events joined from patients.csv.
    folds = cohort[cohort.index("<h3>Folds</h3>") :]
    assert '<td>val</td><td class="num">2</td><td class="num">1</td>' in folds
    # Counts by reason are not mistaken for excluded ids.
    assert "no usable slide</td>" not in cohort.split("Patients excluded")[1].split("</table>")[0]


class _StrictParser(HTMLParser):
    """Fails on a closing tag that does not match the open one (void elements aside)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def test_page_parses_as_html(page: str) -> None:
    parser = _StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    assert page.startswith("<!DOCTYPE html>")
    assert parser.tags["section"] == 7 and parser.tags["img"] >= 13


def test_written_atomically(
    run_tree: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report" / "report.html"
    write_report(out, **run_tree)
    first = out.read_text()
    assert first.startswith("<!DOCTYPE html>") and first.rstrip().endswith("</html>")

    # A crash half-way through writing leaves the previous report untouched and no temp file.
    real_write_text = Path.write_text

    def half_then_fail(self: Path, data: str, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(out, **run_tree)
    monkeypatch.undo()
    assert out.read_text() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_missing_inputs_reported_not_crashing(run_tree: dict, tmp_path: Path) -> None:
    args = {**run_tree, "models_dir": tmp_path / "no-models", "cohort_dir": tmp_path / "no-cohort"}
    page = build_report(**args)
    assert "models directory missing" in _section(page, "models")
    assert "cohort directory missing" in _section(page, "cohort")
    assert "tissue output missing" in _section(page, "failures")
    # Without the cohort, the slide it excluded is no longer flagged, but all failures remain.
    failures = _section(page, "failures")
    assert all(f"<b>{s}</b>" in failures for s in ("S3", "S4", "S5"))


def test_broken_records_are_shown(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    args = make_run(root)
    (root / "tiles" / "S1.grid.png").write_bytes(b"not a png")
    (root / "features" / "S2.json").write_text("{truncated")
    # A tiles store whose metadata lost its completion marker.
    (root / "tiles" / "S6.zarr" / "zarr.json").write_text("{}")
    (root / "models" / "snn" / "seed_1" / "summary.json").write_text("[1, 2]")
    page = build_report(**args)
    slides = _section(page, "slides")
    assert "patch grid thumbnail unreadable" in slides or "image unreadable" in slides
    failures = _section(page, "failures")
    assert "<b>S2</b>" in failures and "extraction record unreadable" in failures
    assert "<b>S6</b>" in failures and "tiles store unreadable" in failures
    assert "expected a JSON object" in _section(page, "models")


def test_random_weights_banner(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    args = make_run(root)
    _write_features(root, "S1", 40, random_init=True)
    page = build_report(**args)
    main = page[page.index("<main>") :]
    assert main.index("RANDOM weights") < main.index('id="overview"')


def test_status_table_alone_is_enough(tmp_path: Path) -> None:
    status = tmp_path / "slide_status.tsv"
    status.write_text("slide_id\tstatus\treason\nA\tok\t\nB\tfailed\tfile not found\n")
    page = build_report(status=status)
    assert "file not found" in _section(page, "failures")
    assert "no models directory given" in _section(page, "models")
    parser = _StrictParser()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []


def test_a_section_that_breaks_shows_why(run_tree: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import slotspe_pipe.report as report

    def broken(*args, **kwargs):
        raise KeyError("c_index")

    monkeypatch.setattr(report, "_models_section", broken)
    page = build_report(**run_tree)
    models = _section(page, "models")
    assert "could not be built" in models and "KeyError" in models
    assert html.escape(EXTRACTION_REASON) in _section(page, "failures")  # the rest still renders


def test_status_table_is_required(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="slide status table"):
        build_report(status=tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("slide\tstate\nS1\tok\n")
    with pytest.raises(ValueError, match="column 'slide_id' missing"):
        build_report(status=bad)


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ({"excluded_slides": {"S6": "no label"}}, [("S6", "no label")]),
        (
            {"slides": {"excluded": [{"slide_id": "S6", "reason": "no label"}]}},
            [("S6", "no label")],
        ),
        ({"slides_dropped": {"no label": ["S6", "S7"]}}, [("S6", "no label"), ("S7", "no label")]),
        ({"excluded_slides": ["S6"]}, [("S6", "excluded slides")]),
        ({"excluded_slides": 3, "patients_excluded": {"P1": "x"}}, []),
        ({"slides": {"excluded_by_reason": {"preflight": 2}}}, []),
        ({"folds": {"dropped_slides": ["S6"]}}, [("S6", "folds / dropped slides")]),
    ],
)
def test_cohort_exclusions_any_spelling(summary: dict, expected: list) -> None:
    assert _exclusions(summary, "slide") == expected


def test_exclusion_pairs_from_records() -> None:
    assert _as_pairs([{"case_id": "P1", "why": "no event"}]) == [("P1", "no event")]
    assert _as_pairs([["P1", "no event"]]) == [("P1", "no event")]


def test_html_helpers_escape_and_format() -> None:
    assert h.esc("<b>&") == "&lt;b&gt;&amp;"
    assert h.fmt(None) == "–" and h.fmt(float("nan")) == "–" and h.fmt(True) == "yes"
    assert h.fmt(0.123456) == "0.1235"
    assert h.fmt_fixed("0.5") == "0.500" and h.fmt_fixed("x") == "–"
    cell = h.table(["a"], [[h.Html("<i>x</i>")], ["<i>"]]).markup
    assert "<td><i>x</i></td>" in cell and "<td>&lt;i&gt;</td>" in cell


def test_cli_matches_the_rule(run_tree: dict, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    argv = [
        "report",
        "--cohort-dir",
        str(run_tree["cohort_dir"]),
        "--status",
        str(run_tree["status"]),
    ]
    for flag, key in (
        ("--preflight-dir", "preflight_dir"),
        ("--tissue-dir", "tissue_dir"),
        ("--tiles-dir", "tiles_dir"),
        ("--features-dir", "features_dir"),
        ("--models-dir", "models_dir"),
    ):
        argv += [flag, str(run_tree[key])]
    argv += ["--attention-patients", "1", "-o", str(out)]
    assert cli.main(argv) == 0
    page = out.read_text()
    assert html.escape(EXTRACTION_REASON) in page
    attention = _section(page, "attention")
    assert "patient P1," in attention and "patient P5," not in attention
    assert len(_images(attention)) == 2
