"""Feature extraction end to end: correctness against OpenSlide, alignment, reruns, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from slotspe_pipe.builtin_encoder import describe
from slotspe_pipe.cli import main as cli_main
from slotspe_pipe.extract import ExtractError, extract_features
from slotspe_pipe.patch_loader import (
    PatchGeometry,
    PatchLoader,
    RegionReadError,
    TiledTiffLevel,
    plan_regions,
)
from slotspe_pipe.slides import Slide, SlideError
from slotspe_pipe.store.features import FeatureReader, read_features
from slotspe_pipe.store.tiles import write_tiles
from slotspe_pipe.synthetic import write_synthetic_slide


def grid_tiles(
    slide_path: Path,
    out: Path,
    *,
    patch_px_level0: int,
    patch_px: int,
    read_level: int = 0,
    box: tuple[int, int, int, int] | None = None,
    shuffle_seed: int | None = None,
    slide_id: str = "slide",
    settings_hash: str | None = None,
) -> np.ndarray:
    """A tiles store on a regular grid over ``box`` (level-0 x0, y0, x1, y1); returns coords."""
    with Slide(slide_path) as slide:
        w, h = slide.dimensions
        mpp, reader, source = slide.mpp, slide.info.reader, slide.info.mpp_source
        ds = slide.level_downsamples[read_level]
    x0, y0, x1, y1 = box or (0, 0, w, h)
    xs = np.arange(x0, x1 - patch_px_level0 + 1, patch_px_level0)
    ys = np.arange(y0, y1 - patch_px_level0 + 1, patch_px_level0)
    coords = np.array([(x, y) for y in ys for x in xs], np.int32).reshape(-1, 2)
    if shuffle_seed is not None:
        coords = coords[np.random.default_rng(shuffle_seed).permutation(len(coords))]
    read_px = round(patch_px_level0 / ds)
    attrs = {
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "reader": reader,
        "mpp": mpp,
        "mpp_source": source,
        "target_mpp": mpp * patch_px_level0 / patch_px,
        "patch_px": patch_px,
        "patch_px_level0": patch_px_level0,
        "stride_px_level0": patch_px_level0,
        "read_level": read_level,
        "read_downsample": ds,
        "read_px": read_px,
        "resize": patch_px / read_px,
        "overlap": 0,
        "min_tissue": 0.0,
        "level0_dimensions": [w, h],
        "segmentation": {"method": "test grid"},
        "settings_hash": settings_hash or f"grid-{patch_px_level0}-{patch_px}-{read_level}-{box}",
    }
    write_tiles(out, coords, np.ones(len(coords), np.float32), attrs)
    return coords


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "syn.svs"
    write_synthetic_slide(path, 2048, 2048, mpp=0.5, objective_power=20, seed=3)
    return path


def _corrupt_tile(src: Path, dst: Path, x: int, y: int) -> None:
    """Copy ``src`` and break the JPEG tile of level 0 holding level-0 pixel (x, y)."""
    import tifffile

    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        idx = (y // page.tilelength) * ((page.imagewidth + page.tilewidth - 1) // page.tilewidth)
        idx += x // page.tilewidth
        offset = page.dataoffsets[idx]
    data[offset : offset + 64] = bytes(64)  # no SOI marker: undecodable
    dst.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# Correctness


def test_features_match_independent_openslide_reads(cmu_small, tmp_path):
    """Pipeline features equal the same model on patches read one by one with OpenSlide
    read_region at level 0, resized and normalised by hand (cosine > 0.99).

    Random-weight CNN features are all-positive, so their raw cosine is high for any two
    patches; the centred cosine (features minus the mean over patches) is checked too, and a
    16 px shifted read must fail it, so this test can tell a misplaced or mis-coloured patch.
    """
    import openslide
    import torch
    from safetensors.torch import save_file

    from slotspe_pipe.encoders import REGISTRY, build_encoder

    torch.manual_seed(0)
    source, _ = build_encoder("resnet50-trunc", allow_random=True)
    weights = tmp_path / "r50trunc.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(weights))
    tiles = tmp_path / "tiles.zarr"
    coords = grid_tiles(
        cmu_small, tiles, patch_px_level0=256, patch_px=224, box=(128, 456, 2048, 1736)
    )
    assert len(coords) == 35
    out = tmp_path / "feats.zarr"
    result = extract_features(
        cmu_small,
        tiles,
        out,
        "resnet50-trunc",
        weights=weights,
        batch_size=16,
        workers=1,
        progress=False,
    )
    assert result.status == "ok" and result.n_patches == len(coords)
    feats, store_coords, attrs = read_features(out)
    np.testing.assert_array_equal(store_coords, coords)
    assert attrs["weights"]["random_init"] is False and len(attrs["weights"]["sha256"]) == 64

    spec = REGISTRY["resnet50-trunc"]
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    module, _ = build_encoder(spec, weights=weights)
    osr = openslide.OpenSlide(str(cmu_small))

    def reference(shift: int = 0) -> np.ndarray:
        batch = []
        for x, y in coords.tolist():
            rgba = np.asarray(osr.read_region((x + shift, y + shift), 0, (256, 256)))
            rgb = cv2.resize(rgba[..., :3], (224, 224), interpolation=cv2.INTER_AREA)
            batch.append(((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
        with torch.inference_mode():
            return module.embed(torch.from_numpy(np.stack(batch))).numpy()

    ref = reference()
    got = feats.astype(np.float32)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    assert cosine(got, ref).min() > 0.99
    centre = ref.mean(axis=0)
    assert cosine(got - centre, ref - centre).min() > 0.99
    shifted = reference(shift=16)
    assert cosine(shifted - centre, ref - centre).min() < 0.9  # the check is discriminative


def test_builtin_rows_follow_tiles_order_and_use_no_torch(cmu_small, tmp_path):
    """Shuffled tiles: row i of the store is the patch at coords[i] (read independently)."""
    tiles = tmp_path / "tiles.zarr"
    coords = grid_tiles(
        cmu_small, tiles, patch_px_level0=224, patch_px=224, box=(0, 0, 1792, 1792), shuffle_seed=1
    )
    out = tmp_path / "feats.zarr"
    status = tmp_path / "status.json"
    code = (
        "import sys\n"
        "from slotspe_pipe.cli import main\n"
        f"rc = main(['extract', {str(cmu_small)!r}, '--tiles', {str(tiles)!r}, '-o', {str(out)!r},"
        f" '--encoder', 'builtin', '--workers', '2', '--status-json', {str(status)!r}, '--no-progress'])\n"
        "assert 'torch' not in sys.modules, 'torch imported on the builtin path'\n"
        "sys.exit(rc)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    record = json.loads(status.read_text())
    assert record["status"] == "ok" and record["n_patches"] == len(coords) == 64
    assert record["patches_per_s"] > 0
    reader = FeatureReader(out)
    np.testing.assert_array_equal(reader.coords(), coords)
    assert reader.attrs["input_mpp"] == pytest.approx(0.499, rel=1e-3)
    assert reader.attrs["read_route"] == "tiff-tiles"
    with Slide(cmu_small) as slide:
        for i in (0, 17, 63):
            x, y = coords[i]
            expected = describe(slide.read_region(int(x), int(y), 0, 224, 224)[None], 0.499)
            np.testing.assert_allclose(
                reader.features(np.array([i]))[0], expected[0].astype(np.float16), rtol=1e-3
            )


def test_rerun_skips_and_changed_tiles_recompute(cmu_small, tmp_path):
    tiles = tmp_path / "tiles.zarr"
    box = (0, 0, 896, 896)
    grid_tiles(cmu_small, tiles, patch_px_level0=224, patch_px=224, box=box, settings_hash="a")
    out = tmp_path / "feats.zarr"
    first = extract_features(cmu_small, tiles, out, workers=0, progress=False)
    assert first.status == "ok"
    stamp = (out / "zarr.json").stat().st_mtime_ns
    second = extract_features(cmu_small, tiles, out, workers=0, progress=False)
    assert second.status == "skipped" and second.n_patches == first.n_patches
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    grid_tiles(cmu_small, tiles, patch_px_level0=224, patch_px=224, box=box, settings_hash="b")
    third = extract_features(cmu_small, tiles, out, workers=0, progress=False)
    assert third.status == "ok"
    assert FeatureReader(out).attrs["tiles_settings_hash"] == "b"


def test_rerun_respects_the_kind_of_weights(cmu_small, tmp_path):
    """A store made with random weights is not reused for real weights, and vice versa."""
    from safetensors.torch import save_file

    from slotspe_pipe.encoders import build_encoder

    module, _ = build_encoder("resnet50-trunc", allow_random=True)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in module.backbone.state_dict().items()}, str(weights))
    tiles = tmp_path / "tiles.zarr"
    grid_tiles(cmu_small, tiles, patch_px_level0=224, patch_px=224, box=(0, 0, 100, 100))
    out = tmp_path / "feats.zarr"

    def run(**kw):
        return extract_features(
            cmu_small, tiles, out, "resnet50-trunc", progress=False, **kw
        ).status

    assert run(allow_random=True) == "ok"
    assert run(allow_random=True) == "skipped"
    assert run(weights=weights) == "ok"
    assert FeatureReader(out).attrs["weights"]["sha256"] is not None
    assert run(weights=weights) == "skipped"
    assert run(allow_random=True) == "ok"
    assert FeatureReader(out).attrs["weights"]["random_init"] is True


@pytest.mark.parametrize("encoder", ["builtin", "resnet50-trunc"])
def test_empty_tiles_store_gives_valid_empty_store(cmu_small, tmp_path, encoder):
    tiles = tmp_path / "tiles.zarr"
    coords = grid_tiles(cmu_small, tiles, patch_px_level0=224, patch_px=224, box=(0, 0, 100, 100))
    assert len(coords) == 0
    out = tmp_path / "feats.zarr"
    result = extract_features(cmu_small, tiles, out, encoder, allow_random=True, progress=False)
    assert result.status == "ok" and result.n_patches == 0
    reader = FeatureReader(out)
    dim = 64 if encoder == "builtin" else 1024
    assert reader.n == 0 and reader.dim == dim
    assert reader.features().shape == (0, dim) and reader.coords().shape == (0, 2)


def test_corrupt_tile_mid_slide_gives_failure_record(synthetic_slide, tmp_path):
    broken = tmp_path / "broken.svs"
    _corrupt_tile(synthetic_slide, broken, 1024, 1024)
    tiles = tmp_path / "tiles.zarr"
    grid_tiles(broken, tiles, patch_px_level0=256, patch_px=224, slide_id="broken")
    out = tmp_path / "feats.zarr"
    status = tmp_path / "status.json"
    args = ["extract", str(broken), "--tiles", str(tiles), "-o", str(out), "--no-progress"]
    args += ["--workers", "2", "--region-patches", "2", "--status-json", str(status)]
    assert cli_main(args) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "failed" and record["slide_id"] == "broken"
    assert str(broken) in record["reason"] and "region #" in record["reason"]
    assert "level-0 x=1024, y=1024" in record["reason"]
    assert not out.exists()
    assert cli_main([*args, "--strict"]) == 1
    # The OpenSlide route fails the same way, with the slide named, and does not hang.
    with pytest.raises((RegionReadError, SlideError), match="broken.svs"):
        extract_features(
            broken, tiles, out, workers=1, region_patches=2, direct_tiff=False, progress=False
        )


def test_unreadable_real_slide_gives_failure_record(testdata, tmp_path):
    slide = testdata / "wsi" / "openslide-python-fixtures" / "unreadable.svs"
    tiles = tmp_path / "tiles.zarr"
    grid_tiles(slide, tiles, patch_px_level0=16, patch_px=16, slide_id="unreadable")
    status = tmp_path / "status.json"
    out = tmp_path / "feats.zarr"
    rc = cli_main(
        ["extract", str(slide), "--tiles", str(tiles), "-o", str(out), "--status-json", str(status)]
    )
    assert rc == 0
    record = json.loads(status.read_text())
    assert record["status"] == "failed" and "unreadable.svs" in record["reason"]
    assert not out.exists()


def test_worker_timeout_is_an_error_not_a_hang(synthetic_slide):
    geometry = PatchGeometry(256, 0, 1.0, 256, 224)
    jobs = plan_regions(np.array([[512, 512], [768, 512]]), geometry)
    with (
        pytest.raises(RegionReadError, match="no result from the loader worker"),
        PatchLoader(synthetic_slide, jobs, geometry, workers=1, timeout_s=0.001) as loader,
    ):
        list(loader)


def test_configuration_errors_stop_with_exit_2(cmu_small, synthetic_slide, tmp_path):
    tiles = tmp_path / "tiles.zarr"
    grid_tiles(cmu_small, tiles, patch_px_level0=224, patch_px=224, box=(0, 0, 448, 448))
    status = tmp_path / "status.json"
    base = ["extract", "--tiles", str(tiles), "-o", str(tmp_path / "f.zarr")]
    base += ["--status-json", str(status)]
    assert cli_main([*base[:1], str(cmu_small), *base[1:], "--encoder", "uni"]) == 2
    assert cli_main([*base[:1], str(cmu_small), *base[1:], "--encoder", "nope"]) == 2
    assert not status.exists()  # not a slide failure: nothing recorded, the job fails
    with pytest.raises(ExtractError, match="wrong pairing"):
        extract_features(synthetic_slide, tiles, tmp_path / "g.zarr", progress=False)


# --------------------------------------------------------------------------------------------
# Loader units


def test_plan_regions_partitions_rows():
    geometry = PatchGeometry(512, 0, 1.0, 512, 224)
    rng = np.random.default_rng(0)
    dense = np.array([(x, y) for y in range(0, 20 * 512, 512) for x in range(0, 20 * 512, 512)])
    sparse = rng.integers(0, 200, (60, 2)) * 512
    for coords in (dense, np.unique(sparse, axis=0)):
        jobs = plan_regions(coords, geometry, region_patches=8)
        rows = np.concatenate([j.rows for j in jobs])
        assert sorted(rows.tolist()) == list(range(len(coords)))
        for job in jobs:
            assert job.n <= 64
            assert job.width <= 16 * 512 and job.height <= 16 * 512
            assert (job.offsets >= 0).all()
            assert (job.offsets + 512 <= [job.width, job.height]).all()
        if coords is dense:
            assert len(jobs) == 9  # 20 x 20 patches in 8 x 8 cells
    # A diagonal is not read as a dense square of glass.
    diagonal = np.array([(i * 512, i * 512) for i in range(8)])
    jobs = plan_regions(diagonal, geometry, region_patches=8)
    area = sum(j.width * j.height for j in jobs)
    assert area <= 4 * 8 * 512 * 512


def test_direct_tile_decoding_equals_slide_reads(cmu_small, synthetic_slide):
    for path, level, regions in (
        (cmu_small, 0, [(0, 0, 500, 300), (1000, 2500, 700, 700), (2100, 2900, 300, 200)]),
        (synthetic_slide, 1, [(0, 0, 512, 512), (100, 37, 90, 200), (400, 400, 200, 200)]),
    ):
        with Slide(path) as slide:
            w, h = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            direct = TiledTiffLevel(path, w, h)
            try:
                for lx, ly, rw, rh in regions:
                    ref = slide.read_region(round(lx * ds), round(ly * ds), level, rw, rh)
                    np.testing.assert_array_equal(direct.read(lx, ly, rw, rh), ref)
            finally:
                direct.close()


def test_loader_workers_and_inline_agree(synthetic_slide):
    geometry = PatchGeometry(256, 0, 1.0, 256, 224)
    coords = np.array([(x, y) for y in range(256, 1792, 256) for x in range(256, 1792, 256)])
    jobs = plan_regions(coords, geometry, region_patches=2)
    outs = []
    for workers, direct in ((0, False), (2, True)):
        out = np.zeros((len(coords), 224, 224, 3), np.uint8)
        with PatchLoader(
            synthetic_slide, jobs, geometry, workers=workers, direct_tiff=direct
        ) as loader:
            for item in loader:
                out[item.rows] = item.data
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    with Slide(synthetic_slide) as slide:
        x, y = coords[5]
        patch = slide.read_region(int(x), int(y), 0, 256, 256)
    np.testing.assert_array_equal(
        outs[1][5], cv2.resize(patch, (224, 224), interpolation=cv2.INTER_AREA)
    )


def test_loader_leaves_no_shared_buffer_behind(synthetic_slide):
    geometry = PatchGeometry(256, 0, 1.0, 256, 224)
    jobs = plan_regions(np.array([[0, 0], [256, 0]]), geometry)
    loader = PatchLoader(synthetic_slide, jobs, geometry, workers=1)
    with loader:
        path = loader._slots_file
        assert path is not None and os.path.exists(path)
        assert sum(item.job.n for item in loader) == 2
    assert not os.path.exists(path)
