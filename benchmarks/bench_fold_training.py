"""How long does one cross-validation fold of SlotSPE take on this machine?

Writes a synthetic cohort through the real stores (``store.features.write_features``: one slide
of ``--patches`` x ``--dim`` float16 features per patient; synthetic RNA over 50 pathways), builds
it with the cohort builder (5 generated folds, so fold 0 trains on 80 % of ``--patients``: 625
patients -> a 500-patient training fold), then trains fold 0 with the default SlotSPE config
through ``train.run_fold`` - the code path of ``slotspe-pipe cv`` - and prints:

- seconds per epoch (training pass, and with the per-epoch validation C-index), patients/s, the
  whole fold (training + final evaluation + outputs) and the projection to ``--full-epochs``;
- two references measured in the same run: the pure model step on in-memory tensors of the same
  shape (no I/O: the compute bound), and a pass of the lazy patch reader alone (the I/O cost),
  each as a ratio against the measured epoch;
- peak resident memory against the size of the feature stores (memory must not grow with them).

Usage: python benchmarks/bench_fold_training.py [--patients 625] [--patches 512] [--dim 1024]
       [--epochs 1] [--workers 1] [--device cpu] [--cpu-amp] [--threads N]
       [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_synthetic_cohort(root: Path, n_patients: int, patches: int, dim: int, seed: int) -> Path:
    """Feature stores, clinical table, RNA and gene sets -> a cohort directory."""
    from tqdm import tqdm

    from slotspe_pipe.cohort import CohortConfig, assemble_cohort
    from slotspe_pipe.store.features import synthetic_attrs, write_features

    rng = np.random.default_rng(seed)
    cases = [f"BENCH-{i:04d}" for i in range(n_patients)]
    z = rng.normal(size=n_patients)
    t_event = rng.exponential(40.0 * np.exp(-z))
    t_cens = rng.uniform(6.0, 120.0, size=n_patients)
    clinical = pd.DataFrame(
        {
            "case_id": cases,
            "time": np.minimum(t_event, t_cens) + 0.01,
            "event": (t_event <= t_cens).astype(int),
        }
    )
    clinical.to_csv(root / "clinical.csv", index=False)
    genes = [f"G{j:04d}" for j in range(1000)]
    pd.DataFrame({f"PATHWAY_{p:02d}": genes[20 * p : 20 * p + 20] for p in range(50)}).to_csv(
        root / "signatures.csv", index=False
    )
    expr = rng.normal(6.0, 1.0, size=(n_patients, len(genes)))
    expr[:, :20] += 0.8 * z[:, None]
    pd.DataFrame(expr, index=cases, columns=genes).to_csv(root / "rna.csv")
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    coords = np.stack(
        [(np.arange(patches) % 32) * 512, (np.arange(patches) // 32) * 512], axis=1
    ).astype(np.int32)
    sheet = []
    for i, case in enumerate(tqdm(cases, desc="feature stores", unit="slide")):
        feats = rng.standard_normal((patches, dim), dtype=np.float32)
        feats[: patches // 3] += 1.5 * z[i] * direction
        slide_id = f"{case}-01Z-00-DX1"
        write_features(
            root / "features" / f"{slide_id}.zarr",
            feats.astype(np.float16),
            coords,
            synthetic_attrs(slide_id, dim, "bench"),
        )
        sheet.append({"slide_id": slide_id, "patient_id": case})
    pd.DataFrame(sheet).to_csv(root / "slides.csv", index=False)
    out = root / "cohort"
    assemble_cohort(
        CohortConfig(
            clinical=root / "clinical.csv",
            time_col="time",
            event_col="event",
            rna=root / "rna.csv",
            signatures=[root / "signatures.csv"],
            slides=root / "slides.csv",
            features=root / "features",
            n_folds=5,
        ),
        out,
    )
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_step_seconds(data, config, batch: int, patches: int, device: str, cpu_amp: bool) -> float:
    """Median seconds of one optimizer step on in-memory tensors (no reading): the compute bound."""
    import torch

    from slotspe_pipe.model import ModelBatch, build_model

    model = build_model(
        "slotspe",
        wsi_dim=data.wsi_dim,
        pathways=data.membership,
        n_genes=data.omics_width,
        n_bins=4,
        config=config,
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    mb = ModelBatch(
        wsi=torch.randn(batch, patches, data.wsi_dim, device=device),
        wsi_mask=torch.ones(batch, patches, dtype=torch.bool, device=device),
        omics=torch.randn(batch, data.omics_width, device=device),
        omics_present=torch.ones(batch, dtype=torch.bool, device=device),
    )
    bins = torch.randint(0, 4, (batch,), device=device)
    events = torch.randint(0, 2, (batch,), device=device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_amp and device == "cpu")
        with amp:
            out = model(mb)
        out.logits = out.logits.float()
        out.aux = {k: v.float() for k, v in out.aux.items()}
        out.aux_logits = {k: v.float() for k, v in out.aux_logits.items()}
        loss, _ = model.loss(out, bins, events)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def reader_pass_seconds(data, patches: int, workers: int) -> float:
    """One epoch of the lazy patch reader + collate alone (the I/O and decoding cost)."""
    from torch.utils.data import DataLoader

    from slotspe_pipe.dataset import EpochBatchSampler, SurvivalDataset, collate_patients

    ds = SurvivalDataset(data.train, n_patches=patches, seed=0)
    loader = DataLoader(
        ds,
        batch_sampler=EpochBatchSampler(len(ds), 32, 0),
        collate_fn=collate_patients,
        num_workers=workers,
    )
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--patients", type=int, default=625, help="cohort size (fold 0 trains on 80%%)"
    )
    parser.add_argument("--patches", type=int, default=512, help="patches per patient (one slide)")
    parser.add_argument("--dim", type=int, default=1024, help="feature width")
    parser.add_argument("--epochs", type=int, default=1, help="epochs actually run")
    parser.add_argument("--full-epochs", type=int, default=30, help="epochs to project to")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cpu-amp", action="store_true", help="bfloat16 autocast on CPU")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 wins on a busy box)"
    )
    parser.add_argument("--out", type=Path, help="work directory (default: a temp dir)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the synthetic cohort (and reuse a kept one)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from slotspe_pipe.cohort import load_cohort
    from slotspe_pipe.dataset import build_fold_data
    from slotspe_pipe.train import FoldRun, TrainConfig, run_fold

    root = args.out or Path(tempfile.mkdtemp(prefix="bench_fold_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cohort_dir = root / "cohort"
        reused = args.keep and (cohort_dir / "patients.csv").is_file()  # --keep reuses it
        if not reused:
            cohort_dir = write_synthetic_cohort(root, args.patients, args.patches, args.dim, 0)
        write_s = time.perf_counter() - t0
        shutil.rmtree(root / "run", ignore_errors=True)
        store_bytes = sum(f.stat().st_size for f in (root / "features").rglob("*") if f.is_file())
        cohort = load_cohort(cohort_dir)
        data = build_fold_data(cohort, 0, modalities=frozenset({"wsi", "omics"}))
        n_train, n_val = len(data.train), len(data.val)
        steps = -(-n_train // args.batch_size)

        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            patches=args.patches,
            cpu_amp=args.cpu_amp,
        )
        run = FoldRun(
            model_name="slotspe",
            model_config={},
            train_config=cfg,
            seed=1,
            device=args.device,
            workers=args.workers,
            attention_png=1,
        )
        t0 = time.perf_counter()
        metrics = run_fold(cohort, 0, run, root / "run" / "fold_0")
        fold_s = time.perf_counter() - t0
        rss_fold = peak_rss_mib()
        step_s = model_step_seconds(
            data, {}, args.batch_size, args.patches, args.device, args.cpu_amp
        )
        read_s = reader_pass_seconds(data, args.patches, args.workers)

        history = pd.read_csv(root / "run" / "fold_0" / "history.csv")
        train_epoch = float(history.train_seconds.mean())
        full_epoch = float(history.seconds.mean())
        eval_tail = fold_s - float(history.seconds.sum())

        print()
        print(
            f"machine: {torch.get_num_threads()} torch threads, device {args.device}, "
            f"cpu bf16 autocast {'on' if args.cpu_amp else 'off'}"
        )
        print(
            f"cohort: {args.patients} patients x {args.patches} patches x {args.dim}-d "
            f"({store_bytes / 2**20:.0f} MiB of feature stores, "
            + ("reused)" if reused else f"written in {write_s:.0f} s)")
        )
        print(
            f"fold 0: {n_train} training / {n_val} validation patients, batch "
            f"{args.batch_size}, {steps} steps per epoch, SlotSPE default config"
        )
        print(
            f"seconds per epoch, training pass:          {train_epoch:8.1f} "
            f"({n_train / train_epoch:.1f} patients/s)"
        )
        print(f"seconds per epoch, with validation C-index:{full_epoch:8.1f}")
        print(
            f"whole fold ({args.epochs} epoch(s) + final evaluation/outputs): {fold_s:8.1f} s "
            f"(final evaluation {eval_tail:.1f} s)"
        )
        projected = args.full_epochs * full_epoch + eval_tail
        print(f"projected {args.full_epochs}-epoch fold: {projected / 60:8.1f} min")
        print(
            f"reference, model step on in-memory tensors: {step_s:6.2f} s/step -> "
            f"{steps * step_s:6.1f} s/epoch; measured/compute-bound = "
            f"{train_epoch / (steps * step_s):.2f}"
        )
        print(
            f"reference, lazy reader alone ({args.workers} worker(s)): {read_s:6.1f} s/epoch = "
            f"{read_s / train_epoch:.2f} of the training epoch "
            f"({n_train * args.patches * args.dim * 2 / 2**20 / read_s:.0f} MiB/s)"
        )
        print(
            f"peak RSS of the fold run: {rss_fold:.0f} MiB vs "
            f"{store_bytes / 2**20:.0f} MiB of feature stores"
        )
        print(f"validation C-index after {args.epochs} epoch(s): {metrics['c_index']:.3f}")
        print(
            json.dumps(
                {
                    "train_epoch_s": train_epoch,
                    "epoch_s": full_epoch,
                    "fold_s": fold_s,
                    "step_s_in_memory": step_s,
                    "reader_epoch_s": read_s,
                }
            )
        )
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
