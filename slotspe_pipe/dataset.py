"""Patient-level survival samples for training and evaluation, read lazily from feature stores.

A patient's bag of patches is all their slides' feature stores concatenated in slide order.
Training draws a fixed number of patches per patient per epoch (all of them when the patient has
fewer; the collate pads and masks); evaluation reads every patch. Feature rows are read on demand
through a small per-process LRU of open ``FeatureReader``s, so memory stays bounded by the batch,
not by the cohort.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from slotspe_pipe.store.features import FeatureReader

if TYPE_CHECKING:
    from slotspe_pipe.cohort import Cohort
    from slotspe_pipe.omics import GeneNormalizer

log = logging.getLogger(__name__)


class ReaderCache:
    """At most ``max_open`` open feature stores per process, least recently used closed first.

    Each DataLoader worker gets its own (empty) copy when the dataset is sent to it.
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max(1, int(max_open))
        self._open: OrderedDict[str, FeatureReader] = OrderedDict()

    def get(self, path: str) -> FeatureReader:
        reader = self._open.pop(path, None)
        if reader is None:
            reader = FeatureReader(path)
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)
        self._open[path] = reader
        return reader

    def __len__(self) -> int:
        return len(self._open)

    def __getstate__(self) -> dict:
        # Open zarr handles never travel to worker processes.
        return {"max_open": self.max_open, "_open": OrderedDict()}


