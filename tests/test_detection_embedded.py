"""The embedded detection analogue: proxy nuclei (detection/nuclei.py), the site renderings that share them
(detection/embedded.py) and configs/detection_embedded.py end to end on a crop of the slide."""

import json
import runpy

import ml_collections
import numpy as np
from etils import epath

from lmc_jax.detection import embedded, nuclei
from lmc_jax.modes import detection as detection_mode
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config

CROP = (1280, 640, 384, 512)  # the crop tests/conftest.py builds the tiny cmu_small_region data set from
MPP = 0.5


def _disc_image(centres: list[tuple[float, float]], radius: float, shape=(96, 128)) -> np.ndarray:
    """Pink (eosin-like) background with dark purple (haematoxylin-like) discs of `radius` px at continuous (y, x)
    centres: a pixel (i, j) is inside when its centre (i + 0.5, j + 0.5) lies within the radius."""
    image = np.full((*shape, 3), (235, 170, 200), np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (70, 30, 110)
    return image


def test_nucleus_centres_on_hand_made_blobs():
    # discs of radius 6 px = 3 µm at 0.5 µm/px; the first three centred on a pixel, the last on a pixel corner
    # (a 2 × 2 plateau of the response, reported at one of its pixels: within 1 px); two 16 px = 8 µm apart, a 4 px
    # gap (> the 4 µm minimum distance; at 12 px they touch and their LoG responses push each peak 1 px outwards);
    # a speck of radius 2 px (13 px² < 12 µm² = 48 px²) is not a nucleus.
    blobs = [(20.5, 20.5), (20.5, 80.5), (36.5, 80.5), (70.0, 50.0)]
    image = _disc_image(blobs, 6.0)
    yy, xx = np.mgrid[:96, :128] + 0.5
    image[(yy - 75.5) ** 2 + (xx - 110.5) ** 2 <= 4.0] = (70, 30, 110)
    found = nuclei.nucleus_centres(image, MPP, radius_microns=3.0, min_area_microns2=12.0, min_distance_microns=4.0)
    assert found.shape == (4, 2)
    order = sorted(blobs)  # row-major, as nucleus_centres returns them
    np.testing.assert_allclose(found[:3], order[:3], atol=1e-9)  # centred on a pixel: exact
    assert np.abs(found[3] - order[3]).max() <= 1.0


def test_nucleus_centres_deterministic_and_in_tissue():
    region = embedded.read_slide(CROP)[:128, 256:384]
    first = nuclei.nucleus_centres(region, 0.499)
    second = nuclei.nucleus_centres(region.copy(), 0.499)
    np.testing.assert_array_equal(first, second)
    assert len(first) >= 10  # the region is dense dermis (about 30 nuclei by eye)
    assert np.all(np.diff(first[:, 0]) >= 0)  # row-major
    density = nuclei.haematoxylin_density(region)
    assert np.all(density[first[:, 0].astype(int), first[:, 1].astype(int)] > np.median(density))


def _tiny_embedded_config(data_dir) -> ml_collections.ConfigDict:
    config = runpy.run_path("configs/detection_embedded.py")["get_config"]()
    tiny = tiny_config()
    for key in ("model", "optimizer", "checkpoint", "data"):
        config[key] = tiny[key]
    config.data.data_dir, config.data.builder_config = str(data_dir), TINY_BUILDER
    config.batch_size, config.num_steps, config.log_every_steps = tiny.batch_size, 2, 2
    config.optimizer.warmup_steps = 1
    d = config.detection
    d.embedded_crop, d.region_size = CROP, 128  # the tiny builder's crop and regions
    d.num_steps, d.batch_size, d.hidden, d.negatives_per_image, d.normalizer_fit_tiles = 20, 16, 16, 20, 16
    return config


def test_targets_identical_for_every_site(tiny_data_dir):
    d = _tiny_embedded_config(tiny_data_dir).detection
    split, mpp = embedded.load_split(d)
    assert mpp == 0.499  # the slide's Aperio MPP
    regions = {r.region_id: r for r in embedded.slide_regions(embedded.read_slide(CROP), 128, d.min_region_tissue)}
    by_region: dict[int, list] = {}
    for image in split["test"]:
        by_region.setdefault(image.image_id // len(d.sites), []).append(image)
    assert by_region and all(sorted(im.scanner for im in ims) == sorted(d.sites) for ims in by_region.values())
    for region_id, images in by_region.items():
        unperturbed = nuclei.nucleus_centres(regions[region_id].pixels, 0.499)
        for image in images:
            np.testing.assert_array_equal(image.truths, unperturbed)
        assert not all(np.array_equal(images[0].pixels, im.pixels) for im in images[1:])  # renderings differ
    train = [im.image_id // len(d.sites) for im in split["train"] + split["val"]]
    assert {im.scanner for im in split["train"] + split["val"]} == {"source"}
    assert not set(train) & set(by_region)  # spatially disjoint: no region on both sides


def test_detection_embedded_config_end_to_end(tiny_data_dir, tmp_path):
    config = _tiny_embedded_config(tiny_data_dir)
    d = config.detection
    detection_mode.validate(config)
    results = detection_mode.run(config, epath.Path(tmp_path))
    on_disk = json.loads((tmp_path / "detection" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert results["scanners"] == list(d.sites) and list(results["rows"]) == list(d.rows)
    assert results["microns_per_pixel"] == {s: 0.499 for s in d.sites}
    for row in results["rows"].values():
        assert set(row["per_scanner"]) == set(d.sites)
        truths = {v["tp"] + v["fn"] for v in row["per_scanner"].values()}
        assert len(truths) == 1 and truths.pop() > 0  # every site is scored against the same proxy nuclei
        assert all(v["f1"] is None or 0 <= v["f1"] <= 1 for v in row["per_scanner"].values())
    table = (tmp_path / "detection" / "results.md").read_text()
    assert "| source (source) | scanner_tone | lab_shift | stain_transfer | jpeg_blur | mean unseen |" in table
    assert all(f"| {name} |" in table for name in d.rows) and "proxy nuclei" in table
