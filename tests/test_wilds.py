"""lmc_jax/finetune.py and the WILDS leaderboard's rows: the fine-tune step, model selection, the table layout."""

import jax
import numpy as np
import pytest
from flax import nnx

from lmc_jax import finetune
from lmc_jax.models.vit import ViT
from lmc_jax.modes import wilds

SIZE = 16


def _encoder(seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(ViT("mu/8", SIZE, rngs=nnx.Rngs(params=seed)))


def _toy(n: int, seed: int) -> dict[str, np.ndarray]:
    """Separable tiles: label 1 bright, label 0 dark, a little noise (invariant to flips and rotations)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.where(labels[:, None, None, None] == 1, 200, 50) + rng.integers(-20, 20, (n, SIZE, SIZE, 3))
    return {"image": images.astype(np.uint8), "label": labels.astype(np.int64)}


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tune(num_steps: int, seed: int = 0) -> tuple[finetune.FineTuned, nnx.State]:
    encoder_def, encoder_params = _encoder()
    tuned = finetune.finetune(encoder_def, encoder_params, SIZE, _toy(32, 1), _toy(16, 2), num_steps=num_steps,
                              batch_size=8, learning_rate=3e-3, weight_decay=0.0, eval_every=3, eval_batch_size=8,
                              seed=seed)
    return tuned, encoder_params


def test_step_lowers_loss_and_changes_encoder():
    encoder_def, encoder_params = _encoder()
    head_def, params = finetune.init_head(encoder_def, encoder_params, seed=0)
    spec = finetune.StepSpec(encoder_def, head_def, SIZE, 3e-3, 0.0, 7)  # the loop's spec below: one compile
    opt_state = finetune.optimizer(spec).init(params)
    data = _toy(8, 0)  # the loop's batch size below: one compile
    start = params
    losses = []
    for _ in range(7):
        params, opt_state, metrics = finetune.train_step(params, opt_state, data["image"], data["label"], spec=spec)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert not _leaves_equal(params["encoder"], start["encoder"])  # end to end: the encoder trains too
    proba = np.asarray(finetune.predict_proba(params, data["image"], spec=spec))
    assert np.mean((proba >= 0.5) == (data["label"] == 1)) == 1.0


def test_loop_is_deterministic_and_zero_steps_change_nothing():
    tuned, encoder_params = _tune(7)
    assert [step for step, _ in tuned.history] == [3, 6, 7]
    assert tuned.selected_step == max(tuned.history, key=lambda h: h[1])[0]
    again, _ = _tune(7)
    assert _leaves_equal(tuned.params, again.params) and tuned.losses == again.losses
    frozen, _ = _tune(0)
    assert frozen.selected_step == 0 and frozen.losses == () and [s for s, _ in frozen.history] == [0]
    assert _leaves_equal(frozen.params["encoder"], encoder_params)
    encoder_def, _ = _encoder()
    _, initial = finetune.init_head(encoder_def, encoder_params, seed=0)
    assert _leaves_equal(frozen.params["head"], initial["head"])


def test_selection_keeps_best_validation_accuracy():
    selection = finetune.Selection()
    for step, score in [(100, 61.0), (200, 74.5), (300, 70.0), (400, 74.5), (500, 73.9)]:
        selection.offer(step, score, {"step": step})
    assert (selection.best_step, selection.best_score, selection.best_params) == (200, 74.5, {"step": 200})
    assert selection.history == [(100, 61.0), (200, 74.5), (300, 70.0), (400, 74.5), (500, 73.9)]
    assert finetune.checkpoint_steps(1000, 250) == [250, 500, 750, 1000]
    assert finetune.checkpoint_steps(600, 250) == [250, 500, 600]
    assert finetune.checkpoint_steps(0, 250) == [0]


def test_flip_rotate_is_a_d4_element_per_image():
    images = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 3)).astype(np.uint8)
    out = finetune.flip_rotate(images, np.random.default_rng(1))
    for image, moved in zip(images, out):
        group = [np.rot90(image, k) for k in range(4)]
        assert any(np.array_equal(moved, g) or np.array_equal(moved, g[:, ::-1]) for g in group)


def test_leaderboard_rows_and_table():
    probe = {0: {"id_val": 90.0, "val": 80.0, "test": 70.0}, 1: {"id_val": 92.0, "val": 84.0, "test": 76.0}}
    tuned = {0: {"id_val": 95.0, "val": 88.0, "test": 85.0}, 1: {"id_val": 97.0, "val": 90.0, "test": 89.0}}
    splits = ("id_val", "val", "test")
    rows = [wilds.leaderboard_row("LMC + linear probe (this run)", probe, splits),
            wilds.leaderboard_row("LMC + fine-tuned linear head (this run)", tuned, splits), wilds.ERM_PUBLISHED]
    assert rows[1]["seeds"] == 2 and rows[1]["test"] == (87.0, pytest.approx(4 / np.sqrt(2)))
    table = wilds.markdown({"splits": list(splits), "rows": rows, "note": "n"}).splitlines()
    assert table[2] == "| method | ID val (hospitals 0/3/4) | OOD val (hospital 1) | test (hospital 2) | seeds |"
    assert table[4] == "| LMC + linear probe (this run) | 91.0 ± 1.4 | 82.0 ± 2.8 | 73.0 ± 4.2 | 2 |"
    assert table[5] == "| LMC + fine-tuned linear head (this run) | 96.0 ± 1.4 | 89.0 ± 1.4 | 87.0 ± 2.8 | 2 |"
    assert table[6] == "| ERM (WILDS, published) | — | — | 70.3 ± 6.4 | 10 |"
