"""Stain colour maths, training stain views and evaluation sites; `get_normalizer` is the object API over the
normaliser registry (`lmc_jax.stain.normalizers`): uint8 images in, uint8 images out.

    normalizer = lmc_jax.stain.get_normalizer("macenko").fit(reference_tile)
    normalized = normalizer.transform(tiles)  # uint8 [N, H, W, 3] (or one [H, W, 3], or a list of PIL images)

Nothing heavy is imported until a normaliser is fitted, so `import lmc_jax.stain` stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_uint8_images(images: Any, what: str) -> np.ndarray:
    """uint8 [N, H, W, 3] from a uint8 array [N, H, W, 3] or [H, W, 3], or a sequence of PIL images / uint8
    arrays of one size; ValueError naming `what` and the shapes otherwise."""
    if isinstance(images, (list, tuple)):
        arrays = [np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
                  for image in images]
        shapes = sorted({array.shape for array in arrays})
        if len(shapes) != 1:
            raise ValueError(f"{what}: images of different sizes {shapes[:4]}; pass images of one size")
        images = np.stack(arrays)
    elif hasattr(images, "convert"):
        images = np.asarray(images.convert("RGB"))[None]
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 RGB images [N, H, W, 3] or [H, W, 3], got {images.dtype} "
                         f"{images.shape}")
    return images


class StainNormalizer:
    """One registered normaliser with its settings; `fit` a reference, then `transform` uint8 images to it."""

    def __init__(self, name: str, settings: Any = None):
        """`settings`: an instance of the normaliser's config dataclass (its defaults when None)."""
        from lmc_jax.stain import normalizers  # pylint: disable=import-outside-toplevel - keeps import light

        self.spec = normalizers.get(name)
        self.name = name
        self.settings = self.spec.config_class() if settings is None else settings
        self.params: Any = None
        self.last_flags: np.ndarray | None = None  # `robust` flags of the last transform (0 = normalised)

    def fit(self, reference: Any) -> StainNormalizer:
        """Fits the target stains to `reference` (one image, or several pooled); returns self for chaining.
        ValueError when the reference has no usable tissue."""
        images = as_uint8_images(reference, f"{self.name} reference")
        self.params = self.spec.module.fit(images[0] if len(images) == 1 else images, self.settings)
        return self

    def transform(self, images: Any) -> np.ndarray:
        """`images` normalised to the fitted reference, uint8 of the same shape as given ([H, W, 3] stays one
        image); tiles the method flags (no tissue, degenerate estimate) come back unchanged (see `last_flags`)."""
        if self.params is None:
            raise ValueError(f"{self.name}: call fit(reference) before transform(images)")
        single = (isinstance(images, np.ndarray) and images.ndim == 3) or hasattr(images, "convert")
        batch = as_uint8_images(images, f"{self.name} transform")
        output, flags = self.spec.module.transform(batch, self.params, self.settings)
        self.last_flags = np.asarray(flags)
        output = np.asarray(output)
        return output[0] if single else output


def get_normalizer(name: str, **settings: Any) -> StainNormalizer:
    """The normaliser `name` (macenko, reinhard, vahadane) with `settings` overriding its config's defaults."""
    from lmc_jax.stain import normalizers  # pylint: disable=import-outside-toplevel

    return StainNormalizer(name, normalizers.get(name).config_class(**settings))
