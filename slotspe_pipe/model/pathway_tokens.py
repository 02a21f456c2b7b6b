"""Pathway tokens: one small self-normalising network per pathway, all run as one batched matmul.

The paper gives each pathway p its own two-block network n_genes(p) -> d -> d (Linear -> ELU ->
AlphaDropout per block). Run as 331 separate ``nn.Linear`` calls per step that is dominated by
Python and kernel-launch overhead; here the pathways' gene vectors are gathered into one
zero-padded tensor [B, P, max_genes] and every pathway's layer is a slice of one weight tensor,
so each block is a single batched matmul. Padded inputs are exactly zero, so the mathematics is
that of the per-pathway loop (``tests/test_model_components.py`` checks it). At 2 threads on a
busy machine the grouped form is several times faster than the loop (every one of the loop's
~4,000 small kernels pays a thread-barrier); at 1 thread the two are about even.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def validate_pathways(pathways: Sequence[np.ndarray], n_genes: int) -> list[np.ndarray]:
    """Check each pathway is a non-empty 1-D set of gene column indices in [0, n_genes).

    Raises ``ValueError`` naming the first offending pathway.
    """
    if len(pathways) == 0:
        raise ValueError("pathways: expected at least one pathway, got none")
    out: list[np.ndarray] = []
    for i, genes in enumerate(pathways):
        arr = np.asarray(genes)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"pathways[{i}]: expected a non-empty 1-D array of gene indices")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"pathways[{i}]: expected integer gene indices, got {arr.dtype}")
        if arr.min() < 0 or arr.max() >= n_genes:
            raise ValueError(
                f"pathways[{i}]: gene indices must lie in [0, {n_genes}), got "
                f"[{arr.min()}, {arr.max()}]"
            )
        out.append(arr.astype(np.int64))
    return out


class GroupedPathwaySNN(nn.Module):
    """All per-pathway SNNs of SlotSPE as one module: omics [B, G] -> tokens [B, P, d].

    Parameters (pathway p owns rows offsets[p] : offsets[p] + n_p of ``w1``):
      w1 [sum_p n_p, d], b1 [P, d]  (first block, in = the genes of p, in pathway order)
      w2 [P, d, d],      b2 [P, d]  (second block, in = d)
    ``w1[offsets[p] : offsets[p] + n_p].T`` is the weight of the equivalent ``nn.Linear(n_p, d)``
    and ``w2[p].T`` that of its ``nn.Linear(d, d)``. Each forward pass gathers ``w1`` into a
    [P, max_genes, d] tensor (an embedding lookup) so the optimizer only ever sees real weights;
    the padded inputs are exactly zero, so padded weight slots contribute and receive nothing.
    """

    def __init__(self, pathways: Sequence[np.ndarray], n_genes: int, dim: int, dropout: float):
        super().__init__()
        pathways = validate_pathways(pathways, n_genes)
        self.n_genes = int(n_genes)
        self.dim = int(dim)
        sizes = [len(p) for p in pathways]
        max_genes = max(sizes)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        n_rows = int(sum(sizes))
        # Gather tables. Genes: padding points at column G, an appended zero, so padded inputs are
        # exactly 0. Weight rows: padding may then point at any row (row 0): multiplied by a zero
        # input it adds nothing to the output and receives exactly zero gradient.
        gene_index = np.full((len(pathways), max_genes), n_genes, dtype=np.int64)
        row_index = np.zeros((len(pathways), max_genes), dtype=np.int64)
        for p, genes in enumerate(pathways):
            gene_index[p, : len(genes)] = genes
            row_index[p, : len(genes)] = offsets[p] + np.arange(len(genes))
        self.register_buffer("gene_index", torch.from_numpy(gene_index), persistent=False)
        self.register_buffer("row_index", torch.from_numpy(row_index), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.from_numpy(offsets), persistent=False)
        self.w1 = nn.Parameter(torch.zeros(n_rows, dim))
        self.b1 = nn.Parameter(torch.zeros(len(pathways), dim))
        self.w2 = nn.Parameter(torch.zeros(len(pathways), dim, dim))
        self.b2 = nn.Parameter(torch.zeros(len(pathways), dim))
        self.dropout = nn.AlphaDropout(dropout)
        self.reset_parameters()

    @property
    def n_pathways(self) -> int:
        return int(self.b1.shape[0])

    def reset_parameters(self) -> None:
        """nn.Linear's default init per pathway: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        with torch.no_grad():
            for p, (start, n_p) in enumerate(
                zip(self.offsets.tolist(), self.sizes.tolist(), strict=True)
            ):
                bound = 1.0 / math.sqrt(n_p)
                self.w1[start : start + n_p].uniform_(-bound, bound)
                self.b1[p].uniform_(-bound, bound)
            bound = 1.0 / math.sqrt(self.dim)
            self.w2.uniform_(-bound, bound)
            self.b2.uniform_(-bound, bound)

    def forward(self, omics: torch.Tensor) -> torch.Tensor:
        """omics [B, G] -> pathway tokens [B, P, d]."""
        if omics.ndim != 2 or omics.shape[1] != self.n_genes:
            raise ValueError(
                f"omics: expected [B, {self.n_genes}] (genes of the omics store), got "
                f"{tuple(omics.shape)}"
            )
        omics = omics.to(self.w1.dtype)  # e.g. float64 from numpy
        x = F.pad(omics, (0, 1))[:, self.gene_index]  # [B, P, max_genes], padding = 0
        x = x.transpose(0, 1)  # [P, B, max_genes]: pathway is the bmm batch axis
        w1 = F.embedding(self.row_index, self.w1)  # [P, max_genes, d]
        h = torch.baddbmm(self.b1.unsqueeze(1), x, w1)  # [P, B, d]
        h = self.dropout(F.elu(h))
        h = torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)
        h = self.dropout(F.elu(h))
        return h.transpose(0, 1)  # [B, P, d]
