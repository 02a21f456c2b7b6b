"""Patch loading for feature extraction: aligned super-regions, worker processes, one resampling.

Why: reading patches one ``read_region`` at a time is what keeps GPUs idle in other pipelines.
Here the patch grid is grouped into super-regions (up to ``region_patches`` x ``region_patches``
patches of the grid, split further where tissue is sparse so glass is not decoded). Each region
is read once at the tiles store's ``read_level`` and the patches are cut from it with numpy
slicing, then resized straight from the read level to the encoder's input size with
``cv2.INTER_AREA`` (one resampling, never two).

Reading a region: for tiled TIFF slides whose level is a plain tiled page (Aperio SVS, generic
pyramidal TIFF) the stored tiles that overlap the region are decoded directly with tifffile /
imagecodecs; this is pixel-identical to OpenSlide (checked in the tests) and ~10x faster than
OpenSlide's ``read_region``, whose per-pixel cost does not shrink with larger regions. Every other
format goes through :class:`slotspe_pipe.slides.Slide` ``read_region``.

Workers are processes started from a fork server (see ``_default_start_method``), each with
its own slide handle. Results travel through a shared-memory slot per job, so the main process
only copies patches into its batch buffer. At most ``prefetch`` jobs are in flight (bounded
memory whatever the consumer's speed). A worker error is re-raised in the main process as
:class:`RegionReadError` naming the slide and the region; a worker that dies breaks the pool at
once, and one that hangs is caught by the per-job timeout. This module does not import torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_REGION_PATCHES = 8  # super-region side in patches of the grid
DEFAULT_TIMEOUT_S = 600.0  # per job; a job is one region of at most region_patches² patches
DEFAULT_NICENESS = 10  # loader workers run at lower CPU priority than the model
_MIN_DENSITY = 0.25  # split a region whose patches cover less than this share of its area
# Vendors whose levels are plain tiled TIFF pages that can be decoded tile by tile (OpenSlide's
# Aperio and generic-tiff readers paint such tiles without overlap or resampling).
_DIRECT_TIFF_VENDORS = ("aperio", "generic-tiff")


class RegionReadError(RuntimeError):
    """A region of a slide could not be read or resized (corrupt tile, I/O error, timeout)."""


@dataclass(frozen=True)
class PatchGeometry:
    """How one grid patch becomes one encoder input.

    ``patch_px_level0``: patch side in level-0 px; ``read_level``/``read_downsample``: the
    pyramid level the patch is read from and its downsample; ``read_px``: the patch side in
    px of that level; ``out_px``: the side after resizing (the encoder's input size).
    """

    patch_px_level0: int
    read_level: int
    read_downsample: float
    read_px: int
    out_px: int

    @classmethod
    def from_tiles_attrs(
        cls, attrs: dict[str, Any], level_downsamples: Sequence[float], out_px: int
    ) -> PatchGeometry:
        level = int(attrs["read_level"])
        if not 0 <= level < len(level_downsamples):
            raise RegionReadError(
                f"tiles store read_level {level} does not exist in the slide "
                f"({len(level_downsamples)} levels): tiles and slide do not belong together"
            )
        ds = float(level_downsamples[level])
        size0 = int(attrs["patch_px_level0"])
        read_px = int(attrs.get("read_px") or max(1, round(size0 / ds)))
        return cls(size0, level, ds, read_px, int(out_px))


@dataclass(frozen=True)
class RegionJob:
    """One read: the region covering ``rows`` (indices into the tiles coords).

    ``x0``/``y0``: level-0 top-left of the region; ``lx``/``ly``: the same in read-level px;
    ``width``/``height``: read-level px; ``offsets``: (n, 2) patch top-left inside the region.
    """

    index: int
    rows: np.ndarray
    x0: int
    y0: int
    lx: int
    ly: int
    width: int
    height: int
    offsets: np.ndarray

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    def describe(self) -> str:
        return (
            f"region #{self.index} (level-0 x={self.x0}, y={self.y0}; {self.width}x{self.height} "
            f"px at the read level; {self.n} patches)"
        )


def plan_regions(
    coords: np.ndarray,
    geometry: PatchGeometry,
    region_patches: int = DEFAULT_REGION_PATCHES,
    stride_px_level0: int | None = None,
) -> list[RegionJob]:
    """Group patches into read regions; every row of ``coords`` lands in exactly one job.

    Cells of ``region_patches`` grid steps (``stride_px_level0``, default the patch size, so
    overlapping grids still give at most ``region_patches``² patches per job) on a fixed level-0
    lattice; a cell whose patches cover less than a quarter of their bounding box is split in
    four (recursively), so a sparse diagonal of patches is not read as a dense square of glass.
    Jobs come in row-major order of cells.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if coords.shape[0] == 0:
        return []
    unit = int(stride_px_level0 or geometry.patch_px_level0)
    side = max(1, int(region_patches))
    cell = coords // (unit * side)
    order = np.lexsort((coords[:, 0], coords[:, 1], cell[:, 0], cell[:, 1]))
    groups: list[np.ndarray] = []
    for rows in _split_by_key(order, cell[order]):
        groups.extend(_split_sparse(rows, coords, geometry, unit, side))
    return [_make_job(i, rows, coords, geometry) for i, rows in enumerate(groups)]


def _split_by_key(order: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    breaks = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    return np.split(order, breaks)


def _split_sparse(
    rows: np.ndarray, coords: np.ndarray, geometry: PatchGeometry, unit: int, side: int
) -> list[np.ndarray]:
    pts = coords[rows]
    p = geometry.patch_px_level0
    span = pts.max(axis=0) - pts.min(axis=0) + p
    covered = min(rows.size * p * p, float(span[0] * span[1]))
    if covered / float(span[0] * span[1]) >= _MIN_DENSITY or side <= 1 or rows.size == 1:
        return [rows]
    half = max(1, side // 2)
    sub = (pts - pts.min(axis=0)) // (unit * half)
    order = np.lexsort((sub[:, 0], sub[:, 1]))
    out: list[np.ndarray] = []
    for part in _split_by_key(order, sub[order]):
        out.extend(_split_sparse(rows[part], coords, geometry, unit, half))
    return out


def _make_job(index: int, rows: np.ndarray, coords: np.ndarray, g: PatchGeometry) -> RegionJob:
    pts = coords[rows]
    # Level px of each patch: floor(level-0 / downsample), the mapping the slide readers use.
    lvl = np.floor(pts / g.read_downsample).astype(np.int64)
    lx, ly = (int(v) for v in lvl.min(axis=0))
    width = int(lvl[:, 0].max()) + g.read_px - lx
    height = int(lvl[:, 1].max()) + g.read_px - ly
    x0, y0 = (int(v) for v in pts.min(axis=0))
    return RegionJob(index, rows, x0, y0, lx, ly, width, height, lvl - [lx, ly])


# --------------------------------------------------------------------------------------------
# Region sources: decode TIFF tiles directly, or ask the Slide.


class TiledTiffLevel:
    """Decode the stored tiles of one tiled TIFF page covering a region (RGB uint8).

    Raises ValueError at construction when the page is not plain 8-bit RGB tiles that tifffile
    can decode; callers then fall back to ``Slide.read_region``.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int) -> None:
        import tifffile

        self.path = str(path)
        self._tif = tifffile.TiffFile(self.path)
        page = None
        for candidate in self._tif.pages:
            if (
                candidate.is_tiled
                and (candidate.imagewidth, candidate.imagelength) == (width, height)
                and candidate.samplesperpixel == 3
                and candidate.bitspersample == 8
                and candidate.imagedepth == 1
                and candidate.planarconfig == 1
            ):
                page = candidate
                break
        if page is None:
            self._tif.close()
            raise ValueError(f"{path}: no plain tiled RGB page of {width}x{height} px")
        self.page = page
        self.width, self.height = width, height
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.tiles_x = math.ceil(width / self.tile_w)
        self._decode = page.decode
        self._offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self._counts = np.asarray(page.databytecounts, dtype=np.int64)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.read(0, 0, min(self.tile_w, width), min(self.tile_h, height))  # fails early if not

    def read(self, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """Region at level px (lx, ly) of ``width`` x ``height``; outside the image is white."""
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, self.width), min(ly + height, self.height)
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // self.tile_h, (y1 - 1) // self.tile_h + 1):
            for tx in range(x0 // self.tile_w, (x1 - 1) // self.tile_w + 1):
                idx = ty * self.tiles_x + tx
                count = int(self._counts[idx])
                if count == 0:  # a sparse/missing tile: nothing stored, shown white like OpenSlide
                    continue
                data = os.pread(self._fd, count, int(self._offsets[idx]))
                tile = self._decode(data, idx, jpegtables=self.page.jpegtables)[0]
                tile = tile.reshape(tile.shape[-3:])
                tx0, ty0 = tx * self.tile_w, ty * self.tile_h
                sx0, sy0 = max(x0, tx0), max(y0, ty0)
                sx1 = min(x1, tx0 + self.tile_w, tx0 + tile.shape[1])
                sy1 = min(y1, ty0 + self.tile_h, ty0 + tile.shape[0])
                out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[
                    sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0
                ]
        return out

    def close(self) -> None:
        os.close(self._fd)
        self._tif.close()


class RegionSource:
    """Opens the slide (one per process) and reads job regions by the fastest exact route."""

    def __init__(
        self,
        slide_path: str | os.PathLike[str],
        level: int,
        *,
        mpp: float | None = None,
        reader: str | None = None,
        direct_tiff: bool = True,
    ) -> None:
        from slotspe_pipe.slides import Slide

        self.slide = Slide(slide_path, mpp=mpp, reader=reader)
        self.level = level
        self.direct: TiledTiffLevel | None = None
        if direct_tiff and self.slide.info.vendor in _DIRECT_TIFF_VENDORS:
            w, h = self.slide.level_dimensions[level]
            try:
                self.direct = TiledTiffLevel(self.slide.info.opened_path or slide_path, w, h)
            except Exception as exc:  # any reason at all: the Slide path is always correct
                log.debug("%s: direct tile decoding off (%s)", slide_path, exc)
        self.route = "tiff-tiles" if self.direct else f"{self.slide.info.reader}.read_region"

    def read(self, job: RegionJob) -> np.ndarray:
        if self.direct is not None:
            return self.direct.read(job.lx, job.ly, job.width, job.height)
        return self.slide.read_region(job.x0, job.y0, self.level, job.width, job.height)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.slide.close()


def cut_patches(
    region: np.ndarray, job: RegionJob, geometry: PatchGeometry, out: np.ndarray | None = None
) -> np.ndarray:
    """The job's patches from its region, resized to ``out_px`` (uint8 (n, out, out, 3))."""
    s, o = geometry.read_px, geometry.out_px
    if out is None:
        out = np.empty((job.n, o, o, 3), np.uint8)
    interp = cv2.INTER_AREA if o <= s else cv2.INTER_LINEAR
    for i, (ox, oy) in enumerate(job.offsets.tolist()):
        patch = region[oy : oy + s, ox : ox + s]
        if s == o:
            out[i] = patch
        else:
            cv2.resize(patch, (o, o), dst=out[i], interpolation=interp)
    return out


# --------------------------------------------------------------------------------------------
# Worker processes


_WORKER: dict[str, Any] = {}
# Imported once by the fork server, so workers forked from it start warm.
_PRELOAD = (
    __name__,
    "slotspe_pipe.slides",
    "slotspe_pipe.builtin_encoder",
    "openslide",
    "tifffile",
    "imagecodecs",
)


def _worker_init(
    slide_path: str,
    level: int,
    mpp: float | None,
    reader: str | None,
    direct_tiff: bool,
    geometry: PatchGeometry,
    slots_path: str | None,
    slot_shape: tuple[int, ...],
    n_slots: int,
    transform: Callable[[np.ndarray], np.ndarray] | None,
    in_worker: bool = True,
    niceness: int = 0,
) -> None:
    if in_worker:
        cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
        # Readers yield to the model: on a busy CPU the scheduler serves the encoder's threads
        # first (a preempted thread stalls all of them at the next barrier), and the readers
        # still keep their few per cent of a core, with prefetched regions absorbing the delay.
        if niceness:
            with contextlib.suppress(OSError, AttributeError):
                os.nice(niceness)
    _WORKER.clear()
    _WORKER.update(geometry=geometry, transform=transform, slide_path=slide_path)
    try:
        _WORKER["source"] = RegionSource(
            slide_path, level, mpp=mpp, reader=reader, direct_tiff=direct_tiff
        )
    except Exception as exc:  # reported with the first job, where the main process listens
        _WORKER["open_error"] = f"{type(exc).__name__}: {exc}"
    if slots_path is not None:
        _WORKER["slots"] = np.memmap(
            slots_path, dtype=np.uint8, mode="r+", shape=(n_slots, *slot_shape)
        )


def _worker_run(job: RegionJob, slot: int | None) -> tuple[Any, str]:
    """Read and cut one job; patches go to the shared slot (or the transform's output back).

    Returns (payload or None, read route)."""
    try:
        if "open_error" in _WORKER:
            raise RegionReadError(f"cannot open the slide: {_WORKER['open_error']}")
        g = _WORKER["geometry"]
        source = _WORKER["source"]
        region = source.read(job)
        if slot is not None:
            cut_patches(region, job, g, out=_WORKER["slots"][slot, : job.n])
            return None, source.route
        patches = cut_patches(region, job, g)
        transform = _WORKER["transform"]
        return (transform(patches) if transform is not None else patches), source.route
    except Exception as exc:
        # Plain message only: the original exception type may not unpickle in the parent.
        raise RegionReadError(
            f"{_WORKER.get('slide_path')}: {job.describe()}: {type(exc).__name__}: {exc}"
        ) from None


@dataclass
class LoadedRegion:
    """Patches (or transformed features) of one job, in the order of ``rows``.

    ``data`` may be a view into a shared buffer: it is valid until the loader's next item.
    """

    job: RegionJob
    data: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.job.rows


class PatchLoader:
    """Iterate :class:`LoadedRegion` over all jobs; use as a context manager.

    ``workers=0`` reads in the calling process (tests, debugging). ``transform`` (picklable,
    e.g. the builtin descriptor) runs in the workers on each job's uint8 patches and its output
    is what is yielded; without it uint8 patches (n, out_px, out_px, 3) are yielded.
    ``timeout_s`` bounds the wait for any single job: a hung or dead worker raises
    RegionReadError instead of blocking forever. ``niceness`` lowers the workers' CPU priority
    (see ``_worker_init``).
    """

    def __init__(
        self,
        slide_path: str | os.PathLike[str],
        jobs: Sequence[RegionJob],
        geometry: PatchGeometry,
        *,
        workers: int = 1,
        mpp: float | None = None,
        reader: str | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        prefetch: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        direct_tiff: bool = True,
        start_method: str | None = None,
        niceness: int = DEFAULT_NICENESS,
    ) -> None:
        self.slide_path = str(slide_path)
        self.jobs = list(jobs)
        self.geometry = geometry
        self.workers = max(0, int(workers))
        self.transform = transform
        self.timeout_s = float(timeout_s)
        self.prefetch = max(1, prefetch if prefetch is not None else 2 * max(1, self.workers))
        self._init_args = (self.slide_path, geometry.read_level, mpp, reader, direct_tiff)
        self._start_method = start_method
        self._niceness = int(niceness)
        self._pool: Any = None
        self._slots_file: str | None = None
        self._pending: deque[tuple[RegionJob, int | None, Any]] | None = None
        self._free: deque[int] = deque()
        self._next_job = 0
        self.route: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> PatchLoader:
        if self.workers == 0:
            _worker_init(*self._init_args, self.geometry, None, (), 0, self.transform, False)
            return self
        max_n = max((j.n for j in self.jobs), default=1)
        o = self.geometry.out_px
        self._slot_shape = (max_n, o, o, 3)
        self._n_slots = min(self.prefetch, max(1, len(self.jobs)))
        slots_path = None
        if self.transform is None:
            slots_path = self._make_slots_file(self._n_slots * max_n * o * o * 3)
            self._slots = np.memmap(
                slots_path, dtype=np.uint8, mode="r+", shape=(self._n_slots, *self._slot_shape)
            )
        ctx = mp.get_context(self._start_method or _default_start_method())
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(list(_PRELOAD))  # no effect once the server runs
        # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (a decoder crash)
        # breaks the pool at once instead of being replaced while its job is silently lost.
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(
                *self._init_args,
                self.geometry,
                slots_path,
                self._slot_shape,
                self._n_slots,
                self.transform,
                True,
                self._niceness,
            ),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            # Kill rather than wait: after an error or timeout a worker may be stuck in a read.
            processes = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in processes:
                proc.join(timeout=10)
            self._pool = None
        if self.workers == 0 and "source" in _WORKER:
            _WORKER.pop("source").close()
        if self._slots_file is not None:
            self._slots = None  # type: ignore[assignment]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._slots_file)
            self._slots_file = None

    def _make_slots_file(self, nbytes: int) -> str:
        # RAM-backed when /dev/shm has room (containers often cap it at 64 MB), else tmp dir.
        base = "/dev/shm"
        use = None
        if os.path.isdir(base):
            try:
                if shutil.disk_usage(base).free > 2 * nbytes:
                    use = base
            except OSError:
                use = None
        fd, path = tempfile.mkstemp(prefix="slotspe-patches-", suffix=".u8", dir=use)
        with os.fdopen(fd, "wb") as fh:
            fh.truncate(max(1, nbytes))
        self._slots_file = path
        return path

    # -- iteration --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[LoadedRegion]:
        if self.workers == 0:
            yield from self._iter_inline()
        else:
            yield from self._iter_pool()

    def _iter_inline(self) -> Iterator[LoadedRegion]:
        for job in self.jobs:
            data, self.route = _worker_run(job, None)
            yield LoadedRegion(job, data)

    def start(self) -> None:
        """Submit the first jobs now (e.g. while the model is being built); idempotent."""
        if self._pool is None:
            if self.workers:
                raise RuntimeError("PatchLoader must be used as a context manager")
            return
        if self._pending is None:
            self._free = deque(range(self._n_slots))
            self._pending = deque()
            self._next_job = 0
        while self._next_job < len(self.jobs) and len(self._pending) < self._n_slots:
            job = self.jobs[self._next_job]
            slot = self._free.popleft() if self.transform is None else None
            self._pending.append((job, slot, self._pool.submit(_worker_run, job, slot)))
            self._next_job += 1

    def _iter_pool(self) -> Iterator[LoadedRegion]:
        self.start()
        assert self._pending is not None
        while self._pending:
            job, slot, result = self._pending.popleft()
            started = time.monotonic()
            try:
                data, self.route = result.result(timeout=self.timeout_s)
            except FutureTimeoutError:
                raise RegionReadError(
                    f"{self.slide_path}: {job.describe()}: no result from the loader worker "
                    f"after {time.monotonic() - started:.0f} s (hung?); raise "
                    "--worker-timeout if the storage is just slow"
                ) from None
            except BrokenProcessPool as exc:
                raise RegionReadError(
                    f"{self.slide_path}: {job.describe()}: a loader worker process died ({exc}); "
                    "a decoder crash on corrupt data, or the worker could not start"
                ) from None
            if slot is not None:
                data = self._slots[slot, : job.n]
            yield LoadedRegion(job, data)
            if slot is not None:
                self._free.append(slot)
            self.start()


def _default_start_method() -> str:
    """``forkserver`` where available, else ``spawn``; never plain ``fork``.

    A forked worker inherits the parent's OpenCV thread pool half-dead: after the parent had
    run parallel OpenCV code, ``cv2.setNumThreads`` in the child was seen to block forever in
    ``pthread_cond_destroy`` (and torch/CUDA state is no safer). The fork server is a clean
    process that has imported the reader modules once (``_PRELOAD``), so each worker starts in
    tens of milliseconds without inheriting any thread."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
