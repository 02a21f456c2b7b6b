"""Attention drawn as patch squares over the slide thumbnail: geometry, colours, records, figures.

The thumbnails are synthetic (a textured RGB array) so every expected pixel is known: a patch's
square must land on exactly the thumbnail pixels its level-0 box covers, and everywhere else the
tissue must come through untouched.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from slotspe_pipe import attention_overlay as ov
from slotspe_pipe.evaluate import plot_slot_attention, write_attention_record

LEVEL0 = (4000, 3000)  # level-0 px of the synthetic slide
PATCH = 256  # level-0 px


def _tissue(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A pink, noisy 'H&E' thumbnail: every pixel differs, so any change is detectable."""
    rng = np.random.default_rng(seed)
    base = np.array([214, 140, 190], np.int16)
    noise = rng.integers(-30, 30, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _grid(nx: int, ny: int, x0: int = 0, y0: int = 0, step: int = PATCH) -> np.ndarray:
    xs, ys = np.meshgrid(x0 + np.arange(nx) * step, y0 + np.arange(ny) * step)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int32)


def _expected_colour(base: np.ndarray, norm: float, alpha: float) -> np.ndarray:
    colour = np.asarray(matplotlib.colormaps[ov.DEFAULT_CMAP](norm)[:3]) * 255.0
    return np.round(base.astype(float) * (1 - alpha) + colour * alpha)


def test_one_hot_patch_is_coloured_exactly_on_its_thumbnail_rectangle() -> None:
    thumb = _tissue(200, 150)  # 4000 x 3000 level-0 px at 0.05 thumbnail px per level-0 px
    scale, warning = ov.thumbnail_scale((200, 150), level0_wh=LEVEL0)
    assert scale == (0.05, 0.05) and warning is None
    coords = _grid(6, 4, x0=512, y0=256)
    hot = 15  # level-0 (1280, 768): thumbnail x 64..76.8, y 38.4..51.2
    assert tuple(coords[hot]) == (1280, 768)
    values = np.zeros(len(coords))
    values[hot] = 1.0
    canvas = ov.Canvas(thumb, scale)
    boxes = ov.patch_boxes(canvas, coords, PATCH)
    assert boxes[hot].tolist() == [64, 38, 77, 51]

    out, limits = ov.draw_overlay(canvas, coords, values, PATCH)
    assert limits[1] < 1.0  # 99th percentile: the single hot patch is above it, drawn at the top
    x0, y0, x1, y1 = boxes[hot]
    top = _expected_colour(thumb[y0:y1, x0:x1], 1.0, ov.DEFAULT_ALPHA[1])
    np.testing.assert_allclose(out[y0:y1, x0:x1], top, atol=1)
    # Just outside the hot rectangle (inside neighbouring patches) the colour is the cold one.
    for y, x in ((y0 - 1, x0), (y1, x0), (y0, x0 - 1), (y0, x1)):
        cold = _expected_colour(thumb[y, x], 0.0, ov.DEFAULT_ALPHA[0])
        np.testing.assert_allclose(out[y, x], cold, atol=1)
    # Outside every patch the tissue shows through unchanged, pixel for pixel.
    covered = np.zeros(thumb.shape[:2], bool)
    for bx0, by0, bx1, by1 in boxes:
        covered[by0:by1, bx0:bx1] = True
    assert covered.sum() < covered.size  # the patches do not cover the whole slide
    np.testing.assert_array_equal(out[~covered], thumb[~covered])
    assert not np.array_equal(out[covered], thumb[covered])


def test_square_size_follows_slide_and_thumbnail_mpp() -> None:
    # A 0.25 µm/px scan under a 4 µm/px thumbnail: 16 level-0 px per thumbnail px.
    scale, _ = ov.thumbnail_scale((250, 250), slide_mpp=0.25, thumbnail_mpp=4.0)
    assert scale == (0.0625, 0.0625)
    canvas = ov.Canvas(_tissue(250, 250), scale)
    assert ov.patch_boxes(canvas, np.array([[1600, 3200]]), 512).tolist() == [[100, 200, 132, 232]]
    # The same 512 level-0 px patch of a 0.5 µm/px scan covers twice the tissue: twice the square.
    scale_05, _ = ov.thumbnail_scale((300, 300), slide_mpp=0.5, thumbnail_mpp=4.0)
    box = ov.patch_boxes(ov.Canvas(_tissue(300, 300), scale_05), np.array([[800, 1600]]), 512)
    assert box.tolist() == [[100, 200, 164, 264]]
    # The thumbnail's own size, when the level-0 size is known, gives the same scale...
    by_size, warning = ov.thumbnail_scale(
        (250, 200), level0_wh=(4000, 3200), slide_mpp=0.25, thumbnail_mpp=4.0
    )
    assert by_size == (0.0625, 0.0625) and warning is None
    # ...and a thumbnail whose µm/px does not fit its size is drawn by size, with a warning.
    by_size, warning = ov.thumbnail_scale(
        (250, 200), level0_wh=(8000, 6400), slide_mpp=0.25, thumbnail_mpp=4.0
    )
    assert by_size == (250 / 8000, 200 / 6400) and "drawn by size" in warning
    with pytest.raises(ValueError, match="thumbnail scale unknown"):
        ov.thumbnail_scale((250, 200), slide_mpp=0.25)


