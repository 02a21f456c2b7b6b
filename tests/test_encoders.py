"""Encoder registry, weights handling and the builtin descriptor."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from slotspe_pipe import encoders
from slotspe_pipe.builtin_encoder import FEATURE_NAMES, N_FEATURES, describe
from slotspe_pipe.encoders import (
    POOLINGS,
    PRECISIONS,
    REGISTRY,
    EncoderError,
    WeightsError,
    build_encoder,
    get_encoder,
    hf_dinov2_to_timm,
    load_state_dict_file,
)

TORCH_SPECS = [name for name, spec in REGISTRY.items() if spec.framework == "torch"]


def test_registry_facts_are_consistent():
    required = {"uni", "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "phikon-v2"}
    required |= {"prov-gigapath", "resnet50-trunc", "builtin"}
    assert required <= set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert spec.precision in PRECISIONS
        assert spec.pooling in POOLINGS
        assert spec.embed_dim > 0 and spec.input_size > 0
        assert len(spec.mean) == 3 and len(spec.std) == 3 and min(spec.std) > 0
        assert 0.1 <= spec.recommended_mpp <= 2.0
        json.dumps(spec.to_dict())  # JSON-serialisable: goes into the store attrs
        if spec.framework == "torch":
            assert spec.hf_hub_id and spec.weights_filename and spec.license
    # Facts from the model cards that callers rely on.
    assert REGISTRY["uni"].embed_dim == 1024 and REGISTRY["uni"].timm_kwargs["patch_size"] == 16
    assert REGISTRY["virchow2"].pooling == "cls+mean_patch"
    assert REGISTRY["virchow2"].timm_kwargs["reg_tokens"] == 4
    assert REGISTRY["uni2-h"].timm_kwargs["reg_tokens"] == 8
    assert REGISTRY["h-optimus-0"].mean == (0.707223, 0.578729, 0.703617)


def test_get_encoder_unknown_name_lists_known():
    with pytest.raises(EncoderError, match="uni.*resnet50-trunc"):
        get_encoder("unii")
    assert get_encoder("UNI") is REGISTRY["uni"]


@pytest.mark.parametrize("name", TORCH_SPECS)
def test_registry_architecture_builds_with_documented_dim(name):
    """Every architecture builds (on 'meta': the 1B-parameter ones allocate nothing) and
    gives its documented embedding size, through the same module the extractor uses."""
    spec = REGISTRY[name]
    module, identity = build_encoder(spec, allow_random=True, device="meta")
    assert identity["random_init"] is True and identity["sha256"] is None
    x = torch.empty(2, spec.input_size, spec.input_size, 3, dtype=torch.uint8, device="meta")
    with torch.no_grad():
        out = module(x)
    assert tuple(out.shape) == (2, spec.embed_dim)


def test_resnet50_trunc_real_forward():
    module, _ = build_encoder("resnet50-trunc", allow_random=True)
    x = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = module(x)
    assert out.shape == (2, 1024) and torch.isfinite(out).all()
    # Normalisation inside the module equals normalising by hand and calling embed().
    mean = torch.tensor(REGISTRY["resnet50-trunc"].mean).view(1, 3, 1, 1)
    std = torch.tensor(REGISTRY["resnet50-trunc"].std).view(1, 3, 1, 1)
    manual = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.inference_mode():
        torch.testing.assert_close(module.embed(manual), out, rtol=1e-4, atol=1e-4)


def test_timm_name_spec_from_timm_data_config():
    spec = get_encoder("timm:resnet18")
    assert spec.embed_dim == 512 and spec.input_size == 224
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.pooling == "model"
    module, _ = build_encoder(spec, allow_random=True)
    with torch.inference_mode():
        out = module(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
    assert out.shape == (1, 512)
    with pytest.raises(EncoderError, match="not a timm model"):
        get_encoder("timm:definitely_not_a_model")


def test_weights_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source, _ = build_encoder("timm:resnet18", allow_random=True)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    loaded, identity = build_encoder("timm:resnet18", weights=path)
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity["random_init"] is False and identity["path"] == str(path.resolve())
    x = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), source(x))


def test_full_checkpoint_loads_into_truncated_resnet(tmp_path):
    """A whole ResNet50 state dict (with layer4 and fc, as published) fits resnet50-trunc."""
    import timm

    torch.manual_seed(1)
    full = timm.create_model("resnet50", num_classes=1000)
    path = tmp_path / "resnet50_full.pt"
    torch.save(full.state_dict(), path)
    module, identity = build_encoder("resnet50-trunc", weights=path)
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.testing.assert_close(module.backbone.conv1.weight, full.conv1.weight)
    torch.testing.assert_close(module.backbone.layer3[0].conv1.weight, full.layer3[0].conv1.weight)


def test_mismatched_weights_name_encoder_file_and_keys(tmp_path):
    import timm

    path = tmp_path / "wrong.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        build_encoder("resnet50-trunc", weights=path)
    msg = str(err.value)
    assert "'resnet50-trunc'" in msg and str(path) in msg
    assert "model.safetensors from https://huggingface.co/timm/resnet50.tv_in1k" in msg
    assert "missing: " in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatch" in msg


def test_missing_weights_file_and_no_weights_are_clear_errors(tmp_path):
    with pytest.raises(
        WeightsError, match=r"'uni': weights file .*nope.bin not found.*MahmoodLab/UNI"
    ):
        build_encoder("uni", weights=tmp_path / "nope.bin")
    with pytest.raises(WeightsError, match="--weights.*--allow-random-weights"):
        build_encoder("uni")


class _Payload:
    """Unpickling this runs Path.touch(marker): a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict_file(path)
    with pytest.raises(WeightsError, match="refused"):
        build_encoder("resnet50-trunc", weights=path)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_hf_dinov2_mapping_round_trip():
    """transformers' DINOv2 names (4.x and 5.x layouts) map onto timm's ViT exactly."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", init_values=1e-5, num_classes=0)
    sd = vit.state_dict()
    d = vit.embed_dim
    for attn_names in (
        ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ):
        hf = {
            "embeddings.cls_token": sd["cls_token"],
            "embeddings.mask_token": torch.zeros(1, d),
            "embeddings.position_embeddings": sd["pos_embed"],
            "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
            "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
            "layernorm.weight": sd["norm.weight"],
            "layernorm.bias": sd["norm.bias"],
        }
        proj = (
            "attention.output.dense"
            if "attention.attention" in attn_names[0]
            else "attention.o_proj"
        )
        for i in range(len(vit.blocks)):
            p, b = f"blocks.{i}.", f"encoder.layer.{i}."
            for kind in ("weight", "bias"):
                for j, part in enumerate(attn_names):
                    hf[f"{b}{part}.{kind}"] = sd[f"{p}attn.qkv.{kind}"][j * d : (j + 1) * d]
                hf[f"{b}{proj}.{kind}"] = sd[f"{p}attn.proj.{kind}"]
                for mod in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                    hf[f"{b}{mod}.{kind}"] = sd[f"{p}{mod}.{kind}"]
            hf[f"{b}layer_scale1.lambda1"] = sd[f"{p}ls1.gamma"]
            hf[f"{b}layer_scale2.lambda1"] = sd[f"{p}ls2.gamma"]
        mapped = hf_dinov2_to_timm(hf)
        assert set(mapped) == set(sd)
        for key, value in sd.items():
            torch.testing.assert_close(mapped[key], value, rtol=0, atol=0)


def test_encoders_cli_lists_every_entry(capsys):
    from slotspe_pipe.cli import main

    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert main(["encoders", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["virchow2"]["embed_dim"] == 2560


def test_builtin_listing_and_weights_need_no_torch():
    code = (
        "import sys\n"
        "from slotspe_pipe.encoders import get_encoder, resolve_weights\n"
        "from slotspe_pipe.builtin_encoder import describe\n"
        "import numpy as np\n"
        "spec = get_encoder('builtin')\n"
        "assert resolve_weights(spec)['sha256'] is None\n"
        "describe(np.full((1, 64, 64, 3), 200, np.uint8), 0.5)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# builtin descriptor


@pytest.fixture(scope="module")
def he_patches(cmu_small):
    from slotspe_pipe.slides import Slide

    with Slide(cmu_small) as slide:
        tissue = slide.read_region(800, 1200, 0, 224, 224)
        glass = slide.read_region(0, 0, 0, 224, 224)
    return tissue, glass


def test_builtin_descriptor_shape_and_meaning(he_patches):
    tissue, glass = he_patches
    feats = describe(np.stack([tissue, glass, np.full_like(glass, 255)]), 0.499)
    assert feats.shape == (3, N_FEATURES) == (3, len(FEATURE_NAMES)) == (3, 64)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert feats[0, col["tissue_fraction"]] > 0.5
    assert feats[0, col["nuclei_count"]] >= 5
    assert 100 < feats[0, col["nuclei_per_mm2"]] < 50_000
    assert 5 < feats[0, col["nucleus_area_um2_mean"]] < 200
    assert feats[0, col["h_od_mean"]] > feats[2, col["h_od_mean"]]
    # A white patch has no tissue and no nuclei.
    assert feats[2, col["tissue_fraction"]] == 0 and feats[2, col["nuclei_count"]] == 0
    # Deterministic.
    np.testing.assert_array_equal(describe(tissue[None], 0.499), feats[:1])


def test_builtin_density_is_physical(cmu_small):
    """The same tissue at 0.5 and at 1 µm/px gives the same nuclei per mm² and µm² areas."""
    import cv2

    from slotspe_pipe.slides import Slide

    with Slide(cmu_small) as slide:
        fine = slide.read_region(800, 1200, 0, 448, 448)
    coarse = cv2.resize(fine, (224, 224), interpolation=cv2.INTER_AREA)
    f_fine = describe(fine[None], 0.499)[0]
    f_coarse = describe(coarse[None], 0.998)[0]
    for name in ("nuclei_per_mm2", "nucleus_area_um2_mean", "h_od_mean"):
        i = FEATURE_NAMES.index(name)
        assert f_fine[i] > 0
        assert f_coarse[i] == pytest.approx(f_fine[i], rel=0.1), name


def test_builtin_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8 RGB"):
        describe(np.zeros((1, 32, 32), np.uint8), 0.5)
    with pytest.raises(ValueError, match="mpp"):
        describe(np.zeros((1, 32, 32, 3), np.uint8), 0.0)
    assert describe(np.zeros((0, 32, 32, 3), np.uint8), 0.5).shape == (0, 64)


def test_registry_module_does_not_import_torch_at_import():
    code = "import sys, slotspe_pipe.encoders; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert encoders.TIMM_PREFIX == "timm:"
