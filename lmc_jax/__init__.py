"""lmc-jax: stain- and scanner-invariant histopathology embeddings (Latent Manifold Compaction) in JAX.

`lmc_jax.load(source)` returns an encoder with `.embed(images)` (see `lmc_jax.api`); `lmc_jax.stain.get_normalizer`
fits a stain normaliser. Both are imported on first use, so `import lmc_jax` does not import JAX.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Encoder", "load", "stain"]
_API = ("Encoder", "load")  # names of lmc_jax.api served from the package


def __getattr__(name: str) -> Any:
    """`lmc_jax.load` / `lmc_jax.Encoder` from lmc_jax.api and `lmc_jax.stain`, imported when first used."""
    if name in _API:
        return getattr(importlib.import_module("lmc_jax.api"), name)
    if name == "stain":
        return importlib.import_module("lmc_jax.stain")
    raise AttributeError(f"module 'lmc_jax' has no attribute {name!r}")
