"""Encoder registry: every patch encoder's facts as data, and the one way to build it.

Why a table: the extractor, the CLI and the report must never branch on model names (timm's
lesson). Each :class:`EncoderSpec` states the timm architecture and its exact keyword arguments
(checked against the published model cards), embedding size, native input size, normalisation,
inference precision, pooling of the token outputs, recommended µm/px and patch size, and the
licence / gating facts a hospital needs before it may use the weights.

Weights are offline by default: a local safetensors file or a plain state dict loaded with
``torch.load(weights_only=True)`` (a pickle that would run code is refused). Its sha256 goes into
the feature store. A hub download happens only with ``allow_download=True`` (the CLI's
``--allow-download``), and random initialisation only with ``allow_random=True`` (tests and
benchmarks), which is recorded too.

``timm:<name>`` builds any timm model as ``timm.create_model(name, num_classes=0)`` with its
input size and normalisation taken from the model's timm data config. ``builtin`` is the
weights-free H&E descriptor of :mod:`slotspe_pipe.builtin_encoder` (numpy, no torch).

This module imports torch and timm lazily, so listing the registry or running the ``builtin``
encoder never loads torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily at run time
    import torch
    from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

PRECISIONS = ("bf16", "fp16", "fp32")
POOLINGS = ("cls", "cls+mean_patch", "avg", "model")
TIMM_PREFIX = "timm:"


class EncoderError(ValueError):
    """Unknown encoder name or an encoder that cannot be built as asked."""


class WeightsError(EncoderError):
    """Weights missing, unreadable, unsafe, or not matching the architecture."""


@dataclass(frozen=True)
class EncoderSpec:
    """Facts about one patch encoder. Pure data: JSON-serialisable via :meth:`to_dict`.

    ``timm_kwargs`` values that are layer classes are written as dotted names from
    ``_LAYER_NAMES`` (e.g. ``"timm.layers.SwiGLUPacked"``) and resolved only when building.
    ``pooling``: ``cls`` = class token of the final (normed) tokens; ``cls+mean_patch`` =
    class token concatenated with the mean of the patch tokens (register tokens excluded);
    ``avg`` = global average of a CNN feature map; ``model`` = the timm model's own pooled
    output with ``num_classes=0``. ``weights_format`` names the key layout of the published
    file (``timm`` or ``hf-dinov2`` for Hugging Face transformers DINOv2 checkpoints), and
    ``drop_modules`` are submodules replaced by identity (their weights are ignored).
    """

    name: str
    timm_name: str
    embed_dim: int
    input_size: int  # square input side in px
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str  # inference dtype on GPU: bf16 | fp16 | fp32 (CPU always runs fp32)
    pooling: str
    recommended_mpp: float  # µm/px the model was trained at
    recommended_patch_px: int  # patch side in px at recommended_mpp (resized to input_size)
    license: str
    gated: bool  # weights need an accepted licence / approval on the hub
    hf_hub_id: str | None
    weights_filename: str | None
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    interpolation: str = "bilinear"  # what the model card's transform uses (informational)
    framework: str = "torch"  # torch | numpy (builtin)
    weights_format: str = "timm"
    drop_modules: tuple[str, ...] = ()
    model_card: str | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["timm_kwargs"] = dict(self.timm_kwargs)
        return d

    @property
    def needs_weights(self) -> bool:
        return self.framework == "torch"


_VIT_L16_UNI = {
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1e-5,
    "num_classes": 0,
    "dynamic_img_size": True,
}

_H_OPTIMUS_0 = EncoderSpec(
    name="h-optimus-0",
    timm_name="vit_giant_patch14_reg4_dinov2",
    timm_kwargs={
        "img_size": 224,
        "init_values": 1e-5,
        "num_classes": 0,
        "global_pool": "token",
        "dynamic_img_size": False,
    },
    embed_dim=1536,
    input_size=224,
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
    precision="fp16",
    pooling="cls",
    recommended_mpp=0.5,
    recommended_patch_px=224,
    license="Apache-2.0",
    gated=False,
    hf_hub_id="bioptimus/H-optimus-0",
    weights_filename="pytorch_model.bin",
    interpolation="bicubic",
    model_card="https://huggingface.co/bioptimus/H-optimus-0",
    description="H-optimus-0 ViT-g/14 with 4 registers (1.1B parameters)",
)

REGISTRY: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="builtin",
            timm_name="",
            embed_dim=64,
            input_size=224,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            precision="fp32",
            pooling="avg",
            recommended_mpp=0.5,
            recommended_patch_px=224,
            license="MIT (part of slotspe-pipe; no weights)",
            gated=False,
            hf_hub_id=None,
            weights_filename=None,
            interpolation="area",
            framework="numpy",
            description="weights-free H&E descriptor: stain deconvolution, nuclei, texture",
        ),
        EncoderSpec(
            name="uni",
            timm_name="vit_large_patch16_224",
            timm_kwargs=_VIT_L16_UNI,
            embed_dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            pooling="cls",
            recommended_mpp=0.5,
            recommended_patch_px=256,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            hf_hub_id="MahmoodLab/UNI",
            weights_filename="pytorch_model.bin",
            model_card="https://huggingface.co/MahmoodLab/UNI",
            description="UNI ViT-L/16 (DINOv2, 100M patches); the SlotSPE paper's encoder",
        ),
        EncoderSpec(
            name="uni2-h",
            timm_name="vit_giant_patch14_224",
            timm_kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "num_classes": 0,
                "no_embed_class": True,
                "mlp_layer": "timm.layers.SwiGLUPacked",
                "act_layer": "torch.nn.SiLU",
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            embed_dim=1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="bf16",
            pooling="cls",
            recommended_mpp=0.5,
            recommended_patch_px=256,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            hf_hub_id="MahmoodLab/UNI2-h",
            weights_filename="pytorch_model.bin",
            model_card="https://huggingface.co/MahmoodLab/UNI2-h",
            description="UNI2-h ViT-H/14 with 8 register tokens, SwiGLU",
        ),
        EncoderSpec(
            name="virchow2",
            timm_name="vit_huge_patch14_224",
            timm_kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "num_classes": 0,
                "reg_tokens": 4,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
                "mlp_layer": "timm.layers.SwiGLUPacked",
                "act_layer": "torch.nn.SiLU",
            },
            embed_dim=2560,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="fp16",
            pooling="cls+mean_patch",
            recommended_mpp=0.5,
            recommended_patch_px=224,
            license="CC-BY-NC-ND-4.0",
            gated=True,
            hf_hub_id="paige-ai/Virchow2",
            weights_filename="pytorch_model.bin",
            interpolation="bicubic",
            model_card="https://huggingface.co/paige-ai/Virchow2",
            description="Virchow2 ViT-H/14, 4 registers; class token + mean patch token (2 x 1280)",
        ),
        _H_OPTIMUS_0,
        # Same architecture and preprocessing as H-optimus-0; other weights, licence and gating.
        dataclasses.replace(
            _H_OPTIMUS_0,
            name="h-optimus-1",
            license="non-commercial (Bioptimus H-optimus-1 licence, see model card)",
            gated=True,
            hf_hub_id="bioptimus/H-optimus-1",
            model_card="https://huggingface.co/bioptimus/H-optimus-1",
            description="H-optimus-1 ViT-g/14 with 4 registers",
        ),
        EncoderSpec(
            name="phikon-v2",
            timm_name="vit_large_patch16_224",
            timm_kwargs=_VIT_L16_UNI,
            embed_dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="fp32",
            pooling="cls",
            recommended_mpp=0.5,
            recommended_patch_px=224,
            license="Owkin non-commercial licence (other)",
            gated=False,
            hf_hub_id="owkin/phikon-v2",
            weights_filename="model.safetensors",
            weights_format="hf-dinov2",
            model_card="https://huggingface.co/owkin/phikon-v2",
            description="Phikon-v2 ViT-L/16 (DINOv2); transformers checkpoint mapped to timm",
        ),
        EncoderSpec(
            name="prov-gigapath",
            timm_name="vit_giant_patch14_dinov2",
            timm_kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            embed_dim=1536,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="fp16",
            pooling="cls",
            recommended_mpp=0.5,
            recommended_patch_px=256,
            license="Apache-2.0 (Prov-GigaPath licence terms on the model card)",
            gated=True,
            hf_hub_id="prov-gigapath/prov-gigapath",
            weights_filename="pytorch_model.bin",
            interpolation="bicubic",
            model_card="https://huggingface.co/prov-gigapath/prov-gigapath",
            description="Prov-GigaPath tile encoder ViT-g/16, SwiGLU (1.1B parameters)",
        ),
        EncoderSpec(
            name="resnet50-trunc",
            timm_name="resnet50",
            timm_kwargs={"num_classes": 0},
            drop_modules=("layer4",),
            embed_dim=1024,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            precision="fp32",
            pooling="avg",
            recommended_mpp=0.5,
            recommended_patch_px=256,
            license="BSD-3-Clause (torchvision ImageNet weights)",
            gated=False,
            hf_hub_id="timm/resnet50.tv_in1k",
            weights_filename="model.safetensors",
            model_card="https://huggingface.co/timm/resnet50.tv_in1k",
            description="ImageNet ResNet50 cut after layer3, average-pooled (CLAM's baseline)",
        ),
    )
}


def _swiglu_packed() -> Any:
    from timm.layers import SwiGLUPacked

    return SwiGLUPacked


def _silu() -> Any:
    from torch.nn import SiLU

    return SiLU


# Layer classes allowed in timm_kwargs, by the dotted name used in the table.
_LAYER_NAMES: dict[str, Callable[[], Any]] = {
    "timm.layers.SwiGLUPacked": _swiglu_packed,
    "torch.nn.SiLU": _silu,
}


def list_encoders() -> list[str]:
    """Registry names (``timm:<name>`` is accepted too but not listed)."""
    return list(REGISTRY)


def get_encoder(name: str) -> EncoderSpec:
    """The spec for ``name``: a registry entry or ``timm:<timm model name>``.

    Raises EncoderError naming the known encoders (or close timm names) when unknown.
    """
    key = name.strip()
    if key.lower() in REGISTRY:
        return REGISTRY[key.lower()]
    if key.startswith(TIMM_PREFIX):
        return _timm_spec(key[len(TIMM_PREFIX) :])
    raise EncoderError(
        f"unknown encoder {name!r}: expected one of {', '.join(REGISTRY)} or timm:<model name> "
        "(see `slotspe-pipe encoders`)"
    )


def _timm_spec(model_name: str) -> EncoderSpec:
    """Spec of an arbitrary timm model, facts from its pretrained config (built on 'meta')."""
    import timm
    import torch

    if not model_name or not timm.is_model(model_name.split(".")[0]):
        close = timm.list_models(f"*{model_name.split('.')[0][:12]}*")[:8] if model_name else []
        raise EncoderError(
            f"timm:{model_name}: not a timm model name"
            + (f" (close: {', '.join(close)})" if close else "")
        )
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    cfg = timm.data.resolve_model_data_config(model)
    _, height, width = cfg["input_size"]
    with torch.no_grad():
        out = model(torch.empty(1, 3, height, width, device="meta"))
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    hub = pcfg.get("hf_hub_id")
    return EncoderSpec(
        name=f"{TIMM_PREFIX}{model_name}",
        timm_name=model_name,
        timm_kwargs={"num_classes": 0},
        embed_dim=int(out.shape[-1]),
        input_size=int(height),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bilinear")),
        precision="bf16",
        pooling="model",
        recommended_mpp=0.5,
        recommended_patch_px=int(height),
        license=str(pcfg.get("license", "see the timm model card")),
        gated=False,
        hf_hub_id=hub,
        weights_filename="model.safetensors" if hub else None,
        model_card=f"https://huggingface.co/{hub}" if hub else None,
        description=f"timm model {model_name} (num_classes=0)",
    )


# --------------------------------------------------------------------------------------------
# Weights: identity, safe loading, key layouts


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed (weights files are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _expected_file(spec: EncoderSpec) -> str:
    if spec.hf_hub_id and spec.weights_filename:
        gate = " (gated: accept its licence on the hub first)" if spec.gated else ""
        return f"{spec.weights_filename} from https://huggingface.co/{spec.hf_hub_id}{gate}"
    return "a safetensors file or a plain state dict of exactly this timm model"


def resolve_weights(
    spec: EncoderSpec,
    weights: str | os.PathLike[str] | None = None,
    *,
    allow_random: bool = False,
    allow_download: bool = False,
) -> dict[str, Any]:
    """Where this encoder's weights come from, as recorded in the feature store.

    Returns ``{"path", "sha256", "random_init", "source"}``. A given path must exist (its
    sha256 is computed). Without a path: ``allow_download`` fetches ``weights_filename`` from
    ``hf_hub_id`` through the Hugging Face cache (timm's hub path); otherwise ``allow_random``
    records a random initialisation. Anything else raises WeightsError naming the encoder and
    the expected file. The builtin encoder has no weights.
    """
    if not spec.needs_weights:
        return {"path": None, "sha256": None, "random_init": False, "source": "none (no weights)"}
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"encoder {spec.name!r}: weights file {path} not found; expected "
                f"{_expected_file(spec)}"
            )
        return {
            "path": str(path.resolve()),
            "sha256": file_sha256(path),
            "random_init": False,
            "source": "local file",
        }
    if allow_download:
        if not (spec.hf_hub_id and spec.weights_filename):
            raise WeightsError(
                f"encoder {spec.name!r}: no hub location is known; pass --weights PATH "
                f"({_expected_file(spec)})"
            )
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(spec.hf_hub_id, spec.weights_filename)
        return {
            "path": str(Path(local).resolve()),
            "sha256": file_sha256(local),
            "random_init": False,
            "source": f"hf-hub:{spec.hf_hub_id}/{spec.weights_filename}",
        }
    if allow_random:
        return {"path": None, "sha256": None, "random_init": True, "source": "random init"}
    raise WeightsError(
        f"encoder {spec.name!r} needs weights: pass --weights PATH to {_expected_file(spec)}; "
        "or --allow-download to fetch them (needs network and, for gated models, a hub token); "
        "or --allow-random-weights for tests and benchmarks"
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain ``torch.save``-d state dict.

    Pickles are opened with ``weights_only=True`` only: a file whose unpickling would create
    arbitrary objects or run code is refused with WeightsError. A state dict wrapped as
    ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    import torch

    path = Path(path)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError ...
        raise WeightsError(
            f"{path}: refused or unreadable: only safetensors files and plain tensor state "
            f"dicts are loaded (torch.load weights_only=True); this file is neither ({exc})"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(obj)


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'.
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30


def hf_dinov2_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``Dinov2Model`` state dict onto timm ``VisionTransformer`` names.

    Accepts both the transformers 4.x layout of the published checkpoints
    (``attention.attention.query`` ... ``attention.output.dense``) and the 5.x layout
    (``attention.q_proj`` ... ``attention.o_proj``). Query, key and value are concatenated into
    timm's fused ``qkv``; the pre-training mask token is dropped. Unknown keys are kept as they
    are, so the strict comparison afterwards reports them.
    """
    import torch

    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "attention.o_proj": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "layer_scale1": "ls1",
        "layer_scale2": "ls2",
    }
    qkv_parts = {
        "attention.attention.query": "q",
        "attention.attention.key": "k",
        "attention.attention.value": "v",
        "attention.q_proj": "q",
        "attention.k_proj": "k",
        "attention.v_proj": "v",
    }
    pattern = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for raw_key, tensor in state.items():
        key = raw_key.removeprefix("dinov2.")
        if key == "embeddings.mask_token":
            continue
        m = pattern.match(key)
        if key in simple:
            out[simple[key]] = tensor
        elif m and m.group(2) in qkv_parts:
            part = qkv_parts[m.group(2)]
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[part] = (key, tensor)
        elif m and m.group(2) in block:
            kind = "gamma" if m.group(3) == "lambda1" else m.group(3)
            out[f"blocks.{m.group(1)}.{block[m.group(2)]}.{kind}"] = tensor
        else:
            out[key] = tensor
    for (i, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[p][1] for p in "qkv"], dim=0)
        else:  # incomplete triple: leave the keys for the mismatch report
            out.update(dict(parts.values()))
    return out


