"""Tests for the robustness family (plismbench cosine / top-10 / leaderboard score, PathoROB's robustness index):
kernels against hand-worked toys, the family against brute-force numpy loops, bootstrap draws and degenerate cases."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from lmc_jax.errors import ConfigError
from lmc_jax.evaluate.families import robustness as family
from lmc_jax.evaluate.families.inputs import Context, Inputs
from lmc_jax.evaluate.kernels import bootstrap, robustness
from lmc_jax.evaluate.suite import MethodEmbeddings
from tests.tiny_config import default_settings

SITES = ["source", "scanner_tone", "lab_shift", "stain_transfer", "jpeg_blur", "ihc"]
# plismbench's group of every pair of the default sites, written out by hand from data_pipelines/sites.py:
# scanner_tone and jpeg_blur change the scanner, lab_shift and stain_transfer the staining.
GROUPS = {
    ("source", "scanner_tone"): "cross_scanner", ("source", "jpeg_blur"): "cross_scanner",
    ("scanner_tone", "jpeg_blur"): "cross_scanner",
    ("source", "lab_shift"): "cross_staining", ("source", "stain_transfer"): "cross_staining",
    ("lab_shift", "stain_transfer"): "cross_staining",
    ("scanner_tone", "lab_shift"): "cross_both", ("scanner_tone", "stain_transfer"): "cross_both",
    ("lab_shift", "jpeg_blur"): "cross_both", ("stain_transfer", "jpeg_blur"): "cross_both",
}
SETTINGS = default_settings(bootstrap_replicates=50)
N_TILES, D = 40, 6


def _circle(degrees, radius=1.0) -> np.ndarray:
    angles = np.deg2rad(np.asarray(degrees, float))
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# -- plismbench kernels, by hand -------------------------------------------------------------------------------------

def test_paired_cosine_and_retrieval_of_three_tiles_at_two_sites():
    # site a at 0°, 90°, 180°; site b (3× longer vectors: cosine ignores the norm) at 30°, 100°, 300°.
    a, b = _circle([0, 90, 180]), _circle([30, 100, 300], radius=3.0)
    # cos 30° = 0.8660, cos 10° = 0.9848, cos 120° = −0.5
    expected_cos = [np.sqrt(3) / 2, np.cos(np.deg2rad(10)), -0.5]
    np.testing.assert_allclose(robustness.paired_cosine(a, b), expected_cos, atol=1e-6)
    # Pooled angles a1 0, a2 90, a3 180, b1 30, b2 100, b3 300. Nearest others (angular distance):
    #   a1: b1 30 (own) | a2: b2 10 (own) | a3: b2 80, a2 90, b3 120 (own is 3rd)
    #   b1: a1 30 (own) | b2: a2 10 (own) | b3: a1 60, b1 90, a3 120 (own is 3rd)
    for k, hit3 in [(1, False), (3, True)]:  # (k = 2: a3's two nearest b2, a2 still miss; b3's a1, b1 too)
        hits_a, hits_b = robustness.retrieval_hits(a, b, k)
        assert hits_a.tolist() == [True, True, hit3] and hits_b.tolist() == [True, True, hit3], k
    # top-1 accuracy (plismbench averages a→b and b→a): (2/3 + 2/3) / 2
    assert np.mean(np.concatenate(robustness.retrieval_hits(a, b, 1))) == pytest.approx(2 / 3)


def test_retrieval_caps_k_and_a_perfect_encoder_retrieves_every_tile():
    a = np.random.default_rng(0).normal(size=(3, 2))  # the shapes of the test above: its compiled kNN is reused
    hits_a, hits_b = robustness.retrieval_hits(a, 2.0 * a, 50)  # k capped at 2n − 1 = 5: everything is a hit
    assert hits_a.all() and hits_b.all()
    hits_a, hits_b = robustness.retrieval_hits(a, a.copy(), 1)  # identical renderings tie with the row itself
    assert hits_a.all() and hits_b.all()


def test_pair_groups_follow_what_each_site_changes():
    changes = dict(SETTINGS.robustness_site_changes)
    factors = {s: robustness.site_factors(s, "source", changes) for s in SITES}
    assert factors["source"] == ("source", "source") and factors["ihc"] == ("ihc", "ihc")  # unlisted: both
    for (a, b), group in GROUPS.items():
        assert robustness.pair_group(factors[a], factors[b]) == group, (a, b)
    assert robustness.pair_group(factors["source"], factors["ihc"]) == "cross_both"
    assert robustness.pair_group(("s", "t"), ("s", "t")) is None


def test_plism_summary_is_the_leaderboard_mean_of_four_medians():
    # cosine over all pairs: median(0.1, 0.5, 0.7, 0.9) = 0.6; top-10 medians: scanner (1.0, 0.6) → 0.8,
    # staining 0.2, both 0.4; score = (0.6 + 0.8 + 0.2 + 0.4) / 4 = 0.5
    out = robustness.plism_summary(np.array([0.9, 0.5, 0.7, 0.1]), np.array([1.0, 0.2, 0.6, 0.4]),
                                   ["cross_scanner", "cross_staining", "cross_scanner", "cross_both"])
    expected = {"cosine": 0.6, "top10": 0.5, "top10_cross_scanner": 0.8, "top10_cross_staining": 0.2,
                "top10_cross_both": 0.4, "score": 0.5}
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key
    # plismbench's README leaderboard (03/03/2025), H0-Mini: cosine 0.800, top-10 0.864 / 0.318 / 0.183 → 0.541
    h0 = robustness.plism_summary(np.full(3, 0.800), np.array([0.864, 0.318, 0.183]),
                                  ["cross_scanner", "cross_staining", "cross_both"])
    assert round(float(h0["score"]), 3) == 0.541
    # a group without pairs is left out of the mean; columns (bootstrap draws) are summarised independently
    two = robustness.plism_summary(np.array([[0.2, 0.4], [0.6, np.nan]]), np.array([[0.5, 1.0], [0.3, 0.0]]),
                                   ["cross_scanner", "cross_scanner"])
    assert "top10_cross_staining" not in two
    assert two["score"][0] == pytest.approx((0.4 + 0.4) / 2) and np.isnan(two["score"][1])


# -- PathoROB robustness index, by hand -------------------------------------------------------------------------------

# Two sites × two classes on the unit circle (angles in degrees), every row its own case unless said otherwise:
#   site 0: p1 0° (class 0), p2 10° (1), p3 180° (0), p4 190° (1)
#   site 1: q1 3° (0), q2 90° (1), q3 183° (0), q4 270° (1)
_ANGLES = [0, 10, 180, 190, 3, 90, 183, 270]
_CLASSES = np.array([0, 1, 0, 1, 0, 1, 0, 1])
_SITES = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_so_os_counts_of_a_two_class_two_site_toy():
    # k = 2 nearest others:      neighbours   kinds     SO OS
    #   p1 (0°, c0, s0):   q1 3°,  p2 10°    SO, OS     1  1
    #   p2 (10°, c1, s0):  q1 7°,  p1 10°    OO, OS     0  1
    #   p3 (180°, c0, s0): q3 3°,  p4 10°    SO, OS     1  1
    #   p4 (190°, c1, s0): q3 7°,  p3 10°    OO, OS     0  1
    #   q1 (3°, c0, s1):   p1 3°,  p2 7°     SO, OO     1  0
    #   q2 (90°, c1, s1):  p2 80°, q1 87°    SO, OS     1  1
    #   q3 (183°, c0, s1): p3 3°,  p4 7°     SO, OO     1  0
    #   q4 (270°, c1, s1): p4 80°, q3 87°    SO, OS     1  1
    so, os = robustness.so_os_counts(_circle(_ANGLES), _CLASSES, _SITES, np.arange(8), 2)
    assert so.tolist() == [1, 0, 1, 0, 1, 1, 1, 1] and os.tolist() == [1, 1, 1, 1, 0, 1, 0, 1]
    # RI = ΣSO / (ΣSO + ΣOS) = 6 / 12; site 0 as queries: 2 / 6, site 1: 4 / 6
    assert robustness.robustness_index(so.sum(), os.sum()) == pytest.approx(0.5)
    assert robustness.robustness_index(so[:4].sum(), os[:4].sum()) == pytest.approx(1 / 3)
    assert robustness.robustness_index(so[4:].sum(), os[4:].sum()) == pytest.approx(2 / 3)


def test_neighbours_of_the_own_case_are_removed_as_pathorob_removes_the_slide():
    # k = 1. Each row its own case: p1→q1 SO, p2→q1 OO, p3→q3 SO, p4→q3 OO, q1→p1 SO, q2→p2 SO, q3→p3 SO,
    # q4→p4 SO: RI = 6 / 6 = 1.
    x = _circle(_ANGLES)
    so, os = robustness.so_os_counts(x, _CLASSES, _SITES, np.arange(8), 1)
    assert robustness.robustness_index(so.sum(), os.sum()) == pytest.approx(1.0)
    # The same tissue at both sites is one case (p_i with q_i): the own rendering is dropped and p1→p2 OS,
    # p2→q1 OO, p3→p4 OS, p4→q3 OO, q1→p2 OO, q2→q1 OS, q3→p4 OO, q4→q3 OS: RI = 0 / 4 = 0.
    so, os = robustness.so_os_counts(x, _CLASSES, _SITES, np.tile(np.arange(4), 2), 1)
    assert so.tolist() == [0] * 8 and os.tolist() == [1, 0, 1, 0, 0, 1, 0, 1]
    assert robustness.robustness_index(so.sum(), os.sum()) == 0.0


def test_no_so_or_os_neighbour_gives_nan_not_a_crash():
    # classes confounded with sites: every neighbour is same-class-same-site or other-class-other-site
    x = _circle([0, 5, 100, 105])
    so, os = robustness.so_os_counts(x, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), np.arange(4), 3)
    assert so.sum() == 0 and os.sum() == 0
    assert np.isnan(robustness.robustness_index(so.sum(), os.sum()))
    # k = 5 but rows 0-2 are one case: they see row 3 only, row 3 sees rows 0-2.
    # classes 0 1 0 1, sites 0 0 1 1: row 0 → 3 OO; row 1 → 3 SO; row 2 → 3 OS; row 3 → 0 OO, 1 SO, 2 OS
    so, os = robustness.so_os_counts(x, np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), 5)
    assert so.tolist() == [0, 1, 0, 1] and os.tolist() == [0, 0, 1, 1]


# -- the family against brute-force loops -------------------------------------------------------------------------

def _method(seed: int = 0, *, n: int = N_TILES, site_noise: float = 0.6, site_shift: float = 0.2) -> MethodEmbeddings:
    """n tiles rendered at the five paired sites (tile_id shared; noise per rendering, a shift per site along the
    last dimension) plus an unpaired ihc split; the label lives in dimension 0."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    base = rng.normal(size=(n, D)) + 1.5 * y[:, None] * np.eye(D)[0]
    heldout = np.concatenate([base + site_noise * rng.normal(size=base.shape) + site_shift * s * np.eye(D)[-1]
                              for s in range(5)]
                             + [rng.normal(size=(12, D))])
    return MethodEmbeddings(
        train=rng.normal(size=(40, D)), train_labels=np.tile([0, 1], 20), heldout=heldout,
        heldout_labels=np.concatenate([np.tile(y, 5), np.tile([0, 1], 6)]),
        heldout_sites=np.concatenate([np.repeat(np.arange(5), n), np.full(12, 5)]),
        heldout_tile_ids=np.concatenate([np.tile(np.arange(n), 5), 1000 + np.arange(12)]),
        train_groups=np.arange(40) % 8, heldout_groups=np.concatenate([np.tile(np.arange(n) % 8, 5), np.full(12, 9)]))