@dataclass(frozen=True)
class PatientRecords:
    """Everything the dataset needs about a set of patients, row-aligned.

    ``time`` in months; ``event`` 1 = death observed; ``bin_index`` the discrete time bin
    (from edges fitted on the training fold). ``feature_paths``/``slide_ids`` hold, per patient,
    the feature stores of their slides (None for omics-only use) and, when known,
    ``patch_counts`` the patches of each of those stores. ``omics`` is the already normalised
    expression (zeros where ``omics_present`` is False), or None.
    """

    case_ids: tuple[str, ...]
    time: np.ndarray
    event: np.ndarray
    bin_index: np.ndarray
    feature_paths: tuple[tuple[str, ...], ...] | None = None
    slide_ids: tuple[tuple[str, ...], ...] | None = None
    omics: np.ndarray | None = None
    omics_present: np.ndarray | None = None
    patch_counts: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        for name in ("time", "event", "bin_index"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"PatientRecords.{name} has {len(getattr(self, name))} rows, need {n}"
                )
        if self.feature_paths is not None and len(self.feature_paths) != n:
            raise ValueError(
                f"PatientRecords.feature_paths has {len(self.feature_paths)} rows, need {n}"
            )
        if self.omics is not None and self.omics.shape[0] != n:
            raise ValueError(f"PatientRecords.omics has {self.omics.shape[0]} rows, need {n}")

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, rows: np.ndarray) -> PatientRecords:
        """The records of ``rows`` (indices or a boolean mask), in that order."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)

        def pick(values: Any) -> Any:
            if values is None:
                return None
            if isinstance(values, np.ndarray):
                return values[rows]
            return tuple(values[i] for i in rows)

        return PatientRecords(
            **{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )


class SurvivalDataset(Dataset):
    """One item per patient: sampled (training) or all (evaluation) patches, omics, labels.

    ``n_patches=None`` means evaluation: every patch, in slide order. Otherwise each epoch draws
    ``n_patches`` distinct patches per patient (all of them if the patient has fewer), from a
    generator seeded by (seed, epoch, patient) so a resumed run draws the same patches.
    """

    def __init__(
        self,
        records: PatientRecords,
        *,
        n_patches: int | None,
        seed: int = 0,
        max_open_readers: int = 64,
        wsi_scaler: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.records = records
        self.wsi_scaler = wsi_scaler
        self.n_patches = None if n_patches is None else int(n_patches)
        self.seed = int(seed)
        self.epoch = 0
        self._cache = ReaderCache(max_open_readers)
        self.slide_counts: list[np.ndarray] | None = None
        self.dim: int | None = None
        if records.feature_paths is not None:
            if records.patch_counts is not None:
                self.slide_counts = [np.asarray(c, np.int64) for c in records.patch_counts]
                self.dim = _store_dim(records.feature_paths)
            else:
                self.slide_counts, self.dim = _count_patches(records.feature_paths)

    def set_epoch(self, epoch: int) -> None:
        """Select which epoch's patch draw ``__getitem__`` returns (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def total_patches(self, index: int) -> int:
        """Patches of patient ``index`` over all their slides (0 for omics-only data)."""
        if self.slide_counts is None:
            return 0
        return int(self.slide_counts[index].sum())

    def rows_for(self, index: int) -> np.ndarray:
        """Global (slide-concatenated) patch rows this item returns, in order."""
        total = self.total_patches(index)
        if self.n_patches is None or total <= self.n_patches:
            return np.arange(total, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return np.sort(rng.choice(total, size=self.n_patches, replace=False))

    def read_patches(self, index: int, rows: np.ndarray) -> np.ndarray:
        """float16 (len(rows), D) features of patient ``index`` at global ``rows`` (sorted)."""
        assert self.records.feature_paths is not None and self.slide_counts is not None
        paths = self.records.feature_paths[index]
        offsets = np.concatenate([[0], np.cumsum(self.slide_counts[index])])
        out = np.empty((len(rows), self.dim or 0), np.float16)
        slide_of_row = np.searchsorted(offsets, rows, side="right") - 1
        for s, path in enumerate(paths):
            take = np.flatnonzero(slide_of_row == s)
            if take.size:
                out[take] = self._cache.get(path).features(rows[take] - offsets[s])
        return out

    def patch_locations(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """For all patches of patient ``index`` in evaluation order: level-0 coords int32 (N, 2),
        the slide number of each patch (N,), and the slide ids those numbers index."""
        assert self.records.feature_paths is not None
        coords, which = [], []
        for s, path in enumerate(self.records.feature_paths[index]):
            c = self._cache.get(path).coords()
            coords.append(c)
            which.append(np.full(len(c), s, np.int32))
        slide_ids = (
            self.records.slide_ids[index]
            if self.records.slide_ids is not None
            else tuple(Path(p).stem for p in self.records.feature_paths[index])
        )
        if not coords:
            return np.zeros((0, 2), np.int32), np.zeros(0, np.int32), slide_ids
        return np.concatenate(coords), np.concatenate(which), slide_ids

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        # Training batch samplers pass (epoch, index) so the draw is right even in persistent
        # DataLoader workers, which never see set_epoch calls made in the main process.
        if isinstance(key, tuple):
            self.epoch, index = int(key[0]), int(key[1])
        else:
            index = int(key)
        rec = self.records
        item: dict[str, object] = {
            "index": index,
            "time": float(rec.time[index]),
            "event": int(rec.event[index]),
            "bin_index": int(rec.bin_index[index]),
        }
        if rec.feature_paths is not None:
            patches = self.read_patches(index, self.rows_for(index))
            if self.wsi_scaler is not None:
                mean, std = self.wsi_scaler
                patches = ((patches.astype(np.float32) - mean) / std).astype(np.float16)
            item["wsi"] = torch.from_numpy(patches)
        if rec.omics is not None:
            item["omics"] = torch.from_numpy(np.asarray(rec.omics[index], np.float32))
            present = True if rec.omics_present is None else bool(rec.omics_present[index])
            item["omics_present"] = present
        return item


def _count_patches(
    feature_paths: Sequence[Sequence[str]],
) -> tuple[list[np.ndarray], int | None]:
    """Patches per slide for every patient and the common embedding width (stores opened once,
    not kept open)."""
    counts: list[np.ndarray] = []
    dims: dict[int, str] = {}
    for paths in feature_paths:
        per_slide = []
        for path in paths:
            reader = FeatureReader(path)
            per_slide.append(reader.n)
            dims.setdefault(reader.dim, str(path))
        counts.append(np.asarray(per_slide, np.int64))
    if len(dims) > 1:
        raise ValueError(
            "feature stores disagree on embedding_dim: "
            + ", ".join(f"{d} (e.g. {p})" for d, p in dims.items())
            + "; all slides of a cohort must use one encoder"
        )
    return counts, (next(iter(dims)) if dims else None)


def _store_dim(feature_paths: Sequence[Sequence[str]]) -> int | None:
    first = next((p for paths in feature_paths for p in paths), None)
    return None if first is None else FeatureReader(first).dim


def collate_patients(items: list[dict[str, object]]) -> dict[str, torch.Tensor]:
    """Stack patients into a batch: patch bags zero-padded to the longest, with a mask
    (True = real patch) so padding never enters attention."""
    batch: dict[str, torch.Tensor] = {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "time": torch.tensor([it["time"] for it in items], dtype=torch.float32),
        "event": torch.tensor([it["event"] for it in items], dtype=torch.long),
        "bin_index": torch.tensor([it["bin_index"] for it in items], dtype=torch.long),
    }
    if "wsi" in items[0]:
        bags = [it["wsi"] for it in items]
        longest = max(1, max(b.shape[0] for b in bags))
        dim = bags[0].shape[1]
        wsi = torch.zeros((len(bags), longest, dim), dtype=bags[0].dtype)
        mask = torch.zeros((len(bags), longest), dtype=torch.bool)
        for i, bag in enumerate(bags):
            wsi[i, : bag.shape[0]] = bag
            mask[i, : bag.shape[0]] = True
        batch["wsi"] = wsi
        batch["wsi_mask"] = mask
    if "omics" in items[0]:
        batch["omics"] = torch.stack([it["omics"] for it in items])
        batch["omics_present"] = torch.tensor(
            [it["omics_present"] for it in items], dtype=torch.bool
        )
    return batch


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Evaluation batches of patients with similar bag sizes, each batch holding at most
    ``max_tokens`` padded patches (a patient larger than the budget gets a batch of its own).

    Sorting by size keeps padding small; the order of predictions is restored by ``index``.
    """

    def __init__(self, sizes: Sequence[int], max_tokens: int, max_batch: int = 256):
        self.sizes = np.asarray(sizes, np.int64)
        self.max_tokens = max(1, int(max_tokens))
        self.max_batch = max(1, int(max_batch))
        self._batches = self._plan()

    def _plan(self) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in np.argsort(self.sizes, kind="stable"):
            size = max(1, int(self.sizes[i]))
            grown = max(longest, size)
            if current and (
                grown * (len(current) + 1) > self.max_tokens or len(current) >= self.max_batch
            ):
                batches.append(current)
                current, grown = [], size
            current.append(int(i))
            longest = grown
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled training batches of (epoch, patient index); the order depends only on
    (seed, epoch), so a resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n = int(n)
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for start in range(0, self.n, self.batch_size):
            yield [(self.epoch, int(i)) for i in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


# ----------------------------------------------------------------------------------------------
# One fold's data: patients usable by a model, labels binned and omics normalised on TRAINING only
# ----------------------------------------------------------------------------------------------

OMICS_INPUTS = ("genes", "pathway_scores")


@dataclass
class FoldData:
    """Train and validation records of one fold, with what was fitted on the training part.

    ``time_bin_edges`` (C + 1,) months and ``normalizer`` (per-gene z-scores) come from the
    training patients only. ``omics_width`` is the width of ``records.omics`` (genes, or
    pathways for ``omics_input="pathway_scores"``); ``excluded`` counts patients of the fold
    left out, per split and reason.
    """

    fold: int
    train: PatientRecords
    val: PatientRecords
    time_bin_edges: np.ndarray
    normalizer: GeneNormalizer | None
    score_scale: np.ndarray | None
    pathways: list[str]
    membership: list[np.ndarray]
    omics_width: int | None
    omics_input: str
    wsi_dim: int | None
    excluded: dict[str, dict[str, int]]
    # Per-dimension (mean, std) of the training patients' patch features: encoders such as
    # `builtin` emit features on very different scales, and the fit never sees validation data.
    wsi_scaler: tuple[np.ndarray, np.ndarray] | None = None


WSI_SCALER_ROWS_PER_SLIDE = 64


def fit_wsi_scaler(records: PatientRecords) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of patch features over (up to 64 evenly spaced patches of)
    every slide of the given (training) patients; std floored so constant dimensions pass."""
    assert records.feature_paths is not None
    cache = ReaderCache()
    blocks = []
    for paths in records.feature_paths:
        for path in paths:
            reader = cache.get(path)
            if reader.n == 0:
                continue
            rows = np.unique(
                np.linspace(0, reader.n - 1, min(reader.n, WSI_SCALER_ROWS_PER_SLIDE)).astype(int)
            )
            blocks.append(reader.features(rows).astype(np.float64))
    sample = np.concatenate(blocks)
    mean = sample.mean(axis=0)
    std = sample.std(axis=0)
    std = np.where(std > 1e-6 * max(1.0, float(np.abs(mean).max())), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def cohort_patch_counts(cohort: Cohort) -> dict[str, tuple[int, int]]:
    """Feature store path -> (patches, embedding width), opening each store once (metadata only)."""
    out: dict[str, tuple[int, int]] = {}
    for path in cohort.slides.features_path:
        if path and path not in out:
            reader = FeatureReader(path)
            out[path] = (reader.n, reader.dim)
    widths = {dim for _, dim in out.values()}
    if len(widths) > 1:
        raise ValueError(
            f"{cohort.path}/slides.csv: feature stores have different embedding widths {sorted(widths)}; "
            "all slides of a cohort must come from one encoder"
        )
    return out


def build_fold_data(
    cohort: Cohort,
    fold: int,
    *,
    modalities: frozenset[str],
    n_bins: int = 4,
    time_bins: str = "quantile",
    omics_input: str = "genes",
    patch_counts: dict[str, tuple[int, int]] | None = None,
) -> FoldData:
    """Assemble fold ``fold`` for a model reading ``modalities`` ({"wsi"}, {"omics"} or both).

    Who is used: with "wsi", patients with at least one patch (omics optional, flagged by
    ``omics_present``); omics-only models need the patient's RNA. Time bins (``time_bins``:
    "quantile" of uncensored training times, or "equal") and the gene normaliser are fitted on
    the fold's usable TRAINING patients. ``omics_input="pathway_scores"`` feeds the mean z-score
    of each pathway (scaled by its training std) instead of the genes; it is for omics-only
    models. Raises ``ValueError`` when the cohort lacks a modality the model needs.
    """
    from slotspe_pipe.cohort import assign_time_bins, time_bin_edges
    from slotspe_pipe.omics import fit_normalizer

    if omics_input not in OMICS_INPUTS:
        raise ValueError(f"omics input {omics_input!r} is not one of {OMICS_INPUTS}")
    use_wsi = "wsi" in modalities
    use_omics = "omics" in modalities
    need_omics = use_omics and not use_wsi
    if use_omics and cohort.omics is None:
        raise ValueError(
            f"{cohort.path}: the model reads omics but the cohort has no omics.zarr "
            "(build the cohort with --rna and --signatures)"
        )
    if use_wsi and cohort.slides.empty:
        raise ValueError(
            f"{cohort.path}/slides.csv: the model reads WSI features but the cohort has no slides "
            "(build the cohort with --slides and --features, or use an omics-only model)"
        )
    if omics_input == "pathway_scores" and use_wsi:
        raise ValueError("omics input 'pathway_scores' is for omics-only models")
    if use_wsi and patch_counts is None:
        patch_counts = cohort_patch_counts(cohort)
    slides_of: dict[str, list[tuple[str, str]]] = {}
    if use_wsi:
        for sid, cid, path in zip(
            cohort.slides.slide_id, cohort.slides.case_id, cohort.slides.features_path, strict=True
        ):
            slides_of.setdefault(cid, []).append((sid, path))

    train_ids, val_ids = cohort.fold_split(fold)
    excluded: dict[str, dict[str, int]] = {"train": {}, "val": {}}

    def usable(case_ids: list[str], split: str) -> list[str]:
        keep = []
        for cid in case_ids:
            reason = None
            has_omics = bool(cohort.patients.at[cid, "has_omics"])
            if need_omics and not has_omics:
                reason = "no omics"
            elif use_wsi and sum(patch_counts[p][0] for _, p in slides_of.get(cid, [])) == 0:
                reason = "no slide with patches"
            if reason:
                excluded[split][reason] = excluded[split].get(reason, 0) + 1
            else:
                keep.append(cid)
        return keep

    train_ids, val_ids = usable(train_ids, "train"), usable(val_ids, "val")
    if len(train_ids) < 2 or not val_ids:
        raise ValueError(
            f"{cohort.path}: fold {fold} has {len(train_ids)} usable training and {len(val_ids)} "
            f"validation patients for a model reading {sorted(modalities)} (excluded: {excluded})"
        )
    pat = cohort.patients
    t_train = pat.loc[train_ids, "time"].to_numpy(float)
    e_train = pat.loc[train_ids, "event"].to_numpy(int)
    edges = time_bin_edges(t_train, e_train, n_bins=n_bins, method=time_bins)

    normalizer = None
    score_scale = None
    pathways: list[str] = []
    membership: list[np.ndarray] = []
    omics_width = None
    omics_all: dict[str, np.ndarray] = {}
    if use_omics:
        om = cohort.omics
        pathways = [str(p) for p in om.pathways]
        membership = list(om.membership)
        rows_train = cohort.omics_rows(train_ids)
        rows_train = rows_train[rows_train >= 0]
        if rows_train.size < 2:
            raise ValueError(
                f"{cohort.path}: fold {fold} has fewer than 2 training patients with omics"
            )
        normalizer = fit_normalizer(om.expression[rows_train], genes=[str(g) for g in om.genes])
        z = normalizer.transform(om.expression)
        if omics_input == "pathway_scores":
            scores = np.stack([z[:, m].mean(axis=1) for m in membership], axis=1)
            score_scale = scores[rows_train].std(axis=0)
            score_scale = np.where(score_scale > 1e-8, score_scale, 1.0)
            z = (scores / score_scale).astype(np.float32)
        omics_width = int(z.shape[1])
        omics_all = {"z": z}

    wsi_dim = None
    if use_wsi:
        dims = {patch_counts[p][1] for ps in slides_of.values() for _, p in ps}
        wsi_dim = next(iter(dims)) if dims else None

    def records(case_ids: list[str]) -> PatientRecords:
        times = pat.loc[case_ids, "time"].to_numpy(np.float32)
        events = pat.loc[case_ids, "event"].to_numpy(np.int64)
        omics = present = None
        if use_omics:
            rows = cohort.omics_rows(case_ids)
            present = rows >= 0
            omics = np.zeros((len(case_ids), omics_width), np.float32)
            omics[present] = omics_all["z"][rows[present]]
        feature_paths = slide_ids = counts = None
        if use_wsi:
            feature_paths = tuple(tuple(p for _, p in slides_of[c]) for c in case_ids)
            slide_ids = tuple(tuple(s for s, _ in slides_of[c]) for c in case_ids)
            counts = tuple(
                np.asarray([patch_counts[p][0] for p in ps], np.int64) for ps in feature_paths
            )
        return PatientRecords(
            case_ids=tuple(case_ids),
            time=times,
            event=events,
            bin_index=assign_time_bins(times, edges),
            feature_paths=feature_paths,
            slide_ids=slide_ids,
            omics=omics,
            omics_present=present,
            patch_counts=counts,
        )

    for split, counts in excluded.items():
        if counts:
            log.warning("fold %d %s: patients left out %s", fold, split, counts)
    train_records = records(train_ids)
    return FoldData(
        fold=fold,
        train=train_records,
        val=records(val_ids),
        time_bin_edges=edges,
        normalizer=normalizer,
        score_scale=score_scale,
        pathways=pathways,
        membership=membership,
        omics_width=omics_width,
        omics_input=omics_input,
        wsi_dim=wsi_dim,
        excluded=excluded,
        wsi_scaler=fit_wsi_scaler(train_records) if use_wsi else None,
    )
