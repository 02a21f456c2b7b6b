"""Feature-extraction throughput on this CPU, each figure against a bound measured in the same run.

1. Read path alone (read + resize + normalise, no model) on a synthetic 40x slide, 512 px level-0
   patches resized to 224: our loader vs one ``Slide.read_region`` per patch. Goal >= 3x.
2. End to end vs model only: ResNet50-trunc (random weights), same batch, same process:
   ``extract_features`` patches/s over the model's patches/s on pre-made tensors. Goal >= 0.95
   (CLAM's extractor reaches ~0.88 of its model-only bound on this configuration).
3. The weights-free ``builtin`` descriptor: one core on pre-read 224 px patches (target > 500/s),
   and end to end with every core.

Run: ``python benchmarks/bench_extract_cpu.py`` (about 3-4 minutes on 2 cores); ``--quick`` for a
smoke run. It writes its synthetic slide into a temporary directory and prints every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import shapely

from slotspe_pipe.patch_loader import PatchGeometry, PatchLoader, plan_regions
from slotspe_pipe.slides import Slide
from slotspe_pipe.store.tiles import write_tiles
from slotspe_pipe.synthetic import write_synthetic_slide

CLAM_REFERENCE_RATIO = 0.88


def make_slide_and_tiles(
    workdir: Path,
    width: int,
    height: int,
    *,
    mpp: float,
    objective_power: float,
    patch_px_level0: int,
    patch_px: int,
    stride_px_level0: int | None = None,
    min_tissue: float = 0.5,
    seed: int = 0,
) -> tuple[Path, Path, np.ndarray]:
    """Synthetic slide + a tiles store of the patches with >= ``min_tissue`` tissue (row-major)."""
    slide_path = workdir / f"synthetic_{width}x{height}_{mpp:g}.svs"
    t0 = time.perf_counter()
    truth = write_synthetic_slide(
        slide_path, width, height, mpp=mpp, objective_power=objective_power, seed=seed
    )
    print(
        f"  synthetic slide {width}x{height} px at {mpp} µm/px written in {time.perf_counter() - t0:.1f} s"
    )
    stride = stride_px_level0 or patch_px_level0
    xs = np.arange(0, width - patch_px_level0 + 1, stride)
    ys = np.arange(0, height - patch_px_level0 + 1, stride)
    gx, gy = np.meshgrid(xs, ys)
    boxes = shapely.box(
        gx.ravel(), gy.ravel(), gx.ravel() + patch_px_level0, gy.ravel() + patch_px_level0
    )
    frac = shapely.area(shapely.intersection(boxes, truth.tissue)) / float(patch_px_level0**2)
    keep = frac >= min_tissue
    coords = np.stack([gx.ravel()[keep], gy.ravel()[keep]], axis=1).astype(np.int32)
    with Slide(slide_path) as slide:
        level = slide.best_level_for_downsample(patch_px_level0 / patch_px)
        ds = slide.level_downsamples[level]
        reader, source = slide.info.reader, slide.info.mpp_source
    read_px = round(patch_px_level0 / ds)
    attrs = {
        "slide_id": slide_path.stem,
        "slide_path": str(slide_path),
        "reader": reader,
        "mpp": mpp,
        "mpp_source": source,
        "target_mpp": mpp * patch_px_level0 / patch_px,
        "patch_px": patch_px,
        "patch_px_level0": patch_px_level0,
        "stride_px_level0": stride,
        "read_level": level,
        "read_downsample": ds,
        "read_px": read_px,
        "resize": patch_px / read_px,
        "overlap": int(round((patch_px_level0 - stride) * patch_px / patch_px_level0)),
        "min_tissue": min_tissue,
        "level0_dimensions": [width, height],
        "segmentation": {"method": "synthetic ground truth"},
        "settings_hash": f"bench-{width}-{height}-{patch_px_level0}-{stride}",
    }
    tiles = workdir / f"{slide_path.stem}.tiles.zarr"
    write_tiles(tiles, coords, frac[keep], attrs)
    return slide_path, tiles, coords


def subset_tiles(tiles: Path, n: int, out: Path, start: int = 0) -> Path:
    """A tiles store of rows ``start .. start + n`` of ``tiles`` (same settings otherwise)."""
    from slotspe_pipe.store.tiles import read_tiles

    t = read_tiles(tiles)
    attrs = {**t.attrs, "settings_hash": f"{t.attrs['settings_hash']}-rows{start}+{n}"}
    for key in ("n_patches", "slotspe_store", "package_version"):
        attrs.pop(key, None)
    rows = slice(start, start + n)
    write_tiles(out, t.coords[rows], t.tissue_fraction[rows], attrs)
    return out


_MEAN = (np.array([0.485, 0.456, 0.406]) * 255).astype(np.float32)
_INV_STD = (1 / (np.array([0.229, 0.224, 0.225]) * 255)).astype(np.float32)


def _normalise(patches: np.ndarray) -> np.ndarray:
    """The arithmetic of PatchEncoder.forward (uint8 -> (x - mean) / std, NCHW), in numpy on one
    thread: torch's thread pool makes tiny per-patch ops erratic on a busy machine, and the
    point here is the read path, identical for both sides."""
    return ((patches.astype(np.float32) - _MEAN) * _INV_STD).transpose(0, 3, 1, 2)


def bench_read_path(slide: Path, coords: np.ndarray, workers: int, stride: int) -> dict[str, float]:
    size0, out = 512, 224
    out_rates: dict[str, float] = {}
    with Slide(slide) as s:
        s.read_region(int(coords[0, 0]), int(coords[0, 1]), 0, size0, size0)  # open caches
        t0 = time.perf_counter()
        for x, y in coords.tolist():
            patch = s.read_region(x, y, 0, size0, size0)
            _normalise(cv2.resize(patch, (out, out), interpolation=cv2.INTER_AREA)[None])
        out_rates["one read_region per patch"] = len(coords) / (time.perf_counter() - t0)

    geometry = PatchGeometry(size0, 0, 1.0, size0, out)
    jobs = plan_regions(coords, geometry, stride_px_level0=stride)
    for label, w, direct in (
        ("loader, in process, Slide.read_region regions", 0, False),
        ("loader, in process, direct tile decode", 0, True),
        ("loader, 1 worker process", 1, True),
        (f"loader, {workers} worker processes", workers, True),
    ):
        t0 = time.perf_counter()
        first_at, first_n = 0.0, 0
        # niceness 0: the pipeline lowers its readers' priority so a model comes first; with no
        # model here that would only measure the other users of a shared machine.
        with PatchLoader(
            slide, jobs, geometry, workers=w, direct_tiff=direct, niceness=0
        ) as loader:
            for item in loader:
                _normalise(item.data)
                if not first_n:
                    first_at, first_n = time.perf_counter(), item.job.n
        end = time.perf_counter()
        out_rates[label] = len(coords) / (end - t0)
        if w:  # workers start once per slide: show the rate once they are up, too
            out_rates[f"{label}, after start-up ({first_at - t0:.2f} s)"] = (
                len(coords) - first_n
            ) / (end - first_at)
    return out_rates


def bench_model_vs_e2e(
    slide: Path,
    tiles: Path,
    workdir: Path,
    n_patches: int,
    batch: int,
    rounds: int,
    sample: np.ndarray,
) -> dict[str, float]:
    """Alternate model-only and end-to-end runs of equal length; each end-to-end rate is
    compared with the mean of the model-only runs just before and after it (the machine's load
    drifts on a scale of seconds), and the median ratio is reported."""
    import torch
    from safetensors.torch import save_file

    from slotspe_pipe.encoders import build_encoder
    from slotspe_pipe.extract import extract_features
    from slotspe_pipe.store.tiles import read_tiles

    torch.manual_seed(0)
    module, _ = build_encoder("resnet50-trunc", allow_random=True)
    weights = workdir / "resnet50_trunc_random.safetensors"
    save_file({k: v.contiguous() for k, v in module.backbone.state_dict().items()}, str(weights))
    x = torch.from_numpy(np.ascontiguousarray(sample[np.resize(np.arange(len(sample)), batch)]))
    n_batches = max(1, n_patches // batch)

    def model_only() -> float:
        with torch.inference_mode():
            module(x)  # warm-up
            t0 = time.perf_counter()
            for _ in range(n_batches):
                module(x)
            return n_batches * batch / (time.perf_counter() - t0)

    all_coords = read_tiles(tiles).coords
    models = [model_only()]
    loops, walls = [], []
    for r in range(rounds):
        sub = workdir / f"e2e{r}.tiles.zarr"
        lo = (r * n_patches) % max(1, len(all_coords) - n_patches)
        subset_tiles(tiles, n_patches, sub, start=lo)
        t0 = time.perf_counter()
        result = extract_features(
            slide,
            sub,
            workdir / f"e2e{r}.feats.zarr",
            "resnet50-trunc",
            weights=weights,
            batch_size=batch,
            overwrite=True,
            progress=False,
        )
        walls.append(result.n_patches / (time.perf_counter() - t0))
        loops.append(result.patches_per_s)
        models.append(model_only())
    ratios = [loops[i] / ((models[i] + models[i + 1]) / 2) for i in range(rounds)]
    whole = [walls[i] / ((models[i] + models[i + 1]) / 2) for i in range(rounds)]
    figures: dict[str, float] = {}
    for i in range(rounds):
        figures[f"round {i + 1}: model only before / after"] = (models[i], models[i + 1])  # type: ignore[assignment]
        figures[f"round {i + 1}: end to end loop, whole call"] = (loops[i], walls[i])  # type: ignore[assignment]
        figures[f"round {i + 1}: ratio loop / model"] = ratios[i]
    figures["median ratio loop / model"] = float(np.median(ratios))
    figures["median ratio whole call / model"] = float(np.median(whole))
    figures["patches per round"] = n_batches * batch
    figures["batch"] = batch
    figures["torch threads"] = torch.get_num_threads()
    return figures


def bench_builtin(slide: Path, tiles: Path, workdir: Path, sample: np.ndarray) -> dict[str, float]:
    from slotspe_pipe.builtin_encoder import describe
    from slotspe_pipe.extract import extract_features

    cv2.setNumThreads(1)
    describe(sample[:4], 0.571)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        describe(sample, 0.571)
    one_core = reps * len(sample) / (time.perf_counter() - t0)
    cv2.setNumThreads(-1)
    t0 = time.perf_counter()
    result = extract_features(
        slide, tiles, workdir / "builtin.feats.zarr", "builtin", overwrite=True, progress=False
    )
    wall = time.perf_counter() - t0
    return {
        "describe() on one core, 224 px patches": one_core,
        f"end to end, {result.n_patches} patches, loop": result.patches_per_s,
        "end to end, whole call": result.n_patches / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--workdir", help="keep files here instead of a temporary directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--e2e-patches", type=int, default=192, help="patches per end-to-end round")
    parser.add_argument("--rounds", type=int, default=5, help="end-to-end rounds")
    parser.add_argument("--read-patches", type=int, default=800)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.e2e_patches, args.read_patches, args.rounds = 4, 8, 24, 1
    size = (4096, 4096) if args.quick else (16384, 12288)
    workers = os.cpu_count() or 1
    print(f"CPU: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        stride = 256  # half-overlapping grid: more patches from a slide that is quick to write
        slide, tiles, coords = make_slide_and_tiles(
            workdir,
            *size,
            mpp=0.25,
            objective_power=40,
            patch_px_level0=512,
            patch_px=224,
            stride_px_level0=stride,
        )
        print(
            f"  tiles: {len(coords)} patches of 512 px at level 0 (40x), stride {stride} -> 224 px"
        )
        figures: dict[str, dict[str, float]] = {}

        print("\n[1] read path alone: read + resize 512->224 + normalise, no model")
        read_coords = coords[: args.read_patches]
        figures["read_path"] = rp = bench_read_path(slide, read_coords, workers, stride)
        base = rp["one read_region per patch"]
        for k, v in rp.items():
            print(f"  {k:58s} {v:8.1f} patches/s  ({v / base:4.2f}x)")
        whole = rp[f"loader, {workers} worker processes"]
        print(
            f"  => loader with {workers} workers / one read_region per patch = {whole / base:.2f}x "
            "with worker start-up, per slide (goal >= 3x)"
        )

        sample_jobs = plan_regions(coords[:64], PatchGeometry(512, 0, 1.0, 512, 224))
        with PatchLoader(
            slide, sample_jobs, PatchGeometry(512, 0, 1.0, 512, 224), workers=0
        ) as loader:
            sample = np.concatenate([item.data.copy() for item in loader])

        print(
            f"\n[2] ResNet50-trunc, batch {args.batch_size}: end to end vs model only (same process)"
        )
        figures["resnet50_trunc"] = me = bench_model_vs_e2e(
            slide, tiles, workdir, args.e2e_patches, args.batch_size, args.rounds, sample
        )
        for k, v in me.items():
            shown = ", ".join(f"{u:.2f}" for u in v) if isinstance(v, tuple) else f"{v:.3f}"
            print(f"  {k:58s} {shown}")
        print(
            f"  => end to end / model only = {me['median ratio loop / model']:.3f} (goal >= 0.95; "
            f"CLAM's extractor ~{CLAM_REFERENCE_RATIO} on this configuration)"
        )

        print("\n[3] builtin descriptor (no weights, no torch)")
        figures["builtin"] = bi = bench_builtin(slide, tiles, workdir, sample)
        for k, v in bi.items():
            print(f"  {k:58s} {v:8.1f} patches/s")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
