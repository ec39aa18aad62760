"""Embed tiles with a trained encoder: a folder of tiles, a CSV of tile paths or a whole slide → embedding shards.

The encoder is a training workdir (the EMA weights when the run kept them, as evaluation and export take),
an export directory or `timm:/path/model.safetensors`. A slide (.svs/.tif/.tiff/.ndpi with tifffile; the other
OpenSlide formats when OpenSlide is installed) is tiled at `level` or at `mpp` microns per pixel, keeping tiles
with at least `min_tissue` tissue on an Otsu mask of its smallest level. Writes WORKDIR/shards/ (Parquet when
pyarrow is installed, else NPZ: embedding, path, level, y, x in level-0 pixels, the model's run/step/weights)
and WORKDIR/embed_summary.json; the same command again resumes, skipping finished shards. On a shared 2-core CPU
the default model (ViT-Mi/8, 56 px) embedded ~80 tiles/s end to end, ViT-S/16 at 224 px ~1 (see BENCHMARKS.md).

    python -m lmc_jax.main --config configs/embed.py --config.checkpoint=runs/default \\
        --config.input=slide.svs --config.mpp=2.0 --workdir runs/default_embed
"""

import importlib.util
import os

import ml_collections

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")


def _default_config() -> ml_collections.ConfigDict:
    """configs/default.py's config (for the multi-process block, written once there)."""
    spec = importlib.util.spec_from_file_location("lmc_default_config", _DEFAULT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "embed"
    # The encoder
    config.checkpoint = ""  # REQUIRED: training workdir, export directory, or timm:/path/model.safetensors
    config.step = -1  # checkpointed step of a workdir; -1 = the newest
    config.use_ema = True  # the EMA of the weights when the run kept one
    config.variant = ""  # timm weights without a config.json beside them: their ViT, e.g. "S/16"

    # The tiles
    config.input = ""  # REQUIRED: folder of tiles (searched recursively), a .csv of tile paths, or a slide file
    config.csv_column = "path"  # CSV column of the tile paths (relative paths are relative to the CSV's folder)
    config.level = 0  # slide pyramid level to tile (used when mpp is 0)
    config.mpp = 0.0  # tiles at this many microns per pixel (read at the closest finer level, resized); 0 = level
    config.tile_size = 0  # slide tile edge in pixels at the tiles' resolution; 0 = the model's crop size
    config.stride = 0  # slide grid step in pixels at the tiles' resolution; 0 = tile_size (no overlap)
    config.min_tissue = 0.25  # tissue fraction a tile needs (slide: Otsu mask; tile files: per tile); 0 keeps all
    config.slide_backend = "auto"  # auto (OpenSlide for its formats when installed, else tifffile) | tifffile | openslide
    config.resize = False  # tiles larger than the model's crop: False = its central crop (as evaluation), True = resize

    # Stain normalisation in front of the encoder (lmc_jax.stain.normalizers)
    config.normalizer = ""  # "" (none) | macenko | reinhard | vahadane
    config.normalizer_reference = ""  # the reference tile/image (PNG/JPEG/TIFF) the normaliser is fitted to

    # Output and compute
    config.batch_size = 64  # tiles per jitted call per process, rounded up to a multiple of its devices
    config.shard_size = 4096  # tiles per output shard (the unit of resume)
    config.format = "auto"  # auto (parquet when pyarrow is importable, else npz) | parquet | npz
    config.progress_every_s = 5.0  # seconds between progress lines (tiles/s, ETA)

    # Multi-process runs: each process embeds every process_count-th shard on its own devices
    config.distributed = _default_config().distributed
    return config
