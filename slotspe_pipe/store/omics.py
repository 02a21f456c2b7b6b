"""`omics/{cohort}.zarr` (inside a cohort directory: ``omics.zarr``): expression + pathway membership.

Arrays:
- ``expression`` float32 (patients, genes): values as given (after the optional log2(x + 1)); never
  normalized here, because normalization is fitted on each training fold by the trainer.
- ``patients``, ``genes``, ``pathways``: variable-length UTF-8 strings (Zarr ``string`` dtype).
- ``pathway_gene_index`` int32 + ``pathway_offsets`` int32 (P + 1): pathway membership in CSR form;
  pathway p uses expression columns ``pathway_gene_index[offsets[p]:offsets[p + 1]]``, in the order
  the gene-set file lists its genes (so two equivalent gene-set files give identical tokens).

Attributes: see ``REQUIRED_ATTRS`` (input files with sha256, gene-set source, per-pathway coverage,
whether log2 was applied).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from slotspe_pipe.store.zarr_group import StoreError, open_group, write_group

KIND = "omics"
# ~8 MB float32 chunks: big enough that a 1,000 x 20,000 cohort is a handful of chunks.
CHUNK_VALUES = 2**21
REQUIRED_ATTRS = ("sources", "gene_set_source", "coverage", "log2_applied")


def _strings(values: Sequence[str]) -> np.ndarray:
    # Zarr's variable-length ``string`` dtype has a stable v3 spec; fixed-width '<U' does not.
    return np.array([str(v) for v in values], dtype=np.dtypes.StringDType())


def _read_strings(array: Any) -> np.ndarray:
    # numpy cannot cast its variable-width StringDType to '<U' without a size; go via Python str.
    return np.array([str(v) for v in np.asarray(array[...]).tolist()], dtype=str)


def write_omics(
    path: str | os.PathLike[str],
    expression: np.ndarray,
    patients: Sequence[str],
    genes: Sequence[str],
    pathways: Sequence[str],
    membership: Sequence[np.ndarray],
    attrs: dict[str, Any],
) -> Path:
    """Write an omics store atomically; raises ``StoreError`` when the pieces do not fit together.

    ``membership[p]`` holds the expression column indices of pathway ``pathways[p]``; every pathway
    needs at least one gene (pathways without measured genes are dropped before this point).
    """
    expression = np.asarray(expression, dtype=np.float32)
    if expression.ndim != 2:
        raise StoreError(f"{path}: expression must be (patients, genes), got {expression.shape}")
    n_patients, n_genes = expression.shape
    if len(patients) != n_patients or len(genes) != n_genes:
        raise StoreError(
            f"{path}: expression {expression.shape} does not match {len(patients)} patients x "
            f"{len(genes)} genes"
        )
    for label, names in (("patients", patients), ("genes", genes), ("pathways", pathways)):
        if len(set(names)) != len(names):
            raise StoreError(f"{path}: {label} must be unique")
    if len(membership) != len(pathways):
        raise StoreError(f"{path}: {len(membership)} membership lists for {len(pathways)} pathways")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise StoreError(f"{path}: omics attrs missing {missing}")
    sizes = [len(m) for m in membership]
    if any(s == 0 for s in sizes):
        empty = [pathways[i] for i, s in enumerate(sizes) if s == 0][:5]
        raise StoreError(f"{path}: pathways without genes cannot be stored: {empty}")
    offsets = np.zeros(len(membership) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    index = (
        np.concatenate([np.asarray(m, dtype=np.int32) for m in membership])
        if membership
        else np.zeros(0, np.int32)
    )
    if index.size and (index.min() < 0 or index.max() >= n_genes):
        raise StoreError(f"{path}: pathway gene index outside 0..{n_genes - 1}")
    rows = max(1, min(n_patients, CHUNK_VALUES // max(1, n_genes)))
    return write_group(
        path,
        KIND,
        {
            "expression": (expression, (rows, max(1, n_genes))),
            "patients": (_strings(patients), None),
            "genes": (_strings(genes), None),
            "pathways": (_strings(pathways), None),
            "pathway_gene_index": (index, None),
            "pathway_offsets": (offsets, None),
        },
        {**attrs, "n_patients": n_patients, "n_genes": n_genes, "n_pathways": len(pathways)},
    )


@dataclass
class OmicsData:
    """A loaded omics store. String arrays are numpy ``str`` arrays."""

    path: Path
    expression: np.ndarray
    patients: np.ndarray
    genes: np.ndarray
    pathways: np.ndarray
    pathway_gene_index: np.ndarray
    pathway_offsets: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def membership(self) -> list[np.ndarray]:
        """Expression column indices of each pathway, in gene-set order."""
        off = self.pathway_offsets
        return [self.pathway_gene_index[off[p] : off[p + 1]] for p in range(len(off) - 1)]

    @cached_property
    def patient_row(self) -> dict[str, int]:
        """case_id -> row of ``expression``."""
        return {str(p): i for i, p in enumerate(self.patients)}


def read_omics(path: str | os.PathLike[str]) -> OmicsData:
    """Load a finished omics store whole (it is small: patients x measured pathway genes)."""
    path = Path(path)
    group = open_group(path, KIND)
    data = OmicsData(
        path=path,
        expression=np.asarray(group["expression"][...], dtype=np.float32),
        patients=_read_strings(group["patients"]),
        genes=_read_strings(group["genes"]),
        pathways=_read_strings(group["pathways"]),
        pathway_gene_index=np.asarray(group["pathway_gene_index"][...], dtype=np.int32),
        pathway_offsets=np.asarray(group["pathway_offsets"][...], dtype=np.int32),
        attrs=dict(group.attrs),
    )
    if data.expression.shape != (len(data.patients), len(data.genes)):
        raise StoreError(
            f"{path}: expression {data.expression.shape} does not match "
            f"{len(data.patients)} patients x {len(data.genes)} genes"
        )
    if len(data.pathway_offsets) != len(data.pathways) + 1 or (
        len(data.pathway_offsets) and data.pathway_offsets[-1] != len(data.pathway_gene_index)
    ):
        raise StoreError(f"{path}: pathway_offsets do not match pathways / pathway_gene_index")
    return data
