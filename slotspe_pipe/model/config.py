"""Model hyperparameters as frozen dataclasses, with the paper's defaults.

Every number of the SlotSPE paper (arXiv 2512.01116) lives here so that a checkpoint
can record exactly what was trained (``to_dict``) and rebuild it (``from_dict``). Unknown keys are
rejected by name: a typo in a user's config must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

_C = TypeVar("_C", bound="_ConfigBase")

EVAL_SLOT_INITS = ("fixed_noise", "mu")
SNN_ACTIVATIONS = ("selu", "elu")


@dataclass(frozen=True)
class _ConfigBase:
    """Shared dict round-trip and validation for the model configs."""

    kind: ClassVar[str] = "base"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists) for checkpoints."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[_C], values: dict[str, Any] | None) -> _C:
        """Defaults overridden by ``values``; an unknown key raises ``ValueError`` naming it."""
        values = dict(values or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown config key(s) {unknown}; expected a subset of "
                f"{sorted(names)}"
            )
        for key, value in list(values.items()):
            default = names[key].default
            if isinstance(default, tuple) and isinstance(value, list):
                values[key] = tuple(value)
        return cls(**values)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"{type(self).__name__}.{f.name}: expected bool, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(
                        f"{type(self).__name__}.{f.name}: expected an integer, got {value!r}"
                    )
                if value < 1:
                    raise ValueError(f"{type(self).__name__}.{f.name}: expected >= 1, got {value}")
            if isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(
                        f"{type(self).__name__}.{f.name}: expected a number, got {value!r}"
                    )
                if value < 0:
                    raise ValueError(f"{type(self).__name__}.{f.name}: expected >= 0, got {value}")
                object.__setattr__(self, f.name, float(value))  # ints from YAML/JSON become floats
        for name in ("dropout", "drop_path", "snn_dropout", "alpha", "keep_ratio", "omics_dropout"):
            value = getattr(self, name, None)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{type(self).__name__}.{name}: expected in [0, 1], got {value}")


@dataclass(frozen=True)
class SlotSPEConfig(_ConfigBase):
    """SlotSPE (ICLR 2026) hyperparameters; defaults are the paper's.

    ``aux_weight`` is not stated in the paper; the authors' code adds the two decoder NLLs with
    weight 1, so 1.0 is the default. ``eval_slot_init`` is ours (see ``slot_attention.py``):
    the paper shares one learned mu across slots, so starting every slot at mu makes all slots
    identical and the model collapses to mean pooling at evaluation; "fixed_noise" starts them at
    mu + sigma * z with z one standard-normal draw frozen in the state dict (deterministic and in
    the training distribution). "mu" is offered for the literal reading of the spec.
    """

    kind: ClassVar[str] = "slotspe"

    wsi_dim: int = 1024  # patch feature width (UNI ViT-L/16: 1024)
    wsi_hidden: int = 1024  # WSI projection: Linear(wsi_dim, wsi_hidden) -> ReLU -> Linear(., dim)
    dim: int = 256  # d, the width of every token and slot
    n_slots: int = 8  # slots per modality
    slot_iters: int = 10
    slot_heads: int = 8
    slot_head_dim: int = 64
    slot_eps: float = 1e-8  # added to slot-competition weights before normalising over inputs
    eval_slot_init: str = "fixed_noise"  # "fixed_noise" | "mu"
    keep_ratio: float = 0.25  # k = max(1, floor(n_slots * keep_ratio)) slots kept per modality
    tau: float = 0.01  # temperature of the gate softmax and the straight-through surrogate
    intra_heads: int = 8
    mlp_ratio: float = 1.0
    dropout: float = 0.1  # attention-weight and projection dropout in the transformer blocks
    drop_path: float = 0.1
    cross_heads: int = 8
    cross_iters: int = 3
    recon_heads: int = 8
    recon_weight: float = 0.01
    aux_weight: float = 1.0
    snn_dropout: float = 0.25  # AlphaDropout in the per-pathway token networks
    alpha: float = 0.5  # NLL weight on the uncensored term (Zadeh & Schmid 2020)
    n_bins: int = 4  # C, discrete time bins
    # Ours, 0 = the paper: the share of training patients WITH RNA whose pathway tokens are
    # replaced by the joint (WSI-decoded) tokens for the survival path, as is done for patients
    # without RNA. The paper trains the joint path by a 0.01-weighted MSE alone, so the survival
    # head never sees decoded tokens; dropping the omics now and then teaches it to use them.
    omics_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_slot_init not in EVAL_SLOT_INITS:
            raise ValueError(
                f"SlotSPEConfig.eval_slot_init: expected one of {EVAL_SLOT_INITS}, "
                f"got {self.eval_slot_init!r}"
            )
        for name in ("intra_heads", "cross_heads", "recon_heads"):
            if self.dim % getattr(self, name):
                raise ValueError(
                    f"SlotSPEConfig.{name}: dim={self.dim} must be divisible by "
                    f"{name}={getattr(self, name)}"
                )
        if self.tau <= 0:
            raise ValueError(f"SlotSPEConfig.tau: expected > 0, got {self.tau}")

    @property
    def top_k(self) -> int:
        """Number of slots the gated decoder keeps."""
        return max(1, int(self.n_slots * self.keep_ratio))


@dataclass(frozen=True)
class SNNConfig(_ConfigBase):
    """Omics-only self-normalizing network on the flat gene vector (SurvPath's "SNN" baseline).

    Klambauer et al. 2017: Linear -> SELU -> AlphaDropout blocks with LeCun-normal weights.
    The MCAT/SurvPath code uses ELU in the same block; ``activation="elu"`` reproduces that.
    """

    kind: ClassVar[str] = "snn"

    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.25
    activation: str = "selu"  # "selu" | "elu"
    alpha: float = 0.5
    n_bins: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation not in SNN_ACTIVATIONS:
            raise ValueError(
                f"SNNConfig.activation: expected one of {SNN_ACTIVATIONS}, got {self.activation!r}"
            )
        if not self.hidden or any((not isinstance(h, int)) or h < 1 for h in self.hidden):
            raise ValueError(f"SNNConfig.hidden: expected positive integers, got {self.hidden!r}")


@dataclass(frozen=True)
class ABMILConfig(_ConfigBase):
    """WSI-only gated-attention MIL (Ilse et al. 2018), CLAM-sized (512 hidden, 256 attention)."""

    kind: ClassVar[str] = "abmil"

    wsi_dim: int = 1024
    hidden: int = 512
    attn_dim: int = 256
    dropout: float = 0.25
    alpha: float = 0.5
    n_bins: int = 4