_WEIGHT_FORMATS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "timm": dict,
    "hf-dinov2": hf_dinov2_to_timm,
}


def _check_and_load(
    spec: EncoderSpec, backbone: nn.Module, state: Mapping[str, torch.Tensor], path: str
) -> None:
    """Load ``state`` strictly, or raise WeightsError listing missing/unexpected/mismatched keys."""
    state = _WEIGHT_FORMATS[spec.weights_format](state)
    expected = backbone.state_dict()
    # Weights of dropped submodules and of the classifier (absent with num_classes=0) are
    # ignored, so a full published checkpoint loads into the truncated / headless model.
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
    ignorable = tuple(
        f"{m}."
        for m in (
            *spec.drop_modules,
            *([classifier] if isinstance(classifier, str) else classifier),
        )
    )
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(ignorable)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise WeightsError(
            f"encoder {spec.name!r}: weights file {path} does not match the {spec.timm_name} "
            f"architecture ({'; '.join(parts)}); expected {_expected_file(spec)}"
        )
    backbone.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------
# Building


def _resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value in _LAYER_NAMES:
            value = _LAYER_NAMES[value]()
        out[key] = value
    return out


def _patch_encoder_class() -> type:
    """The torch module class, defined on first use so importing this module stays torch-free."""
    global _PatchEncoder
    if _PatchEncoder is not None:
        return _PatchEncoder
    import torch
    from torch import nn

    class PatchEncoder(nn.Module):
        """uint8 RGB patches (B, H, W, 3) on any device -> embeddings (B, D).

        Normalisation runs inside the module, on the device where the patches already are (so
        the loader ships 1 byte per value, not 4). ``embed`` takes already-normalised float
        NCHW input, for comparisons against hand-made preprocessing.
        """

        def __init__(self, spec: EncoderSpec, backbone: nn.Module):
            super().__init__()
            self.spec = spec
            self.backbone = backbone
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0))
            self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))

        def forward(self, patches: torch.Tensor) -> torch.Tensor:
            x = patches.permute(0, 3, 1, 2).float()
            x = (x - self.mean) * self.inv_std
            return self.embed(x)

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            pooling = self.spec.pooling
            if pooling == "model":
                return self.backbone(x)
            feats = self.backbone.forward_features(x)
            if pooling == "avg":
                return feats.mean(dim=(2, 3)) if feats.ndim == 4 else feats.mean(dim=1)
            cls = feats[:, 0]
            if pooling == "cls":
                return cls
            if pooling == "cls+mean_patch":
                return torch.cat([cls, feats[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)
            raise EncoderError(f"encoder {self.spec.name!r}: unknown pooling {pooling!r}")

    _PatchEncoder = PatchEncoder
    return PatchEncoder


_PatchEncoder: type | None = None


def build_encoder(
    spec: EncoderSpec | str,
    weights: str | os.PathLike[str] | None = None,
    *,
    allow_random: bool = False,
    allow_download: bool = False,
    device: str = "cpu",
) -> tuple[Any, dict[str, Any]]:
    """Build the encoder; return ``(module, weights identity)``.

    For torch encoders the module maps uint8 RGB ``(B, H, W, 3)`` to float ``(B, D)`` (see
    ``PatchEncoder``), in eval mode on ``device`` (``"meta"`` builds without allocating, for
    shape checks of the giant models). For the builtin encoder it is a
    :class:`~slotspe_pipe.builtin_encoder.BuiltinDescriptor` (numpy in, numpy out). The
    identity dict is the one of :func:`resolve_weights`. Raises EncoderError / WeightsError.
    """
    if isinstance(spec, str):
        spec = get_encoder(spec)
    identity = resolve_weights(
        spec, weights, allow_random=allow_random, allow_download=allow_download
    )
    if spec.framework == "numpy":
        from slotspe_pipe.builtin_encoder import BuiltinDescriptor

        return BuiltinDescriptor(), identity
    import timm
    import torch
    from torch import nn

    kwargs = _resolve_kwargs(spec.timm_kwargs)
    loading = bool(identity["path"]) and device != "meta"
    # With weights to load, skip the (slow, for 1B parameters) random init: build on 'meta'
    # and allocate empty storage, unless the model has non-persistent buffers that a state
    # dict would not restore.
    with torch.device("meta" if loading or device == "meta" else device):
        backbone = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    for name in spec.drop_modules:
        setattr(backbone, name, nn.Identity())
    if loading:
        persistent = set(backbone.state_dict())
        tensors = {n for n, _ in backbone.named_parameters()} | {
            n for n, _ in backbone.named_buffers()
        }
        if tensors <= persistent:
            backbone = backbone.to_empty(device="cpu")
        else:
            backbone = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
            for name in spec.drop_modules:
                setattr(backbone, name, nn.Identity())
        state = load_state_dict_file(identity["path"])
        _check_and_load(spec, backbone, state, identity["path"])
        del state
    module = _patch_encoder_class()(spec, backbone).to(device)
    module.eval()
    module.requires_grad_(False)
    return module, identity


# --------------------------------------------------------------------------------------------
# CLI: `slotspe-pipe encoders`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full table as JSON")


def run_cli(args: argparse.Namespace) -> int:
    if args.json:
        json.dump({n: s.to_dict() for n, s in REGISTRY.items()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    header = (
        "name",
        "architecture",
        "dim",
        "input",
        "µm/px",
        "patch",
        "precision",
        "pooling",
        "gated",
        "licence",
    )
    rows = [
        (
            s.name,
            s.timm_name or "(numpy descriptor)",
            str(s.embed_dim),
            str(s.input_size),
            f"{s.recommended_mpp:g}",
            str(s.recommended_patch_px),
            s.precision,
            s.pooling,
            "yes" if s.gated else "no",
            s.license,
        )
        for s in REGISTRY.values()
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print("\nAlso: timm:<model name> builds any timm model with num_classes=0.")
    return 0
