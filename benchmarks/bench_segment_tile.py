"""Segment + tile of a 40,000 x 30,000 px 40x slide on one CPU core, against reading its
lowest pyramid level.

Writes a synthetic Aperio-style slide (0.25 µm/px, 40x, levels 1/4/16/64; generation is not
timed) into a temporary directory, then, in this one process pinned to one core with OpenCV and
BLAS threads set to 1, times per repeat (fresh slide handle each time, so no tile cache helps):

  (a) open + read the lowest pyramid level in full          (the reference: least I/O possible)
  (b) open + segment (default preset) + write the tissue dir
      + tile (0.5 µm/px, 256 px) + write the tiles store     (the per-slide work of two stages)

and prints the medians (wall and CPU time: on a shared machine the CPU time is the honest "one
core" figure), the ratio (b)/(a) and the split of (b). Target: (b) < 1 s of one core.

Run: python benchmarks/bench_segment_tile.py [--width 40000 --height 30000 --repeats 5]
"""

from __future__ import annotations

import os

# One core means one thread everywhere: set before numpy/OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from slotspe_pipe.slides import Slide  # noqa: E402
from slotspe_pipe.synthetic import write_synthetic_slide  # noqa: E402
from slotspe_pipe.tiling import tile_slide, write_tile_store  # noqa: E402
from slotspe_pipe.tissue import segment_slide, write_tissue_dir  # noqa: E402

TARGET_S = 1.0


def read_lowest_level(path: Path) -> tuple[float, float]:
    """(wall s, CPU s) to open the slide and read its lowest level in full."""
    start, cpu = time.perf_counter(), time.process_time()
    with Slide(path) as slide:
        level = slide.level_count - 1
        w, h = slide.level_dimensions[level]
        slide.read_region(0, 0, level, w, h)
    return time.perf_counter() - start, time.process_time() - cpu


def segment_and_tile(path: Path, out: Path, rep: int) -> dict[str, float]:
    cpu = time.process_time()
    t = {"start": time.perf_counter()}
    with Slide(path) as slide:
        t["open"] = time.perf_counter()
        tissue = segment_slide(slide)
        t["segment"] = time.perf_counter()
        write_tissue_dir(tissue, out / f"tissue-{rep}", slide)
        t["write tissue dir"] = time.perf_counter()
        coords, fractions, attrs = tile_slide(slide, tissue, 0.5, 256)
        t["tile"] = time.perf_counter()
        write_tile_store(out / f"tiles-{rep}.zarr", coords, fractions, attrs)
        t["write tiles store"] = time.perf_counter()
    keys = list(t)
    split = {k: t[k] - t[prev] for prev, k in zip(keys, keys[1:], strict=False)}
    split["total"] = t[keys[-1]] - t["start"]
    split["cpu"] = time.process_time() - cpu
    split["n_patches"] = len(coords)
    split["tissue_area_mm2"] = tissue.tissue_area_mm2
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=40_000)
    parser.add_argument("--height", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="bench_segment_tile_") as tmp:
        root = Path(tmp)
        slide_path = root / "synthetic-40x.svs"
        started = time.perf_counter()
        truth = write_synthetic_slide(
            slide_path, args.width, args.height, mpp=0.25, objective_power=40, pen_mark=True
        )
        print(
            f"slide: {args.width} x {args.height} px, 0.25 µm/px (40x), levels "
            f"{list(truth.level_dimensions)}, {slide_path.stat().st_size / 1e6:.0f} MB, "
            f"true tissue {truth.tissue_area_mm2:.2f} mm² (generated in "
            f"{time.perf_counter() - started:.1f} s, not timed)"
        )
        # Warm-up: imports, the OS file cache and first-call costs count for neither side.
        read_lowest_level(slide_path)
        segment_and_tile(slide_path, root, -1)

        reads, runs = [], []
        for rep in range(args.repeats):
            reads.append(read_lowest_level(slide_path))
            runs.append(segment_and_tile(slide_path, root, rep))
        read_s = statistics.median(r[0] for r in reads)
        read_cpu = statistics.median(r[1] for r in reads)
        total_s = statistics.median(r["total"] for r in runs)
        total_cpu = statistics.median(r["cpu"] for r in runs)
        print(f"cores: 1 (affinity {sorted(os.sched_getaffinity(0))}), repeats: {args.repeats}")
        print(f"(a) open + read lowest level fully: {read_s:.4f} s wall, {read_cpu:.4f} s CPU")
        print(
            f"(b) open + segment + write tissue + tile + write store: {total_s:.4f} s wall, "
            f"{total_cpu:.4f} s CPU -> {'OK' if total_cpu < TARGET_S else 'OVER'} target "
            f"{TARGET_S:.1f} s of one core"
        )
        print(f"ratio (b)/(a): {total_s / read_s:.1f}x wall, {total_cpu / read_cpu:.1f}x CPU")
        print("split of (b), wall (medians):")
        for key in ("open", "segment", "write tissue dir", "tile", "write tiles store"):
            print(f"    {key:<18} {statistics.median(r[key] for r in runs):.4f} s")
        last = runs[-1]
        print(
            f"result: {last['tissue_area_mm2']:.2f} mm² tissue found "
            f"(truth {truth.tissue_area_mm2:.2f}), {last['n_patches']} patches"
        )


if __name__ == "__main__":
    main()
