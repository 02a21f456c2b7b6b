"""One SlotSPE training step at the paper's configuration on this CPU: time, samples/s, memory.

Paper configuration: batch 32, 4,096 patches x 1,024-d per patient, 331 pathways whose gene
counts are drawn uniformly in [10, 200] from 4,999 genes, d = 256, 8 slots x 10 iterations,
Adam (``fused=True``: one kernel for 38.5 M parameters; the default foreach Adam adds ~0.25 s per
step on this CPU). A step is forward + loss (with all auxiliary and reconstruction terms) +
backward + optimizer step.

The machine is shared: with other processes running, 2 OpenMP threads stall at every parallel
region and every figure inflates (the load average is printed); ``--threads 1`` is then faster.

Printed figures:
- seconds per step (median of the timed steps) and samples/s;
- peak RSS (ru_maxrss) and its delta over the RSS before the first step (data and weights
  already allocated), i.e. what the step itself needs;
- the ratio to the authors' implementation as stated in the issue (50 s / 18 GB at batch 32,
  10 s / 6 GB at batch 8, same 2-core machine);
- a bound measured in this run: the step's dense-matmul FLOPs (per-patch layers as
  implemented, counted analytically) divided by this machine's measured float32 GEMM rate, and
  how close the step gets to it;
- the per-pathway token networks as one grouped matmul vs the naive loop of 331 nn.Linear
  pairs (forward + backward, same weights), both measured here.

Run:  python benchmarks/bench_train_step.py            (batch 32)
      python benchmarks/bench_train_step.py --batch 8
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slotspe_pipe.model import ModelBatch, build_model

# The authors' implementation on this machine, as given in the issue: (seconds/step, GB peak).
AUTHORS_REFERENCE = {32: (50.0, 18.0), 8: (10.0, 6.0)}


def rss_gb() -> float:
    """Current resident set size in GB (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def make_pathways(rng: np.random.Generator, n_pathways: int, n_genes: int) -> list[np.ndarray]:
    sizes = rng.integers(10, 201, size=n_pathways)
    return [np.sort(rng.choice(n_genes, size=int(s), replace=False)) for s in sizes]


def gemm_gflops(threads_note: str) -> float:
    """Measured float32 GEMM rate (GFLOP/s) on a 16384 x 1024 x 1024 product."""
    a, b = torch.randn(16384, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    rate = 2 * 16384 * 1024 * 1024 / min(times) / 1e9
    print(f"GEMM float32 16384x1024x1024: {rate:.0f} GFLOP/s ({threads_note})")
    return rate


def dense_flops(batch: int, patches: int, wsi_dim: int, cfg) -> float:
    """Analytic FLOPs of the per-patch matmuls of one step (forward + backward), as implemented.

    Backward costs 2x forward for trainable layers whose input needs a gradient, 1x when only
    the weight gradient is needed (first layer on the raw patches; the reconstruction scores,
    whose patch input is detached). Slot-level and pathway-level work is left out (under 2%), so
    this is a lower bound on the work; at the measured GEMM rate it bounds the step time.
    """
    t = batch * patches
    d, hid = cfg.dim, cfg.wsi_hidden
    hs = cfg.slot_heads * cfg.n_slots  # rows of the per-iteration score matrix
    projection = 2 * t * wsi_dim * hid * (1 + 1) + 2 * t * hid * d * (1 + 2)
    # per iteration: scores [hs, d] x [d, N] and means [hs, N] x [N, d], each 3x with backward
    slot_module = cfg.slot_iters * 2 * (2 * t * hs * d) * 3
    recon_heads = cfg.recon_heads * cfg.n_slots
    recon = 2 * t * d * recon_heads * 2 + 2 * t * recon_heads * d * 3 + 2 * (2 * t * d * d) * 3
    return float(projection + 2 * slot_module + recon)  # WSI module + omics module on patches


def bench_pathway_tokens(model, batch: int, omics: torch.Tensor) -> None:
    """Grouped per-pathway SNN vs the naive loop of nn.Linear pairs (forward + backward)."""
    snn = model.pathway_snn
    sizes = snn.sizes.tolist()
    loops = []
    for p, (start, n_p) in enumerate(zip(snn.offsets.tolist(), sizes, strict=True)):
        lin1, lin2 = nn.Linear(n_p, snn.dim), nn.Linear(snn.dim, snn.dim)
        with torch.no_grad():
            lin1.weight.copy_(snn.w1[start : start + n_p].T)
            lin1.bias.copy_(snn.b1[p])
            lin2.weight.copy_(snn.w2[p].T)
            lin2.bias.copy_(snn.b2[p])
        loops.append(
            nn.Sequential(
                lin1, nn.ELU(), nn.AlphaDropout(0.25), lin2, nn.ELU(), nn.AlphaDropout(0.25)
            )
        )
    gene_lists = [
        torch.from_numpy(idx[:n]) for idx, n in zip(snn.gene_index.numpy(), sizes, strict=True)
    ]

    def naive() -> torch.Tensor:
        return torch.stack([net(omics[:, g]) for net, g in zip(loops, gene_lists, strict=True)], 1)

    def grouped() -> torch.Tensor:
        return snn(omics)

    snn.eval()
    for net in loops:
        net.eval()
    with torch.no_grad():
        diff = (naive() - grouped()).abs().max().item()
    snn.train()
    for net in loops:
        net.train()
    results = {}
    for label, fn in (("naive loop", naive), ("grouped", grouped)):
        fn().sum().backward()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn().sum().backward()
            times.append(time.perf_counter() - t0)
        results[label] = min(times)
    print(
        f"pathway tokens fwd+bwd ({len(sizes)} pathways, batch {batch}): naive loop "
        f"{results['naive loop'] * 1e3:.0f} ms, grouped {results['grouped'] * 1e3:.0f} ms "
        f"({results['naive loop'] / results['grouped']:.1f}x); max |difference| in eval mode "
        f"{diff:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--patches", type=int, default=4096)
    parser.add_argument("--wsi-dim", type=int, default=1024)
    parser.add_argument("--pathways", type=int, default=331)
    parser.add_argument("--genes", type=int, default=4999)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
        f"{args.patches} patches x {args.wsi_dim}-d, {args.pathways} pathways over "
        f"{args.genes} genes"
    )
    pathways = make_pathways(rng, args.pathways, args.genes)
    model = build_model(
        "slotspe", wsi_dim=args.wsi_dim, pathways=pathways, n_genes=args.genes, n_bins=4
    )
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, fused=True)
    n_params = sum(p.numel() for p in model.parameters())
    batch = ModelBatch(
        wsi=torch.randn(args.batch, args.patches, args.wsi_dim),
        wsi_mask=torch.ones(args.batch, args.patches, dtype=torch.bool),
        omics=torch.randn(args.batch, args.genes),
        omics_present=torch.ones(args.batch, dtype=torch.bool),
    )
    bin_index = torch.from_numpy(rng.integers(0, 4, size=args.batch))
    event = torch.from_numpy(rng.integers(0, 2, size=args.batch))
    print(
        f"parameters: {n_params / 1e6:.1f} M; pathway sizes {min(map(len, pathways))}-"
        f"{max(map(len, pathways))} (mean {np.mean([len(p) for p in pathways]):.0f})"
    )

    def step() -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        loss, parts = model.loss(out, bin_index, event)
        loss.backward()
        optimizer.step()
        return parts

    base_rss = rss_gb()
    t0 = time.perf_counter()
    parts = step()  # warm-up: allocates Adam state and first-touch pages
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        parts = step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_gb()
    sec = statistics.median(times)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"warm-up step {warm:.2f} s; timed steps: {', '.join(f'{t:.2f}' for t in times)} s")
    print("loss parts: " + ", ".join(f"{k}={v:.4f}" for k, v in parts.items()))
    print(
        f"seconds/step: {sec:.2f} (median; best {min(times):.2f})   samples/s: "
        f"{args.batch / sec:.2f}   [load average now {load} on {os.cpu_count()} CPUs: other "
        f"processes slow every figure here]"
    )
    print(
        f"peak RSS: {peak:.2f} GB   RSS before first step: {base_rss:.2f} GB   "
        f"step delta: {peak - base_rss:.2f} GB"
    )

    rate = gemm_gflops(f"{torch.get_num_threads()} threads")
    flops = dense_flops(args.batch, args.patches, args.wsi_dim, model.config)
    bound = flops / (rate * 1e9)
    print(
        f"dense-matmul work {flops / 1e12:.2f} TFLOP -> bound {bound:.2f} s at the measured "
        f"GEMM rate; step / bound = {sec / bound:.2f}"
    )
    if args.batch in AUTHORS_REFERENCE and args.patches == 4096:
        ref_s, ref_gb = AUTHORS_REFERENCE[args.batch]
        print(
            f"vs authors' implementation (stated: {ref_s:.0f} s, {ref_gb:.0f} GB at batch "
            f"{args.batch}): {ref_s / sec:.2f}x faster, peak memory {peak / ref_gb:.2f}x "
            f"(target: >= 2x faster, <= 0.5x memory)"
        )
    bench_pathway_tokens(model, args.batch, batch.omics)


if __name__ == "__main__":
    main()