def _inputs(m: MethodEmbeddings, settings=SETTINGS) -> Inputs:
    ctx = Context(SITES, 0, SITES[1:5], ("ihc",), settings, jax.random.key(0), 0)
    return Inputs(m, ctx)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_pair(a, b, k=10):
    """plismbench's two metrics of a pair by a full cosine matrix (what the kernel avoids)."""
    cos = float(np.mean(np.sum(_unit(a) * _unit(b), axis=1)))
    pool = _unit(np.concatenate([a, b]))
    sims = pool @ pool.T
    np.fill_diagonal(sims, -np.inf)
    n = len(a)
    hits = [(i + n) % (2 * n) in np.argsort(-sims[i])[:k] for i in range(2 * n)]
    return cos, 0.5 * (np.mean(hits[:n]) + np.mean(hits[n:]))


def _site_rows(m, s):
    return m.heldout[m.heldout_sites == SITES.index(s)]


def test_family_values_match_brute_force_pairs_and_neighbours():
    m = _method()
    result = family.evaluate(_inputs(m))
    brute = {pair: _brute_pair(_site_rows(m, pair[0]), _site_rows(m, pair[1])) for pair in GROUPS}
    for site in SITES[1:5]:
        cos, top = brute[("source", site)]
        assert result.per_site[site]["plism_cosine"].value == pytest.approx(cos, abs=1e-6), site
        assert result.per_site[site]["plism_top10"].value == pytest.approx(top), site
    assert "reference site" in result.per_site["source"]["plism_cosine"]
    assert result.per_site["ihc"]["plism_top10"] == "no tile of ihc also occurs at source"
    groups = np.array([GROUPS[p] for p in brute])
    cos, top = np.array([brute[p][0] for p in brute]), np.array([brute[p][1] for p in brute])
    medians = {g: np.median(top[groups == g]) for g in ("cross_scanner", "cross_staining", "cross_both")}
    joint = {k: e.value for k, e in result.joint.items()}
    assert joint["plism_cosine"] == pytest.approx(np.median(cos), abs=1e-6)
    assert joint["plism_top10"] == pytest.approx(np.median(top))
    for g, value in medians.items():
        assert joint[f"plism_top10_{g}"] == pytest.approx(value), g
    assert joint["plism_score"] == pytest.approx((np.median(cos) + sum(medians.values())) / 4, abs=1e-6)
    record = result.entries["robustness"]["plism"]
    assert {tuple(p["sites"]): p["group"] for p in record["pairs"]} == GROUPS and not record["skipped_pairs"]

    # RI: k = 11 nearest rows (cosine) of other groups among the five paired sites (ihc is summary-excluded)
    paired = m.heldout_sites < 5
    x, labels, sites, groups = (v[paired] for v in (m.heldout, m.heldout_labels, m.heldout_sites, m.heldout_groups))
    sims = _unit(x) @ _unit(x).T
    so, os = np.zeros(len(x)), np.zeros(len(x))
    for i in range(len(x)):
        order = [j for j in np.argsort(-sims[i]) if groups[j] != groups[i]][:SETTINGS.ri_neighbors]
        so[i] = sum(labels[j] == labels[i] and sites[j] != sites[i] for j in order)
        os[i] = sum(labels[j] != labels[i] and sites[j] == sites[i] for j in order)
    assert joint["robustness_index"] == pytest.approx(so.sum() / (so.sum() + os.sum()))
    for s in range(5):
        mine = sites == s
        expected = so[mine].sum() / (so[mine].sum() + os[mine].sum())
        assert result.per_site[SITES[s]]["robustness_index"].value == pytest.approx(expected), SITES[s]
    assert result.per_site["ihc"]["robustness_index"] == "site excluded from summaries, so not in the joint set"
    assert result.entries["robustness"]["ri"]["excluded_neighbours"] == "group"