def test_adjacent_patches_tile_without_gaps_or_double_rows() -> None:
    canvas = ov.Canvas(_tissue(300, 300), (0.0317, 0.0291))  # scales that do not divide 256
    coords = _grid(9, 7, x0=300, y0=500)
    boxes = ov.patch_boxes(canvas, coords, PATCH)
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
    raster = ov.attention_raster(canvas.shape_hw, boxes, np.arange(len(coords), dtype=float))
    union = np.isfinite(raster)
    assert areas == union.sum()  # no pixel drawn twice
    ys, xs = np.nonzero(union)
    assert union[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # and no gap


def test_overlapping_patches_show_the_larger_value() -> None:
    canvas = ov.Canvas(_tissue(100, 100), (0.1, 0.1))
    coords = np.array([[0, 0], [128, 128]])  # 50% overlap at 256 px
    boxes = ov.patch_boxes(canvas, coords, PATCH)
    for values in ([1.0, 5.0], [5.0, 1.0]):
        raster = ov.attention_raster(canvas.shape_hw, boxes, np.array(values))
        assert raster[15, 15] == 5.0  # the overlap
        assert raster[5, 5] == values[0] and raster[30, 30] == values[1]
        assert np.isnan(raster[60, 60])


def test_colour_limits_are_percentile_clipped() -> None:
    values = np.r_[np.linspace(0.0, 2.0, 200), 500.0]  # one outlier patch
    lo, hi = ov.colour_limits(values)
    assert lo == pytest.approx(np.percentile(values, 1)) and hi < 3.0
    assert ov.colour_limits(np.r_[np.zeros(10), 1.0], (1, 50)) == (0.0, 1.0)  # min/max fallback
    lo, hi = ov.colour_limits(np.full(5, 2.0))
    assert lo < 2.0 < hi and (lo + hi) / 2 == pytest.approx(2.0)


def test_crop_keeps_patches_on_their_tissue() -> None:
    thumb = _tissue(400, 300)
    canvas = ov.Canvas(thumb, (0.1, 0.1))
    coords = _grid(5, 3, x0=1000, y0=1200)
    values = np.zeros(len(coords))
    values[7] = 1.0
    crop = canvas.crop(ov.patches_box(coords, PATCH), 300, 300)
    assert crop.shape_hw[1] <= 300 and crop.shape_hw[0] <= 300
    out, _ = ov.draw_overlay(crop, coords, values, PATCH)
    box = ov.patch_boxes(crop, coords[7:8], PATCH)[0]
    # Map the hot square back to level 0 through the crop's origin and scale.
    x0 = crop.origin[0] + box[0] / crop.scale[0]
    y0 = crop.origin[1] + box[1] / crop.scale[1]
    assert (
        abs(x0 - coords[7, 0]) <= 1 / crop.scale[0] and abs(y0 - coords[7, 1]) <= 1 / crop.scale[1]
    )
    hot = _expected_colour(np.zeros(3), 1.0, 1.0)
    centre = out[(box[1] + box[3]) // 2, (box[0] + box[2]) // 2].astype(float)
    assert np.abs(centre - hot).sum() < np.abs(out[1, 1].astype(float) - hot).sum()
    # The crop is the thumbnail's own pixels (enlarged at most 2x): tissue colours survive.
    assert abs(crop.image.mean() - thumb[100:180, 80:180].mean()) < 10


def test_render_panel_draws_the_overlay_one_to_one_with_a_colour_bar() -> None:
    thumb = _tissue(200, 150)
    canvas = ov.Canvas(thumb, (0.05, 0.05))
    coords = _grid(6, 4, x0=512, y0=256)
    values = np.linspace(0.0, 3.0, len(coords))
    panel = ov.render_panel(canvas, coords, values, PATCH, max_px=(240, 240))
    crop = canvas.crop(ov.patches_box(coords, PATCH), 240, 240)
    expected, _ = ov.draw_overlay(crop, coords, values, PATCH, limits=panel.limits)
    img = np.asarray(ov.figure_image(panel.figure))
    h, w = expected.shape[:2]
    assert img.shape[1] > w + 40  # room for the colour bar and its label
    diff = np.abs(img[:h, :w].astype(int) - expected.astype(int))
    assert np.median(diff) == 0 and diff.mean() < 2  # drawn 1:1, not resampled
    assert panel.n_patches == len(coords) and panel.clipped_high == 1  # only the top value


def test_records_round_trip_and_bad_shapes_name_the_field(tmp_path) -> None:
    coords = _grid(4, 2)
    attention = np.full((3, 8), 1 / 8)
    path = tmp_path / "P1.npz"
    write_attention_record(
        path,
        case_id="P1",
        arrays={
            "coords": coords,
            "patch_slide": np.r_[np.zeros(5), np.ones(3)].astype(np.int32),
            "wsi_slot_attention": attention,
            "wsi_gate": np.array([0.0, 0.7, 0.2]),
            "omics_slot_attention": np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [1, 0, 0]]),
            "omics_gate": np.array([0.0, 0.4, 0.9]),
        },
        slide_ids=["S1", "S2"],
        pathways=["A", "B", "C"],
    )
    record = ov.load_attention_record(path)
    assert record.case_id == "P1" and record.slide_ids == ("S1", "S2")
    assert record.n_patches == 8 and record.slides_with_patches() == [0, 1]
    assert ov.top_slots(3, record.wsi_gate, 2) == [1, 2]
    assert ov.top_slots(3, None, 2) == [0, 1]
    assert ov.top_slots(3, np.zeros(3), 1) == [0]  # nothing kept: still something to show
    pathways = ov.top_pathways(record.omics_attention, record.omics_gate, record.pathways, top=2)
    assert pathways == [(2, 0.9, [("A", 1.0), ("B", 0.0)]), (1, 0.4, [("A", 0.5), ("C", 0.3)])]

    bad = tmp_path / "bad.npz"
    np.savez(
        bad, coords=coords, patch_slide=np.zeros(8, np.int32), wsi_slot_attention=np.ones((3, 7))
    )
    with pytest.raises(
        ov.AttentionRecordError, match=r"bad.npz: field 'wsi_slot_attention'.*\(slots, 8\)"
    ):
        ov.load_attention_record(bad)
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ov.AttentionRecordError, match="not a readable"):
        ov.load_attention_record(tmp_path / "trunc.npz")

    abmil = tmp_path / "P2.npz"
    np.savez(
        abmil, coords=coords, patch_slide=np.zeros(8, np.int32), patch_attention=np.ones(8) / 8
    )
    single = ov.load_attention_record(abmil)
    assert single.single_map and single.wsi_attention.shape == (1, 8) and single.case_id == "P2"


