"""TFDS builder `camelyon16` on tiny pyramidal TIFF slides + ASAP XML; the tifffile region reader; ASAP parsing."""

import json
import pathlib
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tifffile

from data_pipelines import tiling
from data_pipelines.builders.camelyon16 import Camelyon16Config, asap, build_dataset, wsi

HEIGHT, WIDTH, TILE = 256, 384, 32
SLIDES = ("normal_001", "normal_002", "normal_101", "normal_102", "tumor_001", "tumor_002", "tumor_071",
          "tumor_072", "tumor_003")  # tumor_003 has no annotation file
TUMOUR_BOX = (40, 56, 200, 216)  # x0, y0, x1, y1 of the metastasis polygon (level 0)
EXCLUSION_BOX = (100, 100, 150, 150)


def slide_pixels(seed: int) -> np.ndarray:
    """Pink tissue on the left three quarters, white glass on the right."""
    rng = np.random.default_rng(seed)
    image = np.full((HEIGHT, WIDTH, 3), 243, np.uint8)
    tissue = np.array([205, 125, 185]) + rng.integers(-25, 25, (HEIGHT, WIDTH * 3 // 4, 3))
    image[:, : WIDTH * 3 // 4] = tissue.clip(0, 255).astype(np.uint8)
    return image


def write_pyramid(path: pathlib.Path, image: np.ndarray, *, subifds: bool) -> None:
    """Tiled Deflate TIFF with levels /1, /2, /4: as following pages (ASAP) or as SubIFDs."""
    levels = [image, image[::2, ::2], image[::4, ::4]]
    with tifffile.TiffWriter(path) as writer:
        if subifds:
            writer.write(levels[0], tile=(64, 64), subifds=2, photometric="rgb", compression="zlib")
            for level in levels[1:]:
                writer.write(level, tile=(64, 64), subfiletype=1, photometric="rgb", compression="zlib")
        else:
            for level in levels:
                writer.write(level, tile=(64, 64), photometric="rgb", compression="zlib")
        writer.write(np.zeros((40, 30, 3), np.uint8), photometric="rgb")  # a "label image" of another aspect


def polygon_xml(groups: dict[str, tuple[int, int, int, int]]) -> str:
    annotations = []
    for index, (group, (x0, y0, x1, y1)) in enumerate(groups.items()):
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(corners))
        annotations.append(f'<Annotation Name="_{index}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
                           f"<Coordinates>{coords}</Coordinates></Annotation>")
    return (f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{"".join(annotations)}</Annotations>'
            f'<AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>'
            f"</AnnotationGroups></ASAP_Annotations>")


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """CAMELYON16/training/{normal,tumor}/*.tif + lesion_annotations.zip, as downloaded."""
    root = tmp_path_factory.mktemp("camelyon16") / "CAMELYON16"
    pixels = {}
    for seed, stem in enumerate(SLIDES):
        kind = stem.split("_")[0]
        (root / "training" / kind).mkdir(parents=True, exist_ok=True)
        pixels[stem] = slide_pixels(seed)
        write_pyramid(root / "training" / kind / f"{stem}.tif", pixels[stem], subifds=seed % 2 == 1)
    with zipfile.ZipFile(root / "training" / "lesion_annotations.zip", "w") as archive:
        for stem in SLIDES[4:8]:
            archive.writestr(f"{stem}.xml", polygon_xml({"_0": TUMOUR_BOX, "_2": EXCLUSION_BOX}))
    return root, pixels


def config(**kwargs) -> Camelyon16Config:
    values = {"name": "test32", "tile_size": TILE, "tumour_per_slide": 5, "normal_per_slide": 6,
              "mask_downsample": 2, "test_fraction": 0.5}
    return Camelyon16Config(**{**values, **kwargs})


def load(data_dir: pathlib.Path, name: str) -> dict[str, dict[str, np.ndarray]]:
    source = tfds.data_source(f"camelyon16/{name}", data_dir=str(data_dir), download=False)
    return {split: {k: np.stack([ex[k] for ex in source[split]]) for k in source[split][0]} for split in source}


@pytest.fixture(scope="module")
def built(replica, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, build_dataset(data_dir, replica[0], config=config())


def stem_of(region: int) -> str:
    return f"tumor_{region - 1000:03d}" if region >= 1000 else f"normal_{region:03d}"


def test_splits_sites_regions(built):
    splits = load(built[0], "test32")
    assert sorted(splits) == ["test", "train"]
    regions = [set(s["region"].tolist()) for s in splits.values()]
    assert not regions[0] & regions[1] and regions[0] | regions[1] == {1, 2, 101, 102, 1001, 1002, 1071, 1072}
    for split in splits.values():
        assert len(set(split["region"].tolist())) == 4  # one slide of each (site, kind) stratum
        expected_site = [int(int(stem_of(r)[-3:]) > (70 if r >= 1000 else 100)) for r in split["region"]]
        np.testing.assert_array_equal(split["site"], expected_site)
        np.testing.assert_array_equal(split["tile_id"] // 1_000_000, split["region"])
    metadata = json.loads((built[1] / "metadata.json").read_text())
    assert [s["path"] for s in metadata["skipped"]] == ["tumor/tumor_003.tif"]  # relative to training/
    info = tfds.builder("camelyon16/test32", data_dir=str(built[0])).info
    assert info.features["site"].names == ["radboud_umc", "umc_utrecht"]


def test_labels_follow_the_polygons_and_pixels_the_slide(built, replica):
    pixels = replica[1]
    splits = load(built[0], "test32")
    for split in splits.values():
        for row in range(len(split["tile_id"])):
            y, x = split["coords"][row]
            assert y % TILE == 0 and x % TILE == 0
            stem = stem_of(int(split["region"][row]))
            np.testing.assert_array_equal(split["image"][row], pixels[stem][y : y + TILE, x : x + TILE])
            cx, cy = x + TILE / 2, y + TILE / 2
            in_box = lambda box: box[0] <= cx <= box[2] and box[1] <= cy <= box[3]  # noqa: E731
            tumour = stem.startswith("tumor") and in_box(TUMOUR_BOX) and not in_box(EXCLUSION_BOX)
            assert split["label"][row] == tumour, (stem, y, x)
            mask = tiling.tissue_mask(pixels[stem][::2, ::2])  # the mask the builder sees (mask_downsample 2)
            assert mask[y // 2 : (y + TILE) // 2, x // 2 : (x + TILE) // 2].mean() >= 0.5
    labels = np.concatenate([s["label"] for s in splits.values()])
    regions = np.concatenate([s["region"] for s in splits.values()])
    for region in (1001, 1002, 1071, 1072):
        assert (labels[regions == region] == 1).sum() == 5 and (labels[regions == region] == 0).sum() == 6
    assert (labels[regions < 1000] == 0).all() and (regions < 1000).sum() == 4 * 6


def test_level_one_patches_come_from_level_one(replica, tmp_path):
    build_dataset(tmp_path, replica[0], config=config(name="level1", level=1, tumour_per_slide=2, normal_per_slide=2))
    split = load(tmp_path, "level1")["train"]
    for row in range(len(split["tile_id"])):
        y, x = split["coords"][row]
        assert y % (2 * TILE) == 0 and x % (2 * TILE) == 0
        level1 = replica[1][stem_of(int(split["region"][row]))][::2, ::2]
        np.testing.assert_array_equal(split["image"][row], level1[y // 2 : y // 2 + TILE, x // 2 : x // 2 + TILE])


def test_rebuild_is_byte_identical(built, replica, tmp_path):
    again = build_dataset(tmp_path, replica[0] / "training", config=config())
    names = sorted(p.name for p in built[1].iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (built[1] / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.parametrize("subifds", [False, True])
def test_pyramid_levels_and_region_reads(tmp_path, subifds):
    image = slide_pixels(7)
    write_pyramid(tmp_path / "slide.tif", image, subifds=subifds)
    with tifffile.TiffFile(tmp_path / "slide.tif") as tif:
        levels = wsi.pyramid(tif)
        assert [page.shape[:2] for page in levels] == [(256, 384), (128, 192), (64, 96)]
        assert [wsi.downsample(levels[0], page) for page in levels] == [1, 2, 4]
        np.testing.assert_array_equal(wsi.read_region(levels[0], 50, 70, 100, 130), image[50:150, 70:200])
        np.testing.assert_array_equal(wsi.read_region(levels[2], 0, 0, 64, 96), image[::4, ::4])
        with pytest.raises(ValueError, match="outside the 128x192 page"):
            wsi.read_region(levels[1], 100, 0, 40, 10)


def test_region_reads_on_a_jpeg_tiled_aperio_slide():
    with tifffile.TiffFile(tiling.locate_cmu_slide()) as tif:
        page = tif.pages[0]
        full = page.asarray()
        np.testing.assert_array_equal(wsi.read_region(page, 230, 470, 300, 260), full[230:530, 470:730])
        stripped = tif.pages[1]  # the JPEG thumbnail is stored in strips
        np.testing.assert_array_equal(wsi.read_region(stripped, 5, 7, 90, 80), stripped.asarray()[5:95, 7:87])


def test_asap_groups(tmp_path):
    xml = polygon_xml({"_0": (0, 0, 10, 10), "Tumor": (20, 0, 30, 10), "_2": (2, 2, 4, 4)})
    annotations = asap.parse(xml, "inline")
    assert len(annotations.tumour) == 2 and len(annotations.exclusion) == 1
    points = np.array([[5, 5], [3, 3], [25, 5], [15, 5]])
    np.testing.assert_array_equal(asap.is_tumour(points, annotations), [True, False, True, False])
    with pytest.raises(ValueError, match="group 'metastases'; Camelyon16 uses"):
        asap.parse(polygon_xml({"metastases": (0, 0, 1, 1)}), "inline")


def test_missing_slides_name_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere/training/normal.*lesion_annotations"):
        build_dataset(tmp_path / "tfds", tmp_path / "nowhere")
    (tmp_path / "training" / "tumor").mkdir(parents=True)
    (tmp_path / "training" / "tumor" / "tumour_1.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=r"tumour_1\.tif: expected tumor/tumor_NNN\.tif"):
        build_dataset(tmp_path / "tfds", tmp_path)
