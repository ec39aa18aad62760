"""grain input pipeline over TFDS array_record data sources: a resumable, per-process sharded train stream.

Train order: source -> shuffle (config seed, reshuffled each epoch) -> repeat -> random dihedral
flip/rotation per record -> shard by process -> batch (drop remainder) -> prefetch. The flip and
90-degree rotation are done here on the host: they are exact, cost a 12 KiB copy per 64-px tile and
leave on-device augmentation to the stain views and random crops. Every process computes the same
global shuffled and augmented stream (randomness keyed by global position) and takes positions
p, p + N, p + 2N, ...; so the N processes read each epoch's records exactly once between them.
Data directories go through etils.epath, so `gs://bucket/tfds` stays a bucket path.
"""

import functools
import importlib
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.build import DataError

_EXAMPLE_KEYS = ("image", "label", "site", "region", "coords", "tile_id")
EMBEDDED = ("cmu_small_region", "cmu_magnification")  # built from the installed slide: no manual_dir, no download
_READ_THREADS = 2  # threads assembling batches ahead of the consumer (per process)
_PREFETCH_BATCHES = 2  # batches buffered ahead of the consumer (per process)
_LOAD_CHUNK = 512  # records decoded per call when loading a whole split


def _builder_config_name(config: ml_collections.ConfigDict) -> str:
    return config.data.get("builder_config") or f"tile{config.data.tile_size}"


def _build_hint(name: str, data_dir: epath.PathLike, config_name: str) -> str:
    """The exact command that builds `name/config_name` under `data_dir`."""
    command = f"python -m data_pipelines.build --name {name} --config {config_name} --data_dir {data_dir}"
    if name in EMBEDDED:
        return f"Build it with: {command}"
    return (f"Build it with: {command} --manual_dir <folder with the downloaded files> (layout: "
            f"data_pipelines/builders/{name}/), or set --config.data.manual_dir=<that folder> to build it on the first run.")


def _is_built(data_dir: epath.PathLike, name: str, config_name: str) -> bool:
    return any((epath.Path(data_dir) / name / config_name).glob("*/dataset_info.json"))


def data_source(config: ml_collections.ConfigDict, data_dir: epath.PathLike, split: str) -> Any:
    """The random-access TFDS data source of `split` of data set `config.data.name` under `data_dir`."""
    name, config_name = config.data.name, _builder_config_name(config)
    path = epath.Path(data_dir) / name / config_name
    if not _is_built(data_dir, name, config_name):
        raise DataError(f"Data set {name}/{config_name} is not built under {path} (config.data.data_dir="
                        f"{str(data_dir)!r}). {_build_hint(name, data_dir, config_name)}")
    source = tfds.data_source(f"{name}/{config_name}", data_dir=str(data_dir), download=False)
    if split not in source:
        raise DataError(f"Split {split!r} not in {name}/{config_name} at {path}; available: {sorted(source)}: "
                        "name one of those in config.eval.source_split / config.eval.heldout_splits.")
    return source[split]


def split_size(config: ml_collections.ConfigDict, data_dir: epath.PathLike, split: str) -> int:
    """Number of records in `split` (read from the data set's metadata, nothing decoded)."""
    return len(data_source(config, data_dir, split))


def site_names(config: ml_collections.ConfigDict, data_dir: epath.PathLike, split: str) -> list[str]:
    """The names of the `site` ClassLabel of data set `config.data.name` (index = stored site id)."""
    return list(data_source(config, data_dir, split).dataset_info.features["site"].names)


def ensure_built(config: ml_collections.ConfigDict) -> None:
    """Builds the data set under config.data.data_dir if missing: an embedded one (EMBEDDED) from the installed
    slide, a user's data set from `config.data.manual_dir` (the downloaded files); otherwise a clear error."""
    name, config_name, data_dir = config.data.name, _builder_config_name(config), config.data.data_dir
    if _is_built(data_dir, name, config_name):
        return
    manual_dir = config.data.get("manual_dir") or ""
    if name not in EMBEDDED and manual_dir:
        from data_pipelines import build  # pylint: disable=import-outside-toplevel

        build.build(name, data_dir, manual_dir, config_name)
        return
    if name not in EMBEDDED:
        raise DataError(f"Data set {name}/{config_name} is not built under config.data.data_dir={str(data_dir)!r} "
                        f"and config.data.manual_dir is empty. {_build_hint(name, data_dir, config_name)}")
    importlib.import_module(f"data_pipelines.builders.{name}").build_dataset(data_dir, config=config_name)


