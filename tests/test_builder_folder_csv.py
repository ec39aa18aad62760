"""TFDS builder `folder_csv`: CSV-indexed image folders, label/domain/patient encoding, splits, skipped files."""

import csv
import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import build
from data_pipelines.builders import common
from data_pipelines.builders.folder_csv import FolderCsvConfig, build_dataset

TILE = 32
DOMAINS = ("scanner_B", "scanner_A", "stain_C")  # deliberately unsorted


def write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_folder(root: pathlib.Path, *, with_split: bool = False) -> tuple[list[list], dict[str, np.ndarray]]:
    """8 patients x 2 images (sizes 32x32, 40x56, 64x48), one corrupt file, one unlabelled row."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows, pixels = [], {}
    for p in range(8):
        for k, shape in enumerate([(32, 32), (40, 56), (64, 48)][p % 2 : p % 2 + 2]):
            name = f"images/p{p:02d}_{k}.png"
            image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / name)
            pixels[name] = image
            label = "" if (p, k) == (3, 1) else ("tumour" if (p + k) % 2 else "normal")
            row = [name, label, DOMAINS[(p + k) % 3], f"patient{p}"]
            rows.append(row + (["val" if p >= 6 else "train"] if with_split else []))
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows.append(["images/broken.png", "normal", "scanner_A", "patient1"] + (["train"] if with_split else []))
    header = ["path", "label", "domain", "patient"] + (["split"] if with_split else []) + ["notes"]
    write_csv(root / "index.csv", header, [row + ["free text"] for row in rows])
    return rows, pixels


def config() -> FolderCsvConfig:
    return FolderCsvConfig(name="test32", tile_size=TILE, test_fraction=0.25)


def load(data_dir: pathlib.Path, name: str) -> dict[str, dict[str, np.ndarray]]:
    source = tfds.data_source(f"folder_csv/{name}", data_dir=str(data_dir), download=False)
    return {split: {k: np.stack([ex[k] for ex in source[split]]) for k in source[split][0]} for split in source}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[pathlib.Path, list[list], dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("folder")
    rows, pixels = make_folder(root)
    return root, rows, pixels


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    data_dir = tmp_path_factory.mktemp("tfds")
    version_dir = build_dataset(data_dir, folder[0], config=config())
    return data_dir, version_dir


def test_patient_disjoint_split_and_encodings(folder, built):
    _, rows, _ = folder
    splits = load(built[0], "test32")
    assert sorted(splits) == ["test", "train"]
    train, test = splits["train"], splits["test"]
    assert len(set(test["region"].tolist())) == 2 and len(set(train["region"].tolist())) == 6
    assert not set(train["region"].tolist()) & set(test["region"].tolist())
    info = tfds.builder("folder_csv/test32", data_dir=str(built[0])).info
    assert info.features["site"].names == sorted(DOMAINS)
    for split in (train, test):
        for tile_id, label, site, region in zip(split["tile_id"], split["label"], split["site"], split["region"]):
            path, label_name, domain, patient = rows[tile_id // 10_000][:4]
            assert label == {"normal": 0, "tumour": 1, "": -1}[label_name], path
            assert info.features["site"].names[site] == domain
            assert region == int(patient.removeprefix("patient"))  # ranks of sorted names patient0..patient7
    assert (train["label"] == -1).sum() + (test["label"] == -1).sum() == 1


def test_images_are_fitted_and_exact_sizes_kept(folder, built):
    _, rows, pixels = folder
    split = load(built[0], "test32")["train"]
    for row, tile_id in enumerate(split["tile_id"]):
        image = pixels[rows[tile_id // 10_000][0]]
        expected, origin = common.fit_square(image, TILE)
        np.testing.assert_array_equal(split["image"][row], expected)
        assert tuple(split["coords"][row]) == origin
        if image.shape[:2] == (TILE, TILE):
            np.testing.assert_array_equal(split["image"][row], image)


def test_corrupt_image_is_skipped_and_recorded(folder, built):
    metadata = json.loads((built[1] / "metadata.json").read_text())
    assert metadata["label_names"] == ["normal", "tumour"]
    assert [s["path"] for s in metadata["skipped"]] == ["images/broken.png"]  # relative to manual_dir
    assert metadata["skipped"][0]["reason"] == "cannot decode (UnidentifiedImageError)"
    splits = load(built[0], "test32")
    assert sum(len(s["tile_id"]) for s in splits.values()) == len(folder[1]) - 1


def test_rebuild_is_byte_identical(folder, built, tmp_path):
    again = build_dataset(tmp_path, folder[0], config=config())
    names = sorted(p.name for p in built[1].iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (built[1] / name).read_bytes() == (again / name).read_bytes(), name


def test_split_column_integer_labels_and_tile_mode(tmp_path):
    rows, pixels = make_folder(tmp_path / "data", with_split=True)
    for row in rows:
        row[1] = {"normal": "0", "tumour": "4", "": "-1"}[row[1]]
    write_csv(tmp_path / "data" / "index.csv", ["path", "label", "domain", "patient", "split"], rows)
    version_dir = build_dataset(tmp_path / "tfds", tmp_path / "data",
                                config=FolderCsvConfig(name="grid16", tile_size=16, mode="tile"))
    splits = load(tmp_path / "tfds", "grid16")
    assert sorted(splits) == ["train", "val"]
    assert set(splits["val"]["region"].tolist()) == {6, 7}
    assert set(np.concatenate([s["label"] for s in splits.values()]).tolist()) == {-1, 0, 4}
    assert json.loads((version_dir / "metadata.json").read_text())["label_names"] is None
    val = splits["val"]
    for row in range(len(val["tile_id"])):
        number, tile = divmod(int(val["tile_id"][row]), 10_000)
        image = pixels[rows[number][0]]
        y, x = val["coords"][row]
        assert (y, x) == common.grid_origins(*image.shape[:2], 16)[tile]
        np.testing.assert_array_equal(val["image"][row], image[y : y + 16, x : x + 16])


def test_index_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere/index\.csv.*path,label,domain,patient"):
        build_dataset(tmp_path / "tfds", tmp_path / "nowhere")
    root = tmp_path / "data"
    root.mkdir()
    write_csv(root / "index.csv", ["file", "label", "site", "patient"], [["a.png", "1", "x", "p"]])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['path', 'domain'\]; found \['file', 'label'"):
        build_dataset(tmp_path / "tfds", root)
    write_csv(root / "index.csv", ["path", "label", "domain", "patient"], [["gone.png", "1", "x", "p"]])
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\) named in .*gone\.png"):
        build_dataset(tmp_path / "tfds", root)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a.png")
    header = ["path", "label", "domain", "patient", "split"]
    write_csv(root / "index.csv", header, [["a.png", "1", "x", "p", "hold out"]])
    with pytest.raises(ValueError, match="Split name 'hold out' from the split column"):
        build_dataset(tmp_path / "tfds", root)
    write_csv(root / "index.csv", ["path", "label", "domain", "patient"], [["a.png", "1", "x", ""]])
    with pytest.raises(ValueError, match=r"line 2: empty \['patient'\]"):
        build_dataset(tmp_path / "tfds", root)


def test_skip_counts_in_metadata(built):
    metadata = json.loads((built[1] / "metadata.json").read_text())
    assert metadata["skip_counts"] == {"duplicate row": 0, "cannot decode": 1, "smaller than one tile": 0}


def small_folder(root: pathlib.Path, rows: list[list[str]]) -> pathlib.Path:
    """Two 16x16 images a.png, b.png in `root` (made if needed) and an index.csv with `rows`."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / name)
    write_csv(root / "index.csv", ["path", "label", "domain", "patient", "split"], rows)
    return root


