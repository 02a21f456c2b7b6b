"""One SlotSPE training step at the paper's configuration on this CPU: time, samples/s, memory.

Paper configuration: batch 32, 4,096 patches x 1,024-d per patient, 331 pathways whose gene
counts are drawn uniformly in [10, 200] from 4,999 genes, d = 256, 8 slots x 10 iterations,
Adam. A step is forward + loss + backward + optimizer step.

Printed figures:
- seconds per step (median of the timed steps) and samples/s;
- peak RSS (ru_maxrss) and its delta over the RSS before the first step (data and weights
  already allocated), i.e. what the step itself needs;
- the ratio to the authors' implementation as stated in the issue (50 s / 18 GB at batch 32,
  10 s / 6 GB at batch 8, same 2-core machine);
- a bound measured in this run: the step's dense-matmul FLOPs (token-wise layers, counted
  analytically) divided by this machine's measured float32 GEMM rate, and how close the step
  gets to it;
- the per-pathway token networks as one grouped matmul vs the naive loop of 331 nn.Linear
  pairs (forward + backward, same weights), both measured here.

Run:  python benchmarks/bench_train_step.py            (batch 32)
      python benchmarks/bench_train_step.py --batch 8
"""

from __future__ import annotations

import argparse
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
    """Analytic FLOPs of the token-wise matmuls of one step (forward + backward).

    Backward costs 2x forward for trainable layers whose input needs a gradient, 1x when only
    the weight gradient is needed (first layer on the raw patches), 0 for the frozen query map.
    Slot-level and pathway-level work (tiny in comparison) is left out, so this is a lower bound.
    """
    t = batch * patches
    d, hid, inner = cfg.dim, cfg.wsi_hidden, cfg.slot_heads * cfg.slot_head_dim
    s, iters = cfg.n_slots, cfg.slot_iters
    first = 2 * t * wsi_dim * hid * (1 + 1)
    second = 2 * t * hid * d * (1 + 2)
    kv = 2 * (2 * t * d * inner) * 3  # k and v, one slot module
    slot_loop = iters * 2 * (2 * t * s * inner) * 3  # scores and weighted means
    slot_modules = 2 * (kv + slot_loop)  # WSI module + omics module on WSI tokens (joint path)
    frozen_query = 2 * t * d * d
    recon = 4 * (2 * t * d * d) * 3 + 2 * (2 * t * s * d) * 3  # q, out, 2 MLP; attention
    return float(first + second + slot_modules + frozen_query + recon)


def bench_pathway_tokens(model, batch: int, omics: torch.Tensor) -> None:
    """Grouped per-pathway SNN vs the naive loop of nn.Linear pairs (forward + backward)."""
    snn = model.pathway_snn
    sizes = snn.sizes.tolist()
    loops = []
    for p, n_p in enumerate(sizes):
        lin1, lin2 = nn.Linear(n_p, snn.dim), nn.Linear(snn.dim, snn.dim)
        with torch.no_grad():
            lin1.weight.copy_(snn.w1[p, :n_p].T)
            lin1.bias.copy_(snn.b1[p])
            lin2.weight.copy_(snn.w2[p].T)
            lin2.bias.copy_(snn.b2[p])
        loops.append(
            nn.Sequential(lin1, nn.ELU(), nn.AlphaDropout(0.25), lin2, nn.ELU(), nn.AlphaDropout(0.25))
        )
    gene_lists = [torch.from_numpy(idx[:n]) for idx, n in zip(snn.gene_index.numpy(), sizes, strict=True)]

    def naive() -> torch.Tensor:
        return torch.stack([net(omics[:, g]) for net, g in zip(loops, gene_lists, strict=True)], 1)

    def grouped() -> torch.Tensor:
        return snn(omics)

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
        f"({results['naive loop'] / results['grouped']:.1f}x)"
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
    args = parser.parse_args()

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
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    n_params = sum(p.numel() for p in model.parameters())
    batch = ModelBatch(
        wsi=torch.randn(args.batch, args.patches, args.wsi_dim),
        wsi_mask=torch.ones(args.batch, args.patches, dtype=torch.bool),
        omics=torch.randn(args.batch, args.genes),
        omics_present=torch.ones(args.batch, dtype=torch.bool),
    )
    bin_index = torch.from_numpy(rng.integers(0, 4, size=args.batch))
    event = torch.from_numpy(rng.integers(0, 2, size=args.batch))
    print(f"parameters: {n_params / 1e6:.1f} M; pathway sizes {min(map(len, pathways))}-"
          f"{max(map(len, pathways))} (mean {np.mean([len(p) for p in pathways]):.0f})")

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
    print(f"warm-up step {warm:.2f} s; timed steps: {', '.join(f'{t:.2f}' for t in times)} s")
    print(f"loss parts: " + ", ".join(f"{k}={v:.4f}" for k, v in parts.items()))
    print(f"seconds/step: {sec:.2f}   samples/s: {args.batch / sec:.2f}")
    print(f"peak RSS: {peak:.2f} GB   RSS before first step: {base_rss:.2f} GB   "
          f"step delta: {peak - base_rss:.2f} GB")

    rate = gemm_gflops(f"{torch.get_num_threads()} threads")
    flops = dense_flops(args.batch, args.patches, args.wsi_dim, model.config)
    bound = flops / (rate * 1e9)
    print(f"dense-matmul work {flops / 1e12:.2f} TFLOP -> bound {bound:.2f} s at the measured "
          f"GEMM rate; step / bound = {sec / bound:.2f}")
    if args.batch in AUTHORS_REFERENCE and args.patches == 4096:
        ref_s, ref_gb = AUTHORS_REFERENCE[args.batch]
        print(f"vs authors' implementation (stated: {ref_s:.0f} s, {ref_gb:.0f} GB at batch "
              f"{args.batch}): {ref_s / sec:.2f}x faster, peak memory {peak / ref_gb:.2f}x "
              f"(target: >= 2x faster, <= 0.5x memory)")
    bench_pathway_tokens(model, args.batch, batch.omics)


if __name__ == "__main__":
    main()
