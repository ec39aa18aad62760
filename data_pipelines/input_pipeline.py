"""grain input pipeline over TFDS array_record data sources: a resumable, per-process sharded train stream.

Train order: source -> shuffle (config seed, reshuffled each epoch) -> repeat -> random dihedral
flip/rotation per record -> shard by process -> batch (drop remainder) -> prefetch. The flip and
90-degree rotation are done here on the host: they are exact, cost a 12 KiB copy per 64-px tile and
leave on-device augmentation to the stain views and random crops. Every process computes the same
global shuffled and augmented stream (randomness keyed by global position) and takes positions
p, p + N, p + 2N, ...; so the N processes read each epoch's records exactly once between them.
Data directories go through etils.epath, so `gs://bucket/tfds` stays a bucket path.
"""

from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.build import DataError

_EXAMPLE_KEYS = ("image", "label", "site", "region", "coords", "tile_id")
_READ_THREADS = 2  # threads assembling batches ahead of the consumer (per process)
_PREFETCH_BATCHES = 2  # batches buffered ahead of the consumer (per process)
_LOAD_CHUNK = 512  # records decoded per call when loading a whole split


def _builder_config_name(config: ml_collections.ConfigDict) -> str:
    return config.data.get("builder_config") or f"tile{config.data.tile_size}"


def _build_hint(name: str, data_dir: epath.PathLike, config_name: str) -> str:
    """The exact command that builds `name/config_name` under `data_dir`."""
    command = f"python -m data_pipelines.build --name {name} --config {config_name} --data_dir {data_dir}"
    if name == "cmu_small_region":
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
    """Builds the data set under config.data.data_dir if missing: the embedded one from its wheel file,
    a user's data set from `config.data.manual_dir` (the downloaded files); otherwise a clear error."""
    name, config_name, data_dir = config.data.name, _builder_config_name(config), config.data.data_dir
    if _is_built(data_dir, name, config_name):
        return
    manual_dir = config.data.get("manual_dir") or ""
    if name != "cmu_small_region" and manual_dir:
        from data_pipelines import build  # pylint: disable=import-outside-toplevel

        build.build(name, data_dir, manual_dir, config_name)
        return
    if name != "cmu_small_region":
        raise DataError(f"Data set {name}/{config_name} is not built under config.data.data_dir={str(data_dir)!r} "
                        f"and config.data.manual_dir is empty. {_build_hint(name, data_dir, config_name)}")
    from data_pipelines.builders import cmu_small_region  # pylint: disable=import-outside-toplevel

    cmu_small_region.build_dataset(data_dir, config=config_name)


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
                  process_count: int = 1) -> grain.IterDataset:
    """The train stream of this process over any random-access `source` of decoded examples (module docstring).

    Records are decoded (the source's `__getitem__`) by grain's read threads, or by `worker_count` worker
    processes, ahead of the consumer: decoding stays off the training loop's critical path.
    """
    n_records = len(source) - len(source) % process_count  # every process gets the same number per epoch
    if n_records == 0:
        raise ValueError(f"The train split has {len(source)} records, fewer than {process_count} processes.")
    dataset = grain.MapDataset.source(source)[:n_records].seed(seed).shuffle().repeat()
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


def _train_sites_subset(source: Any, sites: Sequence[str], names: Sequence[str]) -> _Subset:
    """The train records whose `site` is one of `sites` (config.data.train_sites), found by one pass over it."""
    unknown = sorted(set(sites) - set(names))
    if unknown:
        raise DataError(f"config.data.train_sites names {unknown}, not sites of the train split; its sites: "
                        f"{list(names)}")
    keep = {names.index(site) for site in sites}
    indices = [start + offset
               for start in range(0, len(source), _LOAD_CHUNK)
               for offset, example in enumerate(source.__getitems__(range(start, min(start + _LOAD_CHUNK, len(source)))))
               if int(example["site"]) in keep]
    if not indices:
        raise DataError(f"config.data.train_sites={tuple(sites)}: the train split holds no record of those sites")
    return _Subset(source, indices)


def make_train_iterator(
    config: ml_collections.ConfigDict, data_dir: epath.PathLike, *, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """Endless, checkpointable iterator of this process's train batches (dicts of numpy, `image` uint8 [B, T, T, 3]).

    Reads config.seed, config.batch_size (global), config.data.{name, tile_size, worker_count, train_sites
    (() = every site; else only the train records of those sites, e.g. one hospital), builder_config ("" or absent
    = f"tile{tile_size}")}. Save/restore its position with `get_state()`/`set_state()` or
    `grain.checkpoint.CheckpointSave/CheckpointRestore`; keep `worker_count` fixed across a resume.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
    local_batch = _local_batch_size(config.batch_size, process_count)
    source = data_source(config, data_dir, "train")
    if config.data.get("train_sites", ()):
        source = _train_sites_subset(source, tuple(config.data.train_sites), site_names(config, data_dir, "train"))
    if len(source) < process_count:
        raise ValueError(
            f"The train split under {data_dir} has {len(source)} records, fewer than {process_count} processes."
        )
    return iter(train_dataset(source, seed=config.seed, local_batch=local_batch,
                              worker_count=config.data.get("worker_count", 0), process_index=process_index,
                              process_count=process_count))


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