def test_bootstrap_draws_reweight_tiles_and_intervals_contain_the_estimates():
    m = _method(1)
    inputs = _inputs(m)
    result = family.evaluate(inputs)
    # replicate r of a site's cosine with the source = the cosine mean weighted by the counts of r's blocks
    # (groups: one draw shared by both sites, so both directions get the same weights)
    rows, blocks = inputs.blocks[SITES.index("lab_shift")]
    weights = blocks.counts[:, blocks.ids]  # (R, n) draw counts of each row's block
    cos = np.sum(_unit(_site_rows(m, "source")) * _unit(_site_rows(m, "lab_shift")), axis=1)
    estimate = result.per_site["lab_shift"]["plism_cosine"]
    np.testing.assert_allclose(estimate.replicates, weights @ cos / weights.sum(axis=1), atol=1e-9)
    for where, values in [*result.per_site.items(), ("joint", result.joint)]:
        for key, e in values.items():
            if isinstance(e, str):
                continue
            spec = next(s for s in family.SPECS if s.key == key)
            lo, hi = bootstrap.interval(e.replicates, e.value, spec.bounds)
            assert lo <= e.value <= hi, (where, key)
            assert lo < hi or key.startswith("plism_top10"), (where, key)  # retrieval may be perfect in every draw


def test_one_class_one_site_and_confounded_labels_are_documented_skips():
    m = _method(2)
    one_class = dataclasses.replace(m, heldout_labels=np.zeros_like(m.heldout_labels))
    result = family.evaluate(_inputs(one_class))
    assert result.joint["robustness_index"].value == "needs 2 classes; every sampled row has label 0"
    assert result.per_site["lab_shift"]["robustness_index"] == result.joint["robustness_index"].value
    assert isinstance(result.joint["plism_score"].value, float)  # plismbench needs no labels

    source_only = np.isin(m.heldout_sites, [0, 5])
    single = dataclasses.replace(m, **{f: getattr(m, f)[source_only] for f in (
        "heldout", "heldout_labels", "heldout_sites", "heldout_tile_ids", "heldout_groups")})
    result = family.evaluate(_inputs(single))
    assert "needs at least 2 sites" in result.joint["robustness_index"].value
    assert "needs at least 2 sites" in result.joint["plism_score"].value
    assert "0 held-out examples" in result.per_site["lab_shift"]["robustness_index"]

    # two sites, each holding one class: every neighbour is same-class-same-site or other-class-other-site
    two = m.heldout_sites < 2
    confounded = dataclasses.replace(m, heldout_labels=m.heldout_sites[two].astype(int), **{f: getattr(m, f)[two] for f in (
        "heldout", "heldout_sites", "heldout_tile_ids", "heldout_groups")})
    result = family.evaluate(_inputs(confounded))
    assert "(SO + OS = 0)" in result.joint["robustness_index"].value
    assert "(SO + OS = 0)" in result.per_site["scanner_tone"]["robustness_index"].value


