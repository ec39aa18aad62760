"""Tests for lmc_jax.evaluate.kernels.bootstrap: block construction, pairing across strata, intervals, combination."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lmc_jax.evaluate.kernels import bootstrap, probe


def test_groups_are_shared_blocks_across_strata_so_paired_rows_get_equal_weights():
    strata = np.repeat([0, 1, 2], 8)
    groups = np.tile(np.repeat([10, 11, 12, 13], 2), 3)  # the same 4 groups at every stratum
    blocks = bootstrap.make_blocks(strata, groups, max_blocks=100, replicates=50, rng=np.random.default_rng(0))
    assert blocks.num == 4 and blocks.unit == "group"
    assert (blocks.counts.sum(axis=1) == 4).all()
    a, b = blocks.subset(np.flatnonzero(strata == 0)), blocks.subset(np.flatnonzero(strata == 2))
    np.testing.assert_array_equal(a.counts, b.counts)  # same groups drawn at both sites


def test_without_groups_each_stratum_resamples_its_own_rows():
    strata = np.repeat([0, 1], [5, 300])
    blocks = bootstrap.make_blocks(strata, None, max_blocks=100, replicates=40, rng=np.random.default_rng(1))
    small, large = blocks.subset(np.arange(5)), blocks.subset(np.arange(5, 305))
    assert small.num == 5 and large.num == 100  # rows merged into at most 100 random blocks
    assert (small.counts.sum(axis=1) == 5).all() and (large.counts.sum(axis=1) == 100).all()
    assert np.bincount(large.ids).min() == 3  # 300 rows spread evenly


def test_block_sums_and_estimate_use_the_same_formula_for_point_and_replicates():
    rng = np.random.default_rng(2)
    values = rng.normal(size=50)
    blocks = bootstrap.make_blocks(np.zeros(50), rng.integers(0, 7, 50), max_blocks=100, replicates=300, rng=rng)
    sums = bootstrap.block_sums(blocks, np.column_stack([values, np.ones(50)]))
    e = bootstrap.estimate(blocks, lambda c: bootstrap.ratio(c @ sums[:, 0], c @ sums[:, 1]), "empty")
    assert e.value == pytest.approx(values.mean())
    r = 17
    weights = blocks.counts[r][blocks.ids]
    assert e.replicates[r] == pytest.approx(np.sum(weights * values) / weights.sum())
    lo, hi = bootstrap.interval(e.replicates, e.value)
    assert lo < e.value < hi


def test_interval_is_centred_on_the_estimate_and_clipped_to_bounds():
    replicates = np.random.default_rng(3).normal(5.0, 1.0, size=2000)
    lo, hi = bootstrap.interval(replicates, 3.0)  # replicates shifted by +2: the spread is kept, not the shift
    assert lo == pytest.approx(3.0 - 1.96, abs=0.15) and hi == pytest.approx(3.0 + 1.96, abs=0.15)
    assert bootstrap.interval(replicates, 3.0, (0.0, 4.0))[1] == 4.0
    few = np.where(np.arange(100) < 20, np.nan, 1.0)
    assert "only 80 of 100" in bootstrap.interval(few, 1.0)
    assert bootstrap.interval("bootstrap disabled", 1.0) == "bootstrap disabled"


def test_single_unit_or_disabled_bootstrap_gives_a_reason_instead_of_an_interval():
    one = bootstrap.make_blocks(np.zeros(6), np.full(6, 3), max_blocks=10, replicates=20, rng=np.random.default_rng(4))
    e = bootstrap.estimate(one, lambda c: c @ np.ones(1), "never")
    assert e.value == 1.0 and "only 1 bootstrap unit" in e.replicates
    off = bootstrap.make_blocks(np.zeros(6), None, max_blocks=10, replicates=0, rng=np.random.default_rng(4))
    assert "disabled" in bootstrap.estimate(off, lambda c: c @ np.ones(6), "never").replicates
    nan = bootstrap.estimate(off, lambda c: np.full(len(c), np.nan), "no positives")
    assert nan.value == "no positives"


def test_block_auc_equals_roc_auc_of_the_explicit_resample():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.normal(size=60) + y, 1)  # ties
    blocks = bootstrap.make_blocks(np.zeros(60), rng.integers(0, 9, 60), max_blocks=100, replicates=5, rng=rng)
    pairs = probe.auc_block_pairs(blocks, y, score)
    got = probe.block_auc(pairs, blocks.draws())
    assert got[0] == pytest.approx(roc_auc_score(y, score), rel=1e-12)
    for r in range(5):
        w = blocks.counts[r][blocks.ids].astype(int)
        assert got[r + 1] == pytest.approx(roc_auc_score(np.repeat(y, w), np.repeat(score, w)), rel=1e-12)


def test_combine_skips_undefined_inputs_and_names_them():
    a = bootstrap.Estimate(1.0, np.array([1.0, 2.0]))
    b = bootstrap.Estimate(3.0, np.array([3.0, 4.0]))
    mean, note = bootstrap.combine({"a": a, "b": b, "c": bootstrap.Estimate("one class", "metric undefined")},
                                   lambda arrays: np.mean(arrays, axis=0))
    assert mean.value == 2.0 and list(mean.replicates) == [2.0, 3.0]
    assert note == "over 2 of 3; undefined at c"
    none, _ = bootstrap.combine({"c": bootstrap.Estimate("one class", "x")}, lambda arrays: arrays[0])
    assert "undefined at every one (c)" in none.value
    entry = bootstrap.as_json({"m": mean, "raw": bootstrap.Estimate(1.5, "no interval for raw"), "u": "why"})
    assert entry["m"] == 2.0 and entry["ci"]["m"][0] < 2.0 < entry["ci"]["m"][1]
    assert entry["no_ci"] == {"raw": "no interval for raw"} and entry["u"] is None and entry["undefined"]["u"] == "why"
