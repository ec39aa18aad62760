"""Tests for lmc_jax.evaluate.kernels.protocol: patient-disjoint folds, who trains on what, and that no target label is used."""

import numpy as np
import pytest

from lmc_jax.evaluate.kernels import protocol
from lmc_jax.evaluate.kernels.protocol import PROTOCOLS, group_folds, run_protocol

DOMAINS = ["src", "b", "c"]


def _pool(seed: int, per_domain: int = 90, groups_per_domain: int = 9, shared_groups: bool = True):
    """Three domains; with shared_groups the same patients appear in every domain (tissue rendered thrice)."""
    rng = np.random.default_rng(seed)
    n = per_domain * len(DOMAINS)
    domains = np.repeat(np.arange(len(DOMAINS)), per_domain)
    base = np.tile(np.arange(per_domain) % groups_per_domain, len(DOMAINS))
    groups = base if shared_groups else base + 100 * domains
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5))
    x[:, 0] += 2.0 * y
    x[:, 1] += 0.5 * domains
    return x, y, domains, groups


def _run(name, x, y, domains, groups, **kwargs):
    return run_protocol(name, x, y, domains, groups, domain_names=DOMAINS, source=0, num_folds=5, l2=1e-2,
                        num_bins=15, bootstrap_unit="group", max_blocks=100, replicates=50,
                        rng=np.random.default_rng(0), **kwargs)


def test_group_folds_keep_groups_whole_and_balance_rows():
    groups = np.random.default_rng(0).integers(0, 40, 1000)
    folds = group_folds(groups, 5, np.random.default_rng(1))
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1
    load = np.bincount(folds)
    assert load.max() - load.min() <= np.bincount(groups).max()


@pytest.mark.parametrize("name", PROTOCOLS)
@pytest.mark.parametrize("shared", [True, False])
def test_plans_are_patient_disjoint_and_validate_on_training_domains_only(name, shared):
    _, _, domains, groups = _pool(1, shared_groups=shared)
    folds = group_folds(groups, 5, np.random.default_rng(2))
    tested = np.zeros(len(domains), int)
    for _, fit, val, test in protocol._plans(name, domains, folds, 5, 0, DOMAINS):
        if not test.any():  # nested groups: a fold may hold none of a domain's patients (run_protocol skips it)
            continue
        assert not set(groups[fit]) & set(groups[test]) and not set(groups[val]) & set(groups[test])
        assert not (fit & val).any()
        held = set(domains[test])
        if name == "cross_site":
            assert set(domains[fit]) | set(domains[val]) <= {0}
        else:
            assert len(held) == 1 and not held & (set(domains[fit]) | set(domains[val]))
        tested += test
    assert (tested == 1).all()  # every row is predicted exactly once


def test_protocol_inputs_never_contain_target_labels(monkeypatch):
    x, y, domains, groups = _pool(3)
    calls = []
    real = protocol.fit_source_probe

    def spy(x_fit, y_fit, x_val, y_val, l2, init=None):
        calls.append((y_fit.copy(), y_val.copy()))
        return real(x_fit, y_fit, x_val, y_val, l2, init)

    monkeypatch.setattr(protocol, "fit_source_probe", spy)
    flipped = np.where(domains == 2, 1 - y, y)  # only domain c's labels change
    runs = []
    for labels in (y, flipped):
        calls.clear()
        cross = _run("cross_site", x, labels, domains, groups)
        cross_calls = list(calls)
        calls.clear()
        _run("leave_one_domain_out", x, labels, domains, groups)
        runs.append((cross, cross_calls, list(calls)))
    (cross_a, fits_a, lodo_a), (cross_b, fits_b, lodo_b) = runs
    same = lambda a, b: all(np.array_equal(p, q) for u, v in zip(a, b) for p, q in zip(u, v))  # noqa: E731
    assert same(fits_a, fits_b)  # cross_site fits and thresholds use the source domain only
    k = len(lodo_a) // 3
    assert same(lodo_a[2 * k:], lodo_b[2 * k:])  # folds that test on c never saw c's labels ...
    assert not same(lodo_a[:2 * k], lodo_b[:2 * k])  # ... while c trains the folds that test a and b
    assert cross_a["per_domain"]["src"] == cross_b["per_domain"]["src"]
    assert cross_a["per_domain"]["c"]["auc"] == pytest.approx(1 - cross_b["per_domain"]["c"]["auc"])


def test_results_per_domain_with_intervals_and_summary():
    x, y, domains, groups = _pool(4)
    result = _run("leave_one_domain_out", x, y, domains, groups)
    assert result["folds"] == 5 and result["source"] is None
    for name in DOMAINS:
        entry = result["per_domain"][name]
        assert entry["n"] == 90 and entry["auc"] > 0.8
        lo, hi = entry["ci"]["auc"]
        assert lo <= entry["auc"] <= hi
    summary = result["summary"]
    assert summary["worst_auc"] == min(result["per_domain"][d]["auc"] for d in DOMAINS)
    assert summary["mean_auc"] == pytest.approx(np.mean([result["per_domain"][d]["auc"] for d in DOMAINS]))
    cross = _run("cross_site", x, y, domains, groups, summary_exclude=("c",))
    assert cross["source"] == "src"
    assert cross["summary"]["mean_auc"] == pytest.approx(cross["per_domain"]["b"]["auc"])  # not src, not c


def test_undefined_protocols_say_why():
    x, y, domains, groups = _pool(5)
    assert "no group key" in _run("cross_site", x, y, domains, None)["undefined"]
    assert "2 groups" in _run("cross_site", x, y, domains, groups % 2)["undefined"]
    one_class = np.where(domains == 0, 0, y)  # the source domain has a single class: no cross_site fold can fit
    result = _run("cross_site", x, one_class, domains, groups)
    assert all("need both 0 and 1" in note for note in result["notes"]) and len(result["notes"]) == 5
    assert result["per_domain"]["b"]["undefined"]["all"] == "no fold could score this domain"
    with pytest.raises(ValueError, match="unknown protocol"):
        _run("k_fold", x, y, domains, groups)


def test_fit_sets_above_max_fit_rows_are_subsampled(monkeypatch):
    x, y, domains, groups = _pool(7, per_domain=600, groups_per_domain=30)
    sizes, fit = [], protocol.fit_source_probe

    def recording(x_fit, *args, **kwargs):
        sizes.append(len(x_fit))
        return fit(x_fit, *args, **kwargs)

    monkeypatch.setattr(protocol, "fit_source_probe", recording)
    full = _run("leave_one_domain_out", x, y, domains, groups)
    full_sizes, sizes[:] = list(sizes), []
    sub = _run("leave_one_domain_out", x, y, domains, groups, max_fit_rows=300)
    assert min(full_sizes) > 300 and sizes == [300] * len(full_sizes) and sub["max_fit_rows"] == 300
    for name in DOMAINS:  # 300 rows of a 5-dim probe: the same transfer to within sampling noise
        assert sub["per_domain"][name]["n"] == full["per_domain"][name]["n"]
        assert sub["per_domain"][name]["auc"] == pytest.approx(full["per_domain"][name]["auc"], abs=0.02)
    assert _run("leave_one_domain_out", x, y, domains, groups, max_fit_rows=max(full_sizes)) == {
        **full, "max_fit_rows": max(full_sizes)}