def test_without_tile_ids_plism_is_undefined_and_ri_drops_the_same_tile_without_groups():
    m = _method(3)
    result = family.evaluate(_inputs(dataclasses.replace(m, heldout_tile_ids=None)))
    assert all(result.joint[k].value == "no heldout_tile_ids given" for k in family.PLISM_KEYS)
    assert result.per_site["jpeg_blur"]["plism_top10"] == "no heldout_tile_ids given"
    assert isinstance(result.joint["robustness_index"].value, float)
    by_tile = family.evaluate(_inputs(dataclasses.replace(m, heldout_groups=None)))
    assert by_tile.entries["robustness"]["ri"]["excluded_neighbours"] == "tile"


def test_above_plism_max_tiles_every_pair_scores_one_fixed_tile_subset():
    m = _method(6)
    inputs = _inputs(m, SETTINGS.replace(plism_max_tiles=15))
    result = family.evaluate(inputs)
    assert {p["tiles"] for p in result.entries["robustness"]["plism"]["pairs"]} == {15}
    ids, priority = family.tile_priority(inputs)
    paired = ids < N_TILES  # tiles 0..39 are shared by the five paired sites (their rows are in tile order)
    kept = np.sort(ids[paired][np.argsort(priority[paired])[:15]])
    for site in ("scanner_tone", "jpeg_blur"):
        cos, top = _brute_pair(_site_rows(m, "source")[kept], _site_rows(m, site)[kept])
        assert result.per_site[site]["plism_cosine"].value == pytest.approx(cos, abs=1e-6)
        assert result.per_site[site]["plism_top10"].value == pytest.approx(top)
    assert family.tile_priority(_inputs(_method(7)))[1].tolist() == priority.tolist()  # the same for every method


