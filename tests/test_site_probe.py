"""Site probe family: a fresh cross-fitted multinomial probe names a shifted site and not an aligned one."""

import jax
import numpy as np

from lmc_jax.evaluate.families import site_probe
from lmc_jax.evaluate.suite import MethodEmbeddings, evaluate_embeddings
from tests.tiny_config import default_settings

SITES = ["src", "b", "c"]
SETTINGS = default_settings(bootstrap_replicates=50, protocols=("cross_site",), protocol_folds=3, signature_folds=0,
                            lisi_neighbors=15, kbet_neighbors=10)


def _method(shift: float, seed: int = 0, groups: bool = True) -> MethodEmbeddings:
    """60 held-out tiles rendered at each site: the same tissue (+ small noise), site s moved by shift · s along
    one direction of 8; the label in dimension 0."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], 30)
    base = rng.normal(size=(60, 8))
    base[:, 0] += 2.0 * y
    heldout = np.concatenate([base + 0.3 * rng.normal(size=base.shape) + shift * s * np.eye(8)[3]
                              for s in range(len(SITES))])
    train = rng.normal(size=(80, 8))
    train_y = np.tile([0, 1], 40)
    train[:, 0] += 2.0 * train_y
    return MethodEmbeddings(train, train_y, heldout, np.tile(y, len(SITES)), np.repeat(np.arange(len(SITES)), 60),
                            heldout_tile_ids=np.tile(np.arange(60), len(SITES)), train_groups=np.arange(80) % 8,
                            heldout_groups=(100 + np.tile(np.arange(60) % 10, len(SITES))) if groups else None)


def _metrics(methods):
    return evaluate_embeddings(methods, site_names=SITES, source_site="src", key=jax.random.key(0),
                               settings=SETTINGS)["methods"]


def test_the_site_probe_names_shifted_sites_and_not_aligned_ones():
    methods = _metrics({"aligned": _method(0.0), "shifted": _method(5.0)})
    aligned, shifted = methods["aligned"], methods["shifted"]
    assert shifted["summary"]["site_probe"] > 0.9
    assert aligned["summary"]["site_probe"] < 0.5  # chance 1/3 (equal shares of 3 sites)
    for site in SITES:
        assert shifted["per_site"][site]["site_probe"] > aligned["per_site"][site]["site_probe"]
    info = shifted["site_probe"]
    assert info["sites"] == SITES and info["n"] == 180 and info["units"] == "groups"
    assert abs(info["chance"] - 1 / 3) < 1e-12
    lower, upper = aligned["summary"]["ci"]["site_probe"]
    assert 0.0 <= lower < aligned["summary"]["site_probe"] < upper <= 1.0


def test_a_units_rows_fall_in_one_half_and_without_groups_the_tiles_are_the_units():
    units = np.repeat(np.arange(7), 3)
    half = site_probe._halves(units, np.random.default_rng(0))
    assert all(len(set(half[units == u])) == 1 for u in range(7))
    assert {int(np.sum(half[::3])), int(np.sum(1 - half[::3]))} == {3, 4}
    info = _metrics({"tiles": _method(3.0, groups=False)})["tiles"]["site_probe"]
    assert info["units"] == "tiles"


def test_the_row_cap_takes_an_equal_share_per_site():
    methods = evaluate_embeddings({"m": _method(5.0)}, site_names=SITES, source_site="src", key=jax.random.key(0),
                                  settings=SETTINGS.replace(site_probe_max_rows=90))["methods"]
    assert methods["m"]["site_probe"]["n"] == 90
