"""Tests for lmc_jax.evaluate.families: the specs are the one list of metrics the suite writes and the report shows."""

import copy
import dataclasses

import jax
import numpy as np
import pytest

from lmc_jax.evaluate import families, report, suite
from lmc_jax.evaluate.kernels import calibration
from lmc_jax.evaluate.kernels.bootstrap import Estimate
from lmc_jax.evaluate.families.spec import SUMMARY_KINDS, MetricSpec
from lmc_jax.evaluate.suite import MethodEmbeddings, evaluate_embeddings
from tests.tiny_config import default_settings

SITES = ["src", "b", "c"]
FAST = default_settings(bootstrap_replicates=50, protocols=("cross_site",), protocol_folds=3, signature_folds=0,
                detection_radius=30.0, lisi_neighbors=15, kbet_neighbors=10)
FAKE = MetricSpec("fake_rate", "fake rate", "A made-up per-site rate for these tests.", title="Fake rate per site",
                  direction=1, bounds=(0.0, 0.3), summary=("mean_unseen", "source"), columns=("mean_unseen",),
                  console=("source",))
WIDE = np.linspace(-1.0, 1.5, 50)  # replicates whose percentile interval around 0.25 leaves FAKE's bounds


def _method(seed: int, *, coords: bool) -> MethodEmbeddings:
    """40 held-out tiles rendered at each site (shifted by site), label in dimension 0; isolated tile positions."""
    rng = np.random.default_rng(seed)

    def embed(n):
        y = np.tile([0, 1], n // 2)
        x = rng.normal(size=(n, 4))
        x[:, 0] += 2.5 * y
        return x, y

    train, train_y = embed(80)
    base, y = embed(40)
    heldout = np.concatenate([base + 0.2 * rng.normal(size=base.shape) + 0.3 * s for s in range(len(SITES))])
    m = MethodEmbeddings(train, train_y, heldout, np.tile(y, len(SITES)), np.repeat(np.arange(len(SITES)), 40),
                         heldout_tile_ids=np.tile(np.arange(40), len(SITES)), train_groups=np.arange(80) % 8,
                         heldout_groups=100 + np.tile(np.arange(40) % 8, len(SITES)))
    if not coords:
        return m
    grid = 100 * np.stack(np.unravel_index(np.arange(len(SITES) * 40), (20, 20)), axis=1)
    return dataclasses.replace(m, heldout_coords=grid, train_coords=grid[:80], tile_size=64)


def _evaluate(methods):
    return evaluate_embeddings(methods, site_names=SITES, source_site="src", key=jax.random.key(0), settings=FAST)


@pytest.fixture(scope="module")
def metrics():
    return _evaluate({"detects": _method(0, coords=True), "plain": _method(1, coords=False)})


def _family(name: str):
    return next(f for f in families.FAMILIES if f.name == name)


def _with_fake(monkeypatch, family_name: str, spec: MetricSpec = FAKE) -> None:
    """Add `spec` to one family, computed as a constant with wide replicates: the one place a new metric goes."""
    def add(family):
        def evaluate(inputs):
            result = family.evaluate(inputs)
            for site in inputs.ctx.site_names:
                result.per_site.setdefault(site, {})[spec.key] = Estimate(0.25, WIDE)
            return result
        return dataclasses.replace(family, specs=family.specs + (spec,), evaluate=evaluate)

    monkeypatch.setattr(families, "FAMILIES",
                        tuple(add(f) if f.name == family_name else f for f in families.FAMILIES))


def _section_of(sections, title: str) -> list[str]:
    return [s.title for s in sections if any(t.title == title for t in s.tables)]


def test_spec_keys_are_unique_across_families():
    keys = [s.key for s in families.all_specs()]
    assert len(keys) == len(set(keys)), keys
    summary = [s.summary_key(kind) for s in families.all_specs() for kind in s.summary]
    assert len(summary) == len(set(summary)), summary
    titles = [s.title for s in families.all_specs() if s.title]
    assert len(titles) == len(set(titles))
    assert [f.name for f in families.FAMILIES] == ["separation", "mixing", "site_probe", "probe", "detection",
                                                   "protocols", "signatures", "robustness"]


def test_probe_specs_are_the_calibration_kernels_metrics():
    # protocol.py scores calibration.METRICS with calibration.BOUNDS: the probe family must describe the same
    probe = _family("probe")
    assert probe.per_site_keys() == calibration.METRICS
    assert all(s.bounds == calibration.BOUNDS[s.key] for s in probe.specs if s.per_site)


def test_spec_rows_are_checked():
    with pytest.raises(ValueError, match="'x': columns/console must be summary kinds"):
        MetricSpec("x", "x", "note", summary=("mean_unseen",), columns=("joint",))
    with pytest.raises(ValueError, match="'x': a derived summary needs derive"):
        MetricSpec("x", "x", "note", per_site=False, summary=("derived",))


def test_every_key_the_suite_writes_has_a_spec_in_family_order(metrics):
    bookkeeping = {"ci", "no_ci", "undefined", "n", "partial"}
    for name, m in metrics["methods"].items():
        active = [f for f in families.FAMILIES if not f.optional or name == "detects"]
        specs = families.all_specs(tuple(active))
        for entry in m["per_site"].values():
            assert [k for k in entry if k not in bookkeeping] == [s.key for s in specs if s.per_site]
        expected = [s.summary_key(kind) for kind in SUMMARY_KINDS for s in specs if kind in s.summary]
        assert [k for k in m["summary"] if k not in bookkeeping] == expected
        for entry in [*m["per_site"].values(), m["summary"]]:
            bounds = {s.summary_key(kind): s.bounds for s in specs for kind in s.summary} | \
                {s.key: s.bounds for s in specs}
            for key, (lo, hi) in entry["ci"].items():
                assert bounds[key][0] <= lo <= hi <= bounds[key][1], key
    assert "detection" in metrics["methods"]["detects"] and "detection" not in metrics["methods"]["plain"]


def test_notes_are_the_specs_notes(metrics):
    notes = metrics["notes"]
    specs = families.all_specs()
    assert {k: v for k, v in notes.items() if k not in suite.NOTES} == {s.key: s.note for s in specs}
    assert all(notes[k] == v for k, v in suite.NOTES.items())
    # per-site metrics before summary-only ones; the optional (detection) family after the suite's own notes
    assert list(notes).index("ece") < list(notes).index("auc_drop") < list(notes).index("intervals") \
        < list(notes).index("detection_f1")
    plain = _evaluate({"plain": _method(1, coords=False)})
    assert not set(_family("detection").per_site_keys()) & set(plain["notes"])
    assert set(plain["notes"]) == {s.key for f in families.FAMILIES if not f.optional for s in f.specs} | set(
        suite.NOTES)


def test_report_tables_are_exactly_the_specs_tables_in_their_family_sections(metrics):
    sections = report.build_sections(metrics, [])
    by_title = {s.title: [t.title for t in s.tables] for s in sections}
    for family in families.FAMILIES:
        titled = [s for s in family.specs if s.title]
        expected = [s.title for s in titled if not s.reference] + [s.title for s in titled if s.reference]
        shown = [t for t in by_title.get(family.section, []) if t in expected]
        assert shown == expected, family.name
    spec_titles = {s.title for s in families.all_specs()}
    separation = by_title["Separation and mixing per site"]
    assert all(t in spec_titles for t in separation)  # no per-site table the specs do not declare
    after = sum(1 for name in ("mixing", "site_probe") for s in _family(name).specs if s.title)  # their tables
    assert separation[-after - 1] == _family("separation").specs[1].title  # raw FD: reference only, after the others
    header = sections[0].tables[1].header
    assert header[:4] == ["method", "source AUC ↑", "unseen AUC ↑", "AUC drop ↓"]
    assert "unseen detection F1 ↑" in header


@pytest.mark.parametrize("family_name", ["separation", "mixing", "probe", "detection"])
def test_a_new_spec_lands_in_its_family_section_and_summary_table(monkeypatch, metrics, family_name):
    before = {t.title: t.header for t in report.build_sections(metrics, [])[0].tables}
    metrics = copy.deepcopy(metrics)
    for m in metrics["methods"].values():
        for entry in m["per_site"].values():
            entry[FAKE.key] = 0.25
        m["summary"]["mean_unseen_" + FAKE.key] = 0.2
        m["summary"]["source_" + FAKE.key] = 0.1
    _with_fake(monkeypatch, family_name)
    family = _family(family_name)
    sections = report.build_sections(metrics, [])
    assert _section_of(sections, FAKE.title) == [family.section]
    summary = {t.title: t.header for t in sections[0].tables}
    label = family.summary_table.unseen_prefix + "fake rate ↑"
    assert [title for title, header in summary.items() if label in header] == [family.summary_table.title]
    group = [f for f in families.FAMILIES if f.summary_table == family.summary_table]  # with the fake now

    def columns(fams):  # "method" and the specs' columns, less the fake's one
        return sum(len(s.columns) for f in fams for s in f.specs)

    header, end = before[family.summary_table.title], columns(group[:group.index(family) + 1])
    assert len(header) == columns(group)  # every column is defined in `metrics`
    assert summary[family.summary_table.title] == header[:end] + [label] + header[end:]  # right after its own
    assert "source fake rate ↑" in report.format_table(metrics).splitlines()[0]


def test_adding_a_metric_to_a_family_is_all_the_suite_and_report_need(monkeypatch, tmp_path):
    _with_fake(monkeypatch, "probe")
    result = _evaluate({"plain": _method(2, coords=False)})
    m = result["methods"]["plain"]
    for site in SITES:
        assert m["per_site"][site][FAKE.key] == 0.25
        assert m["per_site"][site]["ci"][FAKE.key] == [0.0, 0.3]  # interval clipped to the spec's bounds
    assert list(m["per_site"]["b"])[list(m["per_site"]["b"]).index("ece") + 1] == FAKE.key
    assert m["summary"]["mean_unseen_" + FAKE.key] == 0.25 and m["summary"]["source_" + FAKE.key] == 0.25
    assert m["summary"]["ci"]["mean_unseen_" + FAKE.key] == [0.0, 0.3]
    assert result["notes"][FAKE.key] == FAKE.note
    paths = report.write_report(result, tmp_path)
    text = paths["report"].read_text("utf-8")
    probe_section = text.split("## Probe transfer per site")[1].split("\n## ")[0]
    assert f"### {FAKE.title}" in probe_section and text.count(f"### {FAKE.title}") == 1
    assert f"**{FAKE.key}**: {FAKE.note}" in text
    assert "unseen fake rate ↑" in text.split("### Probe transfer (means over unseen sites)")[1].split("###")[0]


def test_a_value_without_a_spec_is_an_error_not_a_silent_gap(monkeypatch):
    probe = _family("probe")

    def evaluate(inputs):
        result = probe.evaluate(inputs)
        result.per_site["b"]["unlisted"] = 0.5
        return result

    monkeypatch.setattr(families, "FAMILIES", tuple(dataclasses.replace(f, evaluate=evaluate) if f is probe else f
                                                    for f in families.FAMILIES))
    with pytest.raises(RuntimeError, match=r"family 'probe' at site 'b': computed \['unlisted'\] without a spec"):
        _evaluate({"plain": _method(3, coords=False)})