def test_a_group_without_pairs_is_left_out_of_the_score():
    settings = SETTINGS.replace(robustness_site_changes=(("scanner_tone", "scanner"), ("lab_shift", "scanner"),
                                                         ("stain_transfer", "scanner"), ("jpeg_blur", "scanner")))
    result = family.evaluate(_inputs(_method(4), settings))
    joint = {k: e.value for k, e in result.joint.items()}
    assert "no cross-staining pair" in joint["plism_top10_cross_staining"]
    assert "no cross-scanner+staining pair" in joint["plism_top10_cross_both"]
    assert joint["plism_top10_cross_scanner"] == pytest.approx(joint["plism_top10"])  # every pair is cross-scanner
    assert joint["plism_score"] == pytest.approx((joint["plism_cosine"] + joint["plism_top10"]) / 2)
    assert result.entries["robustness"]["plism"]["score_parts"] == ["cosine", "top10_cross_scanner"]


def test_a_more_invariant_encoder_scores_higher_and_the_values_are_json_ready():
    specs = {spec.key: spec for spec in family.SPECS}
    good, bad = (family.evaluate(_inputs(_method(5, site_noise=noise, site_shift=shift)))
                 for noise, shift in ((0.1, 0.1), (1.0, 2.0)))
    for key in ("plism_cosine", "plism_top10_cross_scanner", "plism_top10_cross_both", "plism_score"):
        assert good.joint[key].value > bad.joint[key].value, key
    assert good.joint["robustness_index"].value > bad.joint["robustness_index"].value
    bounds = {k: s.bounds for k, s in specs.items()}
    for result in (good, bad):
        rows = [bootstrap.as_json(result.joint, bounds)] + [bootstrap.as_json(v, bounds)
                                                            for v in result.per_site.values()]
        json.dumps([rows, result.entries], allow_nan=False)
        assert set(result.joint) == set(specs) and all(set(v) == set(family.KEYS) for v in result.per_site.values())


def test_settings_knobs_are_validated():
    assert SETTINGS.ri_neighbors == 11
    assert dict(SETTINGS.robustness_site_changes)["jpeg_blur"] == "scanner"
    assert SETTINGS.plism_max_tiles == 8139
    with pytest.raises(ConfigError, match=r"config.eval.plism_max_tiles=5: must be ≥ min_site_samples=10"):
        default_settings(plism_max_tiles=5)
    with pytest.raises(ConfigError, match=r"config.eval.ri_neighbors=0: must be ≥ 1"):
        default_settings(ri_neighbors=0)
    with pytest.raises(ConfigError, match=r"config.eval.robustness_site_changes=.*change one of"):
        default_settings(robustness_site_changes=(("lab_shift", "stain"),))
    with pytest.raises(ConfigError, match=r"config.eval.robustness_site_changes=.*each site once"):
        default_settings(robustness_site_changes=(("lab_shift", "staining"), ("lab_shift", "scanner")))
    assert SETTINGS.to_json()["robustness_site_changes"][0] == ["scanner_tone", "scanner"]
    assert json.loads(json.dumps(SETTINGS.to_json())) == SETTINGS.to_json()  # metrics.json round-trips