def _local_batch_size(batch_size: int, process_count: int) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"config.batch_size={batch_size} must be a positive multiple of process_count={process_count}."
        )
    return batch_size // process_count


def _flip_rotate(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Random element of the dihedral group D4 (90-degree rotations, optional horizontal flip) on `image`."""
    image = np.rot90(example["image"], k=int(rng.integers(4)))
    if rng.integers(2):
        image = image[:, ::-1]
    return {**example, "image": np.ascontiguousarray(image)}


def train_dataset(source: Any, *, seed: int, local_batch: int, worker_count: int = 0, process_index: int = 0,
                  process_count: int = 1, samples: tuple[np.ndarray, np.ndarray] | None = None,
                  sample_ratio: float = 0.0) -> grain.IterDataset:
    """The train stream of this process over any random-access `source` of decoded examples (module docstring).

    `samples` (images, labels) with `sample_ratio` > 0: that share of records is replaced by random samples (the
    DCGAN-augmented baseline), keyed by stream position like the flips, so a resumed run sees the same stream.

    Records are decoded (the source's `__getitem__`) by grain's read threads, or by `worker_count` worker
    processes, ahead of the consumer: decoding stays off the training loop's critical path.
    """
    n_records = len(source) - len(source) % process_count  # every process gets the same number per epoch
    if n_records == 0:
        raise ValueError(f"The train split has {len(source)} records, fewer than {process_count} processes.")
    dataset = grain.MapDataset.source(source)[:n_records].seed(seed).shuffle().repeat()
    if samples is not None and sample_ratio > 0:
        dataset = dataset.random_map(functools.partial(_with_samples, images=samples[0], labels=samples[1],
                                                       ratio=sample_ratio))
    dataset = dataset.random_map(_flip_rotate)[process_index::process_count]
    dataset = dataset.batch(local_batch, drop_remainder=True)
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES)
    )
    if worker_count > 0:
        iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter_dataset


class _Subset:
    """The records of a random-access source at `indices`, as a random-access source."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[self.indices[index]]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return self.source.__getitems__([self.indices[i] for i in indices])


def validation_regions(regions: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The region (patient) ids kept out of training for model selection: `fraction` of the regions of each
    majority class (at least one where a class has two or more), drawn with `seed`. Sorted ids.

    The one rule of config.data.val_region_fraction: the train stream drops these regions and mode=lomo
    selects models on them, so validation and training never share a patient.
    """
    if fraction <= 0:
        return np.zeros(0, np.int64)
    regions, labels = np.asarray(regions, np.int64), np.asarray(labels, np.int64)
    names = np.unique(regions)
    majority = np.array([np.bincount(np.maximum(labels[regions == r], 0)).argmax() for r in names])
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(majority):
        members = names[majority == label]
        count = int(round(fraction * len(members)))
        count = max(count, 1) if len(members) >= 2 else 0
        held.extend(rng.permutation(members)[:count].tolist())
    return np.array(sorted(held), np.int64)


def _metadata(source: Any) -> dict[str, np.ndarray]:
    """site, region and label of every record of `source`, in order (one pass)."""
    rows = [example for start in range(0, len(source), _LOAD_CHUNK)
            for example in source.__getitems__(range(start, min(start + _LOAD_CHUNK, len(source))))]
    return {key: np.array([int(example[key]) for example in rows], np.int64) for key in ("site", "region", "label")}


def _train_subset(source: Any, config: ml_collections.ConfigDict, names: Sequence[str]) -> Any:
    """The train records of the sites config.data.train_sites names (() = all), without the validation regions
    of config.data.val_region_fraction; `source` itself when neither restricts it."""
    sites, fraction = tuple(config.data.get("train_sites", ())), config.data.get("val_region_fraction", 0.0)
    if not sites and fraction <= 0:
        return source
    unknown = sorted(set(sites) - set(names))
    if unknown:
        raise DataError(f"config.data.train_sites names {unknown}, not sites of the train split; its sites: "
                        f"{list(names)}")
    meta = _metadata(source)
    keep = np.isin(meta["site"], [names.index(site) for site in sites]) if sites else np.ones(len(source), bool)
    keep &= ~np.isin(meta["region"], validation_regions(meta["region"], meta["label"], fraction, config.seed))
    if not keep.any():
        raise DataError(f"config.data.train_sites={sites} with val_region_fraction={fraction}: no train record is "
                        "left to train on")
    return _Subset(source, np.flatnonzero(keep))


def _sample_bank(path: str, tile_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, T, T, 3], labels int64 [N]) of a DCGAN sample bank (lmc_jax.dcgan.run's bank.npz)."""
    try:
        with epath.Path(path).open("rb") as f, np.load(f) as bank:
            images, labels = np.asarray(bank["images"]), np.asarray(bank["labels"], np.int64)
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"config.dcgan.bank_path={path!r} is not a readable sample bank ({error}); rerun "
                        "mode=lomo (or lmc_jax.dcgan.run) to write it.") from None
    if images.dtype != np.uint8 or images.shape[1:] != (tile_size, tile_size, 3) or len(images) != len(labels):
        raise DataError(f"config.dcgan.bank_path={path!r} holds images {images.dtype} {images.shape} and "
                        f"{len(labels)} labels; the run needs uint8 [N, {tile_size}, {tile_size}, 3] with one label "
                        "each: regenerate it for this data set's tile size.")
    return images, labels


def _with_samples(example: dict[str, Any], rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                  ratio: float) -> dict[str, Any]:
    """With probability `ratio`, the record replaced by a random bank sample: its class label, no site or region."""
    if rng.random() >= ratio:
        return example
    index = int(rng.integers(len(images)))
    none = np.int64(-1)
    return {**example, "image": images[index], "label": labels[index], "site": none, "region": none,
            "tile_id": none}


def make_train_iterator(
    config: ml_collections.ConfigDict, data_dir: epath.PathLike, *, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """Endless, checkpointable iterator of this process's train batches (dicts of numpy, `image` uint8 [B, T, T, 3]).

    Reads config.seed, config.batch_size (global), config.data.{name, tile_size, worker_count, train_sites
    (() = every site; else only the train records of those sites, e.g. one hospital), val_region_fraction (those
    regions are left out: `validation_regions`), builder_config ("" or absent = f"tile{tile_size}")} and
    config.dcgan.{ratio, bank_path} (the share of records replaced by DCGAN samples). Save/restore its position with `get_state()`/`set_state()` or
    `grain.checkpoint.CheckpointSave/CheckpointRestore`; keep `worker_count` fixed across a resume.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
    local_batch = _local_batch_size(config.batch_size, process_count)
    source = _train_subset(data_source(config, data_dir, "train"), config, site_names(config, data_dir, "train"))
    if len(source) < process_count:
        raise ValueError(
            f"The train split under {data_dir} has {len(source)} records, fewer than {process_count} processes."
        )
    gan = config.get("dcgan", {})
    ratio = gan.get("ratio", 0.0)
    samples = _sample_bank(gan.bank_path, config.data.tile_size) if ratio > 0 else None
    return iter(train_dataset(source, seed=config.seed, local_batch=local_batch,
                              worker_count=config.data.get("worker_count", 0), process_index=process_index,
                              process_count=process_count, samples=samples, sample_ratio=ratio))


def load_split(config: ml_collections.ConfigDict, data_dir: epath.PathLike, split: str,
               indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """A split (or its records at `indices`) in memory, in file order: image uint8 (N, T, T, 3), coords int64
    (N, 2), the rest int64 (N,)."""
    source = data_source(config, data_dir, split)
    indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
    examples = [
        example
        for start in range(0, len(indices), _LOAD_CHUNK)
        for example in source.__getitems__(indices[start : start + _LOAD_CHUNK])
    ]
    if not examples:
        raise ValueError(f"Split {split!r} of {config.data.name} under {data_dir} is empty; rebuild it with more tiles.")
    return {
        key: np.stack([example[key] for example in examples]).astype(np.uint8 if key == "image" else np.int64)
        for key in _EXAMPLE_KEYS
    }
