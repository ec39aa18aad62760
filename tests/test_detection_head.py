"""Tests for lmc_jax.detection: heat-map targets and losses, peak extraction with NMS on hand-made maps, the head
on patch tokens, windows and stitching, the threshold sweep and pooled scores (expectations worked by hand)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmc_jax.detection import data as ddata
from lmc_jax.detection import experiment, fit, heatmap
from lmc_jax.detection.head import DetectionHead, patch_grid
from lmc_jax.detection.peaks import find_peaks
from lmc_jax.models.vit import ViT


def _map(values: dict, shape=(10, 10)) -> np.ndarray:
    heat = np.zeros(shape, np.float32)
    for (i, j), v in values.items():
        heat[i, j] = v
    return heat


def test_peaks_threshold_and_min_distance_on_a_hand_made_map():
    heat = _map({(2, 2): 0.9, (2, 4): 0.8, (7, 7): 0.6, (8, 1): 0.3})
    # (2, 4) is 2 px from the better (2, 2): suppressed at min_distance 3, kept at 1.5; (8, 1) is under 0.5
    yx, scores = find_peaks(heat, 0.5, 3.0)
    np.testing.assert_array_equal(yx, [[2.5, 2.5], [7.5, 7.5]])
    np.testing.assert_array_equal(scores, np.float32([0.9, 0.6]))
    yx, scores = find_peaks(heat, 0.5, 1.5)
    np.testing.assert_array_equal(yx, [[2.5, 2.5], [2.5, 4.5], [7.5, 7.5]])
    yx, _ = find_peaks(heat, 0.2, 1.5)
    assert yx.tolist()[-1] == [8.5, 1.5]
    assert find_peaks(heat, 0.95, 1.0)[0].shape == (0, 2)  # nothing reaches the threshold


def test_nms_distance_is_euclidean_and_inclusive_and_plateaus_keep_one_cell():
    diagonal = _map({(0, 0): 0.9, (3, 3): 0.8})  # 3·√2 ≈ 4.24 px apart: a 7 × 7 max-filter would drop (3, 3)
    assert len(find_peaks(diagonal, 0.5, 3.0)[0]) == 2
    assert len(find_peaks(diagonal, 0.5, 3 * math.sqrt(2))[0]) == 1  # exactly min_distance: suppressed
    plateau = _map({(5, 5): 0.7, (5, 6): 0.7})  # both are maxima of their 3 × 3; the row-major first wins
    yx, _ = find_peaks(plateau, 0.5, 1.5)
    np.testing.assert_array_equal(yx, [[5.5, 5.5]])
    shoulder = _map({(4, 4): 0.9, (4, 5): 0.8})  # not a local maximum: never a peak, whatever the distance
    assert len(find_peaks(shoulder, 0.5, 0.1)[0]) == 1
    yx, _ = find_peaks(_map({(1, 2): 0.9}), 0.5, 8.0, stride=4)  # cell centres in pixels: (i + 0.5) · stride
    np.testing.assert_array_equal(yx, [[6.0, 10.0]])


def test_local_maxima_marks_plateaus_and_ignores_outside_cells():
    heat = jnp.asarray(_map({(0, 0): 0.5, (2, 2): 1.0, (2, 3): 1.0}, (4, 4)))
    mask = np.asarray(heatmap.local_maxima(heat, 3))
    assert mask[0, 0] and mask[2, 2] and mask[2, 3] and not mask[1, 1]
    assert mask[0, 3]  # a zero cell whose neighbourhood is all zeros is a (flat) maximum: the threshold drops it


def test_gaussian_targets_by_hand():
    centres = jnp.asarray([[[6.0, 6.0], [0.0, 0.0]]])
    targets = heatmap.gaussian_targets(centres, jnp.asarray([[True, False]]), jnp.asarray([2.0]), shape=(4, 4),
                                       stride=4)
    # cell centres at 2, 6, 10, 14 px: cell (1, 1) sits on the centre; (1, 2) is 4 px away → exp(−16/8)
    assert targets.shape == (1, 4, 4)
    assert float(targets[0, 1, 1]) == pytest.approx(1.0)
    assert float(targets[0, 1, 2]) == pytest.approx(math.exp(-2.0), rel=1e-6)
    assert float(targets[0, 0, 0]) == pytest.approx(math.exp(-32 / 8), rel=1e-6)  # the invalid (0, 0) adds nothing
    two = heatmap.gaussian_targets(jnp.asarray([[[2.0, 2.0], [2.0, 10.0]]]), jnp.ones((1, 2), bool),
                                   jnp.asarray([2.0]), shape=(4, 4), stride=4)
    assert float(two[0, 0, 0]) == pytest.approx(1.0) and float(two[0, 0, 2]) == pytest.approx(1.0)  # max, not sum
    empty = heatmap.gaussian_targets(jnp.zeros((1, 1, 2)), jnp.zeros((1, 1), bool), jnp.asarray([2.0]),
                                     shape=(4, 4), stride=4)
    assert float(jnp.max(empty)) == 0.0


def test_losses_by_hand():
    ln2 = math.log(2.0)
    logits, targets = jnp.zeros(2), jnp.asarray([1.0, 0.0])
    # p = 0.5 everywhere: each cell's BCE is ln 2 and its focal weight |t − p|² = 0.25; divided by Σt = 1
    assert float(heatmap.focal_loss(logits, targets, gamma=2.0)) == pytest.approx(2 * 0.25 * ln2)
    assert float(heatmap.focal_loss(logits, targets, gamma=0.0)) == pytest.approx(2 * ln2)
    assert float(heatmap.weighted_bce(logits, targets, pos_weight=9.0)) == pytest.approx(ln2)  # (9 ln2 + ln2) / 10
    # the focal weight vanishes on a confident correct cell
    assert float(heatmap.focal_loss(jnp.asarray([20.0]), jnp.asarray([1.0]))) == pytest.approx(0.0, abs=1e-12)


def test_patch_grid_drops_the_class_token_and_the_head_upsamples():
    encoder_def, encoder_params = nnx.split(ViT("mu/8", 24, pool="cls", rngs=nnx.Rngs(params=0)))
    head = DetectionHead(32, 8, 2, prior=0.01, rngs=nnx.Rngs(params=0))
    head_def, head_params = nnx.split(head)

    @jax.jit  # one compile instead of eager op-by-op dispatch
    def forward(encoder_params, head_params, images):
        encoder = nnx.merge(encoder_def, encoder_params)
        grid = patch_grid(encoder, images)
        return grid, encoder.tokens(images), nnx.merge(head_def, head_params)(grid)

    images = jnp.asarray(np.random.default_rng(0).random((2, 24, 24, 3)), jnp.float32)
    grid, tokens, logits = forward(encoder_params, head_params, images)
    assert grid.shape == (2, 3, 3, 32)
    np.testing.assert_allclose(grid[:, 1, 2], tokens[:, 1 + 1 * 3 + 2], rtol=1e-6)  # row 1, column 2; cls dropped
    assert logits.shape == (2, 6, 6) and logits.dtype == jnp.float32
    assert float(head.out.bias[0]) == pytest.approx(-math.log(99.0))  # starts at the prior's logit
    with pytest.raises(ValueError, match="upsample must be ≥ 1"):
        DetectionHead(32, 8, 0, rngs=nnx.Rngs(params=0))


def test_grid_windows_pad_white_and_stitch_back():
    pixels = np.random.default_rng(1).integers(0, 255, (10, 13, 3), dtype=np.uint8)
    windows, origins = ddata.grid_windows(pixels, 8)
    assert windows.shape == (4, 8, 8, 3) and origins.tolist() == [[0, 0], [0, 8], [8, 0], [8, 8]]
    whole = fit.stitch(windows, 2, 2)
    np.testing.assert_array_equal(whole[:10, :13], pixels)
    assert (whole[10:] == 255).all() and (whole[:, 13:] == 255).all()
    truths = np.array([[9.0, 12.5], [3.0, 3.0]])
    np.testing.assert_array_equal(ddata.centres_in(truths, origins[3], 8), [[1.0, 4.5]])
    assert ddata.centres_in(truths, origins[2], 8).shape == (0, 2)  # (9, 12.5) is right of window (8, 0)
    assert ddata.centres_in(truths, origins[1], 8, margin=2.0).tolist() == [[9.0, 4.5]]  # 1 px below its bottom


def _image(truths, mpp=0.25, scanner="hamamatsu_xr", image_id=1):
    truths = np.asarray(truths, float).reshape(-1, 2)
    return ddata.Image(image_id, scanner, np.zeros((64, 64, 3), np.uint8), truths, mpp)


def test_threshold_sweep_maximises_midog_f1_and_prefers_the_higher_threshold():
    images = [_image([[10.0, 10.0]])]
    # 0.9 is 2 px from the truth, 0.8 far away: t = 0.9 gives F1 1, t = 0.8 gives 2/3
    peaks = [(np.array([[10.0, 12.0], [50.0, 50.0]]), np.array([0.9, 0.8]))]
    assert experiment.threshold_sweep(peaks, images, 7.5, 100) == (0.9, 1.0)
    # the only peak near the truth is the weaker one: t = 0.8 finds it (F1 2/3), t = 0.9 does not (F1 0)
    peaks = [(np.array([[50.0, 50.0], [10.0, 12.0]]), np.array([0.9, 0.8]))]
    assert experiment.threshold_sweep(peaks, images, 7.5, 100) == pytest.approx((0.8, 2 / 3))
    # 31 px away: outside 7.5 µm at 0.25 µm/px (30 px), inside at 0.23 µm/px (32.6 px)
    far = [(np.array([[10.0, 41.0]]), np.array([0.7]))]
    assert experiment.threshold_sweep(far, images, 7.5, 100) == (0.7, 0.0)
    assert experiment.threshold_sweep(far, [_image([[10.0, 10.0]], mpp=0.23)], 7.5, 100) == (0.7, 1.0)
    assert experiment.threshold_sweep(far, [_image([])], 7.5, 100) is None


def test_pooled_scores_and_rows():
    assert experiment.pooled_scores(np.array([2, 1, 1])) == {
        "tp": 2, "fp": 1, "fn": 1, "undefined": {}, "f1": 4 / 6, "precision": 2 / 3, "recall": 2 / 3}
    empty = experiment.pooled_scores(np.array([0, 0, 0]))
    assert empty["f1"] is None and empty["undefined"] == {"f1": "no mitotic figures", "precision": "no detections",
                                                          "recall": "no mitotic figures"}
    assert experiment.pooled_scores(np.array([0, 3, 0]))["f1"] is None  # detections but nothing to find
    assert experiment.parse_row("macenko+lmc") == experiment.Row("macenko+lmc", "macenko", "lmc")
    assert experiment.trained_encoders(("geometric_only", "macenko+geometric_only", "lmc", "untrained")) == [
        "geometric_only", "lmc"]
    with pytest.raises(ValueError, match="names encoder 'nope'"):
        experiment.parse_row("macenko+nope")
    with pytest.raises(ValueError, match="names normaliser 'fancy'"):
        experiment.parse_row("fancy+lmc")


def test_training_windows_hold_every_figure_and_jittered_copies():
    pixels = np.full((40, 40, 3), 200, np.uint8)
    image = ddata.Image(1, "hamamatsu_xr", pixels, np.array([[4.0, 4.0], [30.0, 30.0]]), 0.25)
    cfg = ml_collections.ConfigDict({"sigma_microns": 0.5, "negatives_per_image": 1, "jitter_per_truth": 2,
                                     "batch_size": 4})
    w = fit.training_windows([image], 16, cfg, lambda x: x, np.random.default_rng(0))
    # 3 × 3 grid of 16-px windows: 2 hold a figure, 1 negative drawn, 2 × 2 jittered → 7 windows, 6 positive (a
    # negative next to a figure may carry it in its 3σ = 6 px margin, for its target, and still count as negative)
    assert len(w.images) == 7 and w.positive.sum() == 6
    np.testing.assert_array_equal(w.sigma, np.full(7, 2.0, np.float32))  # 0.5 µm at 0.25 µm/px
    np.testing.assert_array_equal(w.centres[0][w.valid[0]], [[4.0, 4.0]])


def test_train_head_freezes_the_encoder_unless_finetuning():
    encoder_def, encoder_params = nnx.split(ViT("mu/8", 24, pool="cls", rngs=nnx.Rngs(params=0)))
    rng = np.random.default_rng(0)
    windows = fit.Windows(rng.integers(0, 255, (4, 24, 24, 3), dtype=np.uint8),
                          np.array([[[12.0, 12.0]], [[4.0, 20.0]], [[0.0, 0.0]], [[0.0, 0.0]]], np.float32),
                          np.array([[True], [True], [False], [False]]), np.full(4, 2.0, np.float32))
    cfg = ml_collections.ConfigDict({"heatmap_stride": 4, "hidden": 8, "finetune_encoder": False, "loss": "focal",
                                     "focal_gamma": 2.0, "pos_weight": 50.0, "learning_rate": 1e-2,
                                     "weight_decay": 0.0, "num_steps": 3, "batch_size": 4, "positive_fraction": 0.5})
    before = jax.tree.leaves(encoder_params)
    frozen = fit.train_head(encoder_def, encoder_params, windows, cfg, seed=0)
    assert len(frozen.losses) == 3 and np.all(np.isfinite(frozen.losses))
    assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(frozen.encoder_params)))
    cfg.finetune_encoder = True
    tuned = fit.train_head(encoder_def, encoder_params, windows, cfg, seed=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(tuned.encoder_params)))
    heat = fit.heatmap_fn(tuned, lambda x: x, 4)(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    assert heat.shape == (8, 13) and np.all((heat >= 0) & (heat <= 1))  # ⌈30/4⌉ × ⌈50/4⌉ cells
