"""`slotspe-pipe extract`: patch features of one slide with one encoder -> feature store.

The chain per patch: level-0 grid position (tiles store) -> the tiles store's read level ->
resized once, straight to the encoder's input size -> normalised on the device -> batched
inference (autocast bf16/fp16 on GPU as the encoder's spec says) -> float16 row of the store, in
the tiles store's order. Reading is done by :mod:`slotspe_pipe.patch_loader` (super-regions,
worker processes), so the model, not the reader, sets the pace.

Outputs are atomic (nothing at ``-o`` until the store is complete). A rerun whose store is
complete for the same encoder, weights and tiles settings is skipped. A slide with no patches
gets a valid empty store. A slide that cannot be read (corrupt tile, unreadable file) gets a
failure record (``--status-json``) instead of a crash, so one bad slide never stops a cohort;
configuration errors (unknown encoder, missing weights, no GPU) still stop with exit code 2.

The ``builtin`` encoder path never imports torch: the descriptor runs inside the loader workers
and only 64 numbers per patch come back.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slotspe_pipe import __version__
from slotspe_pipe.encoders import EncoderError, EncoderSpec, get_encoder, resolve_weights
from slotspe_pipe.patch_loader import (
    DEFAULT_REGION_PATCHES,
    DEFAULT_TIMEOUT_S,
    PatchGeometry,
    PatchLoader,
    plan_regions,
)
from slotspe_pipe.store.atomic import write_json
from slotspe_pipe.store.features import KIND as FEATURES_KIND
from slotspe_pipe.store.features import write_features
from slotspe_pipe.store.tiles import Tiles, read_tiles
from slotspe_pipe.store.zarr_group import StoreError, open_group

log = logging.getLogger(__name__)

# Tiles attributes copied into the feature store (provenance of what a row is, physically).
_TILES_ATTRS_COPIED = (
    "target_mpp",
    "patch_px",
    "patch_px_level0",
    "mpp",
    "mpp_source",
    "read_level",
    "read_downsample",
    "effective_mpp",
)


class ExtractError(RuntimeError):
    """This slide cannot be extracted with this tiles store (mismatch, bad device, ...)."""


@dataclass
class ExtractResult:
    """Outcome of one slide: what the status record says."""

    slide_id: str
    status: str  # ok | skipped | failed
    reason: str | None
    n_patches: int
    seconds: float
    patches_per_s: float
    encoder: str
    output: str
    read_route: str | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def extract_features(
    slide_path: str | os.PathLike[str],
    tiles_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    encoder: str = "builtin",
    *,
    weights: str | os.PathLike[str] | None = None,
    allow_random: bool = False,
    allow_download: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int | None = None,
    mpp: float | None = None,
    region_patches: int = DEFAULT_REGION_PATCHES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    overwrite: bool = False,
    progress: bool = True,
    direct_tiff: bool = True,
) -> ExtractResult:
    """Extract features of every patch of ``tiles_path`` from ``slide_path`` into ``out_path``.

    ``mpp`` overrides the slide's µm/px only to open it (geometry comes from the tiles store).
    ``workers``: loader processes (default: see ``_default_workers``). Raises EncoderError /
    WeightsError
    (configuration), StoreError (tiles store), SlideError / RegionReadError (pixels) and
    ExtractError (slide and tiles do not match, device unavailable).
    """
    started = time.perf_counter()
    spec = get_encoder(encoder)
    tiles = read_tiles(tiles_path)
    slide_id = str(tiles.attrs["slide_id"])
    out_path = Path(out_path)
    if batch_size < 1:
        raise ExtractError(f"batch size must be >= 1, got {batch_size}")
    _check_device(device, spec)

    stale = (
        "--overwrite"
        if overwrite
        else _up_to_date(out_path, spec, tiles, weights, allow_download=allow_download)
    )
    if stale is None:
        log.info("%s: %s is complete for encoder %s; skipped", slide_id, out_path, spec.name)
        n = int(open_group(out_path, FEATURES_KIND).attrs.get("n_patches", tiles.n))
        return ExtractResult(slide_id, "skipped", None, n, 0.0, 0.0, spec.name, str(out_path))
    if out_path.exists():
        log.info("%s: recomputing %s (%s)", slide_id, out_path, stale)

    if workers is None:
        workers = _default_workers(spec, device)
    open_mpp = mpp if mpp is not None else float(tiles.attrs["mpp"])
    geometry, input_mpp = _geometry(slide_path, tiles, spec, open_mpp)
    jobs = plan_regions(
        tiles.coords,
        geometry,
        region_patches,
        int(tiles.attrs.get("stride_px_level0") or 0) or None,
    )
    loader_kw = dict(
        workers=workers,
        mpp=open_mpp,
        reader=tiles.attrs.get("reader"),
        timeout_s=timeout_s,
        direct_tiff=direct_tiff,
    )

    # Loop time (after the model is built) gives patches/s; the whole call gives seconds.
    run = _Run(features=np.zeros((0, spec.embed_dim), np.float16))
    if spec.framework == "numpy" or tiles.n == 0:
        # No model to build for an empty slide; the weights are still checked and recorded.
        identity = resolve_weights(
            spec, weights, allow_random=allow_random, allow_download=allow_download
        )
        if tiles.n:
            _run_numpy(
                run, slide_path, jobs, geometry, tiles.n, input_mpp, loader_kw, progress, slide_id
            )
    else:
        identity = _run_torch(
            run,
            spec,
            (weights, allow_random, allow_download),
            slide_path,
            jobs,
            geometry,
            tiles.n,
            batch_size,
            device,
            loader_kw,
            progress,
            slide_id,
        )
    features, route, compute_dtype = run.features, run.route, run.compute_dtype
    rate = tiles.n / run.loop_s if tiles.n and run.loop_s > 0 else 0.0
    if weights is not None and identity.get("path"):
        st = Path(identity["path"]).stat()
        identity = {**identity, "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    attrs: dict[str, Any] = {
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "tiles_path": str(tiles.path),
        "encoder": spec.name,
        "embedding_dim": int(spec.embed_dim),
        "weights": identity,
        "input_size": int(spec.input_size),
        "input_mpp": input_mpp,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "precision": spec.precision,
        "compute_dtype": compute_dtype,
        "timm_name": spec.timm_name,
        "pooling": spec.pooling,
        "license": spec.license,
        "gated": spec.gated,
        "encoder_spec": spec.to_dict(),
        "tiles_settings_hash": tiles.settings_hash,
        **{k: tiles.attrs[k] for k in _TILES_ATTRS_COPIED if k in tiles.attrs},
        "device": device,
        "batch_size": int(batch_size),
        "workers": int(workers),
        "region_patches": int(region_patches),
        "read_route": route,
        "extract_seconds": round(time.perf_counter() - started, 3),
        "loop_seconds": round(run.loop_s, 3),
        "patches_per_s": round(rate, 2),
        "extractor_version": __version__,
    }
    write_features(out_path, features, tiles.coords, attrs)
    seconds = time.perf_counter() - started
    log.info(
        "%s: %d patches, encoder %s on %s: %.1f s in all, %.1f patches/s (read via %s)",
        slide_id,
        tiles.n,
        spec.name,
        device,
        seconds,
        rate,
        route,
    )
    return ExtractResult(
        slide_id,
        "ok",
        None,
        tiles.n,
        round(seconds, 3),
        round(rate, 2),
        spec.name,
        str(out_path),
        route,
    )


# --------------------------------------------------------------------------------------------


def _default_workers(spec: EncoderSpec, device: str) -> int:
    """Loader processes: the builtin descriptor computes in the workers (use every core); a
    CPU model already uses every core (one reader is plenty); a GPU needs readers on all
    cores but the one feeding it."""
    # The cores this process may use (a SLURM allocation), not the whole node's.
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    if spec.framework == "numpy":
        return max(1, min(8, cores))
    if device == "cpu":
        return 1
    return max(1, min(12, cores - 1))


def _check_device(device: str, spec: EncoderSpec) -> None:
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise ExtractError(f"--device {device!r}: expected cpu or cuda[:N]")
    if spec.framework != "torch":
        raise ExtractError(f"encoder {spec.name!r} runs on the CPU only; use --device cpu")
    import torch

    if not torch.cuda.is_available():
        raise ExtractError(f"--device {device}: no CUDA GPU is visible to torch on this machine")


def _up_to_date(
    out_path: Path,
    spec: EncoderSpec,
    tiles: Tiles,
    weights: str | os.PathLike[str] | None,
    *,
    allow_download: bool = False,
) -> str | None:
    """None when ``out_path`` already holds this exact result; else why it must be (re)made.

    The weights must match as asked: the same local file (path, size, mtime), or a hub
    download, or (neither given) random initialisation; a store made with real weights is
    never taken for a random-weights run or the other way round."""
    if not out_path.exists():
        return "missing"
    try:
        attrs = dict(open_group(out_path, FEATURES_KIND).attrs)
    except StoreError as exc:
        return f"incomplete or foreign store ({exc})"
    if attrs.get("encoder") != spec.name or int(attrs.get("embedding_dim", -1)) != spec.embed_dim:
        return f"made with encoder {attrs.get('encoder')!r}"
    if attrs.get("tiles_settings_hash") != tiles.settings_hash:
        return "made from other tiles settings"
    if int(attrs.get("n_patches", -1)) != tiles.n:
        return "patch count differs from the tiles store"
    recorded = attrs.get("weights") or {}
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            return "weights file changed"
        st = path.stat()
        same = (
            recorded.get("path") == str(path.resolve())
            and recorded.get("size_bytes") == st.st_size
            and recorded.get("mtime_ns") == st.st_mtime_ns
        )
        return None if same else "made with other weights"
    if not spec.needs_weights:
        return None
    source = str(recorded.get("source", ""))
    if allow_download:
        return None if source.startswith("hf-hub:") else "made with other weights"
    return None if recorded.get("random_init") else "made with real weights, now random"


def _geometry(
    slide_path: str | os.PathLike[str], tiles: Tiles, spec: EncoderSpec, open_mpp: float
) -> tuple[PatchGeometry, float]:
    """Patch geometry from the tiles store, checked against the slide; and the encoder-input
    µm/px (what the builtin descriptor needs for per-mm² and µm² values)."""
    from slotspe_pipe.slides import Slide

    with Slide(slide_path, mpp=open_mpp, reader=tiles.attrs.get("reader")) as slide:
        dims = [int(v) for v in slide.dimensions]
        expected = [int(v) for v in tiles.attrs["level0_dimensions"]]
        if dims != expected:
            raise ExtractError(
                f"{slide_path}: slide is {dims[0]}x{dims[1]} px but tiles store {tiles.path} was made "
                f"from a {expected[0]}x{expected[1]} px slide (level0_dimensions): wrong pairing"
            )
        geometry = PatchGeometry.from_tiles_attrs(
            tiles.attrs, slide.level_downsamples, spec.input_size
        )
    input_mpp = geometry.patch_px_level0 * float(tiles.attrs["mpp"]) / spec.input_size
    return geometry, input_mpp


def _progress_bar(total: int, slide_id: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="patch",
        desc=slide_id,
        disable=not enabled or total == 0,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )


@dataclass
class _Run:
    """What a run produced (filled in by the _run_* helpers)."""

    features: np.ndarray | None = None
    route: str | None = None
    compute_dtype: str = "float32"
    loop_s: float = 0.0


def _run_numpy(
    run: _Run,
    slide_path: str | os.PathLike[str],
    jobs: list[Any],
    geometry: PatchGeometry,
    n: int,
    input_mpp: float,
    loader_kw: dict[str, Any],
    progress: bool,
    slide_id: str,
) -> None:
    from slotspe_pipe.builtin_encoder import N_FEATURES, describe

    run.features = np.zeros((n, N_FEATURES), np.float16)
    transform = functools.partial(describe, mpp=input_mpp)
    t0 = time.perf_counter()
    with (
        # The workers are the encoder here: no model to yield to, so normal priority.
        PatchLoader(
            slide_path, jobs, geometry, transform=transform, niceness=0, **loader_kw
        ) as loader,
        _progress_bar(n, slide_id, progress) as bar,
    ):
        for item in loader:
            run.features[item.rows] = item.data
            bar.update(item.job.n)
        run.route = loader.route
    run.loop_s = time.perf_counter() - t0


def _run_torch(
    run: _Run,
    spec: EncoderSpec,
    weights_args: tuple[Any, bool, bool],
    slide_path: str | os.PathLike[str],
    jobs: list[Any],
    geometry: PatchGeometry,
    n: int,
    batch_size: int,
    device: str,
    loader_kw: dict[str, Any],
    progress: bool,
    slide_id: str,
) -> dict[str, Any]:
    """Run the torch encoder; return the weights identity. The loader starts reading before
    the model is built, so worker start-up and the first reads overlap the (slow) build."""
    import torch

    from slotspe_pipe.encoders import build_encoder

    weights, allow_random, allow_download = weights_args
    with PatchLoader(slide_path, jobs, geometry, **loader_kw) as loader:
        loader.start()
        module, identity = build_encoder(
            spec, weights, allow_random=allow_random, allow_download=allow_download, device=device
        )
        runner = TorchBatchRunner(module, spec, n, batch_size, geometry.out_px, device)
        runner.warmup()
        t0 = time.perf_counter()
        with _progress_bar(n, slide_id, progress) as bar, torch.inference_mode():
            for item in loader:
                runner.add(item.data, item.rows)
                bar.update(item.job.n)
            runner.flush()
        run.loop_s = time.perf_counter() - t0
        run.route = loader.route
    run.features, run.compute_dtype = runner.features, runner.compute_dtype
    return identity


class TorchBatchRunner:
    """Fills fixed-size uint8 batches from loader regions and runs the encoder on them.

    On GPU: two pinned staging buffers alternate (the next batch is filled while the previous
    one is copied and computed), the copy is non-blocking, normalisation happens on the device
    inside the module, and results are fetched one batch late so the GPU queue never drains
    while the CPU copies patches. On CPU: plain synchronous batches in float32.
    """

    def __init__(
        self, module: Any, spec: EncoderSpec, n: int, batch_size: int, px: int, device: str
    ):
        import torch

        self.torch = torch
        self.module = module
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.features = np.zeros((n, spec.embed_dim), np.float16)
        self.batch_size = batch_size
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
        self.autocast_dtype = dtype if self.cuda else None
        self.compute_dtype = str(dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        n_buf = 2 if self.cuda else 1
        shape = (batch_size, px, px, 3)
        self._staging = [
            torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(n_buf)
        ]
        self._views = [t.numpy() for t in self._staging]
        self._events = [torch.cuda.Event() if self.cuda else None for _ in range(n_buf)]
        self._rows = [np.empty(batch_size, np.int64) for _ in range(n_buf)]
        self._cur = 0
        self._fill = 0
        self._pending: list[tuple[np.ndarray, Any]] = []

    def warmup(self) -> None:
        """One batch of zeros on the GPU (kernel selection, allocator) before timing starts."""
        if not self.cuda:
            return
        torch = self.torch
        with torch.inference_mode(), self._autocast():
            self.module(self._staging[0].to(self.device))
        torch.cuda.synchronize(self.device)

    def _autocast(self) -> Any:
        return self.torch.autocast(
            "cuda", dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def add(self, patches: np.ndarray, rows: np.ndarray) -> None:
        i = 0
        while i < len(rows):
            take = min(self.batch_size - self._fill, len(rows) - i)
            view = self._views[self._cur]
            view[self._fill : self._fill + take] = patches[i : i + take]
            self._rows[self._cur][self._fill : self._fill + take] = rows[i : i + take]
            self._fill += take
            i += take
            if self._fill == self.batch_size:
                self._launch()

    def flush(self) -> None:
        if self._fill:
            self._launch()
        while self._pending:
            self._collect()

    def _launch(self) -> None:
        torch = self.torch
        k, count = self._cur, self._fill
        batch = self._staging[k][:count]
        rows = self._rows[k][:count].copy()
        if self.cuda:
            x = batch.to(self.device, non_blocking=True)
            self._events[k].record()
            with self._autocast():
                y = self.module(x)
            self._pending.append((rows, y.to(torch.float16)))
            if len(self._pending) > 1:
                self._collect()
            self._cur = 1 - k
            # Before refilling the other buffer, its previous host-to-device copy must be done.
            self._events[self._cur].synchronize()
        else:
            y = self.module(batch)
            self.features[rows] = y.to(torch.float16).numpy()
        self._fill = 0

    def _collect(self) -> None:
        rows, y = self._pending.pop(0)
        self.features[rows] = y.cpu().numpy()


# --------------------------------------------------------------------------------------------
# CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="the slide file (or DICOM directory)")
    parser.add_argument("--tiles", required=True, help="tiles store of this slide (TILES.zarr)")
    parser.add_argument("-o", "--output", required=True, help="feature store to write (FEATS.zarr)")
    parser.add_argument(
        "--encoder", default="builtin", help="registry name or timm:<model> (default builtin)"
    )
    parser.add_argument("--weights", help="local weights file (safetensors or plain state dict)")
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="fetch weights from the hub if --weights is absent",
    )
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="random init when no weights are given (tests/benchmarks; recorded in the store)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="patches per model batch (default 64)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--workers", type=int, help="loader processes (default: automatic)")
    parser.add_argument("--mpp", type=float, help="level-0 µm/px override used to open the slide")
    parser.add_argument(
        "--region-patches",
        type=int,
        default=DEFAULT_REGION_PATCHES,
        help=f"super-region side in patches (default {DEFAULT_REGION_PATCHES})",
    )
    parser.add_argument(
        "--worker-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for one region before failing (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute even if the store is complete"
    )
    parser.add_argument(
        "--status-json", help="write {slide_id, status, reason, n_patches, seconds, patches_per_s}"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the slide fails (default: record and exit 0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        result = extract_features(
            args.slide,
            args.tiles,
            args.output,
            args.encoder,
            weights=args.weights,
            allow_random=args.allow_random_weights,
            allow_download=args.allow_download,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            mpp=args.mpp,
            region_patches=args.region_patches,
            timeout_s=args.worker_timeout,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (EncoderError, ExtractError) as exc:
        # Configuration: the same error would hit every slide, so stop loudly, record nothing.
        log.error("%s", exc)
        return 2
    except Exception as exc:  # a slide-level failure: record it, leave no store behind
        slide_id = _slide_id_guess(args)
        reason = f"{type(exc).__name__}: {exc}"
        log.error("%s: extraction failed: %s", slide_id, reason)
        _remove_stale(Path(args.output))
        result = ExtractResult(
            slide_id,
            "failed",
            reason,
            0,
            round(time.perf_counter() - started, 3),
            0.0,
            str(args.encoder),
            str(args.output),
        )
        if args.status_json:
            write_json(args.status_json, result.record())
        return 1 if args.strict else 0
    if args.status_json:
        write_json(args.status_json, result.record())
    return 0


def _slide_id_guess(args: argparse.Namespace) -> str:
    try:
        return str(read_tiles(args.tiles).attrs["slide_id"])
    except Exception:
        return Path(args.slide).stem


def _remove_stale(path: Path) -> None:
    """After a failed run nothing may sit at -o that a later stage could take for this run."""
    if path.exists():
        log.warning("%s: removing the previous store (it does not match this run)", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