def test_paths_outside_the_folder_are_refused_unless_allowed(tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    for outside in ("../x.png", str(tmp_path / "x.png"), "sub/../../x.png"):
        root = small_folder(tmp_path / "data", [["a.png", "0", "s", "p", "train"], [outside, "1", "s", "q", "train"]])
        with pytest.raises(ValueError, match=rf"index\.csv line 3: path '{outside}' lies outside .*allow_outside=True"):
            build_dataset(tmp_path / "tfds", root, config=FolderCsvConfig(name="t16", tile_size=16))
    allowed = FolderCsvConfig(name="t16out", tile_size=16, allow_outside=True)
    build_dataset(tmp_path / "tfds", root, config=allowed)
    assert len(load(tmp_path / "tfds", "t16out")["train"]["tile_id"]) == 2
    inside = small_folder(tmp_path / "inside", [[str(tmp_path / "inside" / "a.png"), "0", "s", "p", "train"]])
    build_dataset(tmp_path / "tfds", inside, config=FolderCsvConfig(name="t16in", tile_size=16))


def test_duplicate_rows_are_skipped_and_counted_strict_makes_them_fatal(tmp_path):
    rows = [["a.png", "0", "s", "p", "train"], ["b.png", "1", "s", "p", "train"], ["./a.png", "1", "s", "q", "train"]]
    root = small_folder(tmp_path / "data", rows)
    version_dir = build_dataset(tmp_path / "tfds", root, config=FolderCsvConfig(name="t16", tile_size=16))
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["skip_counts"]["duplicate row"] == 1
    assert metadata["skipped"] == [{"path": "a.png", "reason": "duplicate row (line 4 names the file of line 2)"}]
    assert sorted(load(tmp_path / "tfds", "t16")["train"]["tile_id"].tolist()) == [0, 10_000]
    strict = FolderCsvConfig(name="t16strict", tile_size=16, strict=True)
    with pytest.raises(ValueError, match=r"index\.csv line 4: .*a\.png was already named on line 2; remove"):
        build_dataset(tmp_path / "tfds", root, config=strict)


def test_strict_makes_an_undecodable_image_fatal(tmp_path):
    root = small_folder(tmp_path / "data", [["a.png", "0", "s", "p", "train"], ["bad.png", "0", "s", "p", "train"]])
    (root / "bad.png").write_bytes(b"not a png")
    strict = FolderCsvConfig(name="t16strict", tile_size=16, strict=True)
    with pytest.raises(ValueError, match=r"bad\.png \(index line 3\): cannot decode .*strict=False"):
        build_dataset(tmp_path / "tfds", root, config=strict)


def test_a_latin1_csv_names_file_and_line(tmp_path):
    root = small_folder(tmp_path / "data", [])
    (root / "index.csv").write_bytes("path,label,domain,patient\na.png,0,s,p\nb.png,0,Zürich,p\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"data/index\.csv line 3: byte 0xfc is not UTF-8 .*save the CSV as UTF-8"):
        build_dataset(tmp_path / "tfds", root)


def test_build_command_line_prints_the_error_as_one_line(tmp_path, capsys):
    root = small_folder(tmp_path / "data", [["../x.png", "0", "s", "p", "train"]])
    assert build.main(["--name", "folder_csv", "--data_dir", str(tmp_path / "tfds"), "--manual_dir", str(root)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: ") and "index.csv line 2: path '../x.png'" in error