def test_slide_panels_fall_back_to_a_blank_canvas_at_the_grid_step(tmp_path) -> None:
    coords = np.r_[_grid(4, 3), _grid(2, 2, x0=50000)]
    values = np.zeros((2, len(coords)))
    values[0, 13] = 1.0  # a patch of the second slide
    values[1] = 1 / len(coords)
    path = tmp_path / "P3.npz"
    np.savez(
        path,
        coords=coords,
        patch_slide=np.r_[np.zeros(12), np.ones(4)].astype(np.int32),
        wsi_slot_attention=values,
        wsi_gate=np.array([0.5, 0.8]),
        slide_ids=np.array(["A", "B"]),
    )
    record = ov.load_attention_record(path)
    assert ov.infer_patch_px_level0(coords[12:]) == PATCH
    panels = ov.slide_panels(record, 1, None, None, max_slots=2, max_px=(200, 200))
    assert [(slot, gate) for slot, gate, _ in panels] == [(1, 0.8), (0, 0.5)]
    uniform = panels[0][2]
    assert uniform.limits[0] < 1.0 < uniform.limits[1]  # weight x N: uniform attention is 1
    img = np.asarray(ov.figure_image(panels[1][2].figure))
    assert (img == 255).all(axis=2).any()  # a white (blank) background, no tissue


def test_plot_slot_attention_keeps_its_signature_and_writes_atomically(tmp_path) -> None:
    coords = np.r_[_grid(5, 4), _grid(3, 2, x0=20000)]
    n = len(coords)
    attention = np.random.default_rng(0).random((4, n))
    attention /= attention.sum(axis=1, keepdims=True)
    out = tmp_path / "fold_0" / "attention" / "P1.png"
    plot_slot_attention(
        out,
        coords,
        np.r_[np.zeros(20), np.ones(6)].astype(np.int32),
        ["S1", "S2"],
        attention,
        np.array([0.0, 0.9, 0.0, 0.3]),
        "P1: WSI slot attention (top gated slots)",
    )
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 400
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert (np.ptp(rgb, axis=2) > 100).sum() > 1000  # coloured squares were drawn
    assert sorted(p.name for p in out.parent.iterdir()) == ["P1.png"]
    # Without a gate, and with the true patch size given.
    plot_slot_attention(
        out, coords, np.zeros(n, np.int32), ["S1"], attention, None, "t", patch_px_level0=PATCH
    )
    assert out.is_file()


def test_save_figure_writes_jpeg_atomically(tmp_path) -> None:
    canvas = ov.Canvas(_tissue(120, 90), (0.05, 0.05))
    panel = ov.render_panel(canvas, _grid(3, 2), np.arange(6.0), PATCH)
    path = ov.save_figure(panel.figure, tmp_path / "panel.jpg")
    with Image.open(path) as img:
        assert img.format == "JPEG"
    assert [p.name for p in tmp_path.iterdir()] == ["panel.jpg"]
