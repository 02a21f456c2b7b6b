"""GPU extraction throughput: UNI architecture (random weights), bf16, on one H100/H200.

Prints, all measured in this run on the same GPU, model and batch size:
- model only: the encoder module on a pre-made uint8 batch already on the GPU (normalisation on
  the device included, as in the pipeline), before and after the end-to-end run;
- loader only: the patch loader's patches/s (read + cut + resize + copy into pinned memory);
- end to end: ``extract_features`` over a synthetic 20x slide (extraction loop after the model
  is built, and the whole call);
- the ratio end to end / model only. Goals: >= 3,000 patches/s end to end, ratio >= 0.9.

Self-contained and unattended (< 5 minutes): it writes its own synthetic slide (pyramidal JPEG
TIFF, 0.5 µm/px) into a temporary directory, tiles it (256 px patches over the ground-truth
tissue, stride 128 px) and never downloads anything. ``--device cpu --tiny`` runs the same code
path in seconds on a CPU (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract_cpu import make_slide_and_tiles, subset_tiles  # noqa: E402

GOAL_PATCHES_PER_S = 3000.0
GOAL_RATIO = 0.9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--encoder", default="uni")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, help="loader processes (default: pipeline default)")
    parser.add_argument("--size", type=int, default=40960, help="slide side in level-0 px")
    parser.add_argument("--stride", type=int, default=128, help="grid stride in level-0 px")
    parser.add_argument("--model-iters", type=int, default=30)
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (for a CPU run)")
    parser.add_argument("--workdir", help="keep files here instead of a temporary directory")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.stride, args.batch_size, args.model_iters = 2048, 256, 4, 2

    import torch

    from slotspe_pipe.encoders import build_encoder, get_encoder
    from slotspe_pipe.extract import TorchBatchRunner, _default_workers, extract_features
    from slotspe_pipe.patch_loader import PatchGeometry, PatchLoader, plan_regions
    from slotspe_pipe.store.tiles import read_tiles

    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device visible; use --device cpu --tiny for a smoke run")
        return 2
    spec = get_encoder(args.encoder)
    workers = args.workers or _default_workers(spec, args.device)
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"device {args.device} ({gpu}); torch {torch.__version__}; CPU cores {os.cpu_count()}")
    print(
        f"encoder {spec.name} ({spec.timm_name}, {spec.embed_dim}-d, {spec.precision}); batch {args.batch_size}; loader workers {workers}"
    )
    figures: dict[str, float | int | str] = {
        "gpu": gpu,
        "encoder": spec.name,
        "batch": args.batch_size,
        "workers": workers,
    }

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        slide, tiles, coords = make_slide_and_tiles(
            workdir,
            args.size,
            args.size,
            mpp=0.5,
            objective_power=20,
            patch_px_level0=256,
            patch_px=spec.input_size,
            stride_px_level0=args.stride,
        )
        if args.tiny:
            tiles = subset_tiles(tiles, 16, workdir / "tiny.tiles.zarr")
            coords = coords[:16]
        n = len(coords)
        print(
            f"  tiles: {n} patches of 256 px at 0.5 µm/px, stride {args.stride} px -> {spec.input_size} px"
        )
        figures["patches"] = n

        # Model only, on real patches already on the device.
        module, _ = build_encoder(spec, allow_random=True, device=args.device)
        geometry = PatchGeometry(256, 0, 1.0, 256, spec.input_size)
        jobs = plan_regions(coords, geometry, stride_px_level0=args.stride)
        with PatchLoader(slide, jobs[:4], geometry, workers=0) as loader:
            sample = np.concatenate([item.data.copy() for item in loader])
        batch = torch.from_numpy(
            np.ascontiguousarray(sample[np.resize(np.arange(len(sample)), args.batch_size)])
        )
        batch = batch.to(args.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)

        def model_only() -> float:
            with (
                torch.inference_mode(),
                torch.autocast("cuda", dtype=dtype, enabled=cuda and dtype is not None),
            ):
                for _ in range(3):
                    module(batch)
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.model_iters):
                    out = module(batch).to(torch.float16)
                out.cpu()
                return args.model_iters * args.batch_size / (time.perf_counter() - t0)

        before = model_only()
        print(f"  model only: {before:10.1f} patches/s")
        del module
        if cuda:
            torch.cuda.empty_cache()

        # Loader only: everything but the model (the same staging copy as the pipeline).
        tjobs = plan_regions(read_tiles(tiles).coords, geometry, stride_px_level0=args.stride)
        staging = TorchBatchRunner(
            torch.nn.Identity(), spec, n, args.batch_size, spec.input_size, "cpu"
        )
        t0 = time.perf_counter()
        with PatchLoader(slide, tjobs, geometry, workers=workers) as loader:
            for item in loader:
                view = staging._views[0]
                k = min(item.job.n, args.batch_size)
                view[:k] = item.data[:k]
        loader_rate = n / (time.perf_counter() - t0)
        print(
            f"  loader only: {loader_rate:9.1f} patches/s (read + resize + copy, {workers} workers)"
        )

        # End to end.
        t0 = time.perf_counter()
        result = extract_features(
            slide,
            tiles,
            workdir / "feats.zarr",
            spec.name,
            allow_random=True,
            device=args.device,
            batch_size=args.batch_size,
            workers=workers,
            overwrite=True,
            progress=False,
        )
        wall = time.perf_counter() - t0
        print(
            f"  end to end: {result.patches_per_s:10.1f} patches/s (extraction loop); {n / wall:.1f} patches/s whole call ({wall:.1f} s)"
        )

        module, _ = build_encoder(spec, allow_random=True, device=args.device)
        after = model_only()
        print(f"  model only again: {after:4.1f} patches/s")
    model = (before + after) / 2
    ratio = result.patches_per_s / model
    figures.update(
        model_only_before=round(before, 1),
        model_only_after=round(after, 1),
        loader_only=round(loader_rate, 1),
        end_to_end_loop=result.patches_per_s,
        end_to_end_whole_call=round(n / wall, 1),
        ratio_end_to_end_over_model=round(ratio, 3),
        read_route=str(result.read_route),
        seconds_total=round(time.perf_counter() - started, 1),
    )
    print("\nsummary")
    for key, value in figures.items():
        print(f"  {key:30s} {value}")
    ok_rate = result.patches_per_s >= GOAL_PATCHES_PER_S
    ok_ratio = ratio >= GOAL_RATIO
    print(
        f"  goal end to end >= {GOAL_PATCHES_PER_S:.0f} patches/s: {'met' if ok_rate else 'NOT met'}; "
        f"goal ratio >= {GOAL_RATIO}: {'met' if ok_ratio else 'NOT met'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
