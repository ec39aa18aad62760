"""What one loss term of a training objective is: the renderings it adds, the head it owns, its loss."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import ml_collections
from flax import nnx

from lmc_jax.models.vit import HeadFactory  # (encoder width, compute dtype, rngs) → a module trained with it


Batch = dict[str, jax.Array]  # the global train batch: image uint8 [B, T, T, 3], label and site int [B] (-1 = none)


class Features(NamedTuple):
    """Encoder features of one global batch from one encoder pass: [K + E, B, W], the K training views first,
    then each term's renderings. Terms index this one array (a slice of a slice compiles to other roundings)."""

    embedded: jax.Array  # [K + E, B, W]
    num_views: int  # K (config.lmc.num_views)
    offsets: dict[str, int]  # term name → index of its first rendering in `embedded`

    @property
    def views(self) -> jax.Array:
        """[K, B, W]: the K training views."""
        return self.embedded[: self.num_views]

    def view(self, index: int) -> jax.Array:
        """[B, W]: training view `index`."""
        return self.embedded[index]

    def rendering(self, term: str, index: int = 0) -> jax.Array:
        """[B, W]: rendering `index` of the renderings `term` asked for."""
        return self.embedded[self.offsets[term] + index]


class Term(Protocol):
    """A loss term; the objective of a run is the sum of the terms named by `config.objectives`."""

    def renderings(self, key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> jax.Array | None:
        """Extra float32 images [E, B, C, C, 3] this term needs embedded besides the K views, or None."""

    def head(self, config: ml_collections.ConfigDict) -> tuple[str, HeadFactory] | None:
        """(attribute name, factory) of the module this term trains beside encoder and projector, or None."""

    def loss(self, model: nnx.Module, features: Features, batch: Batch, progress: jax.Array,
             config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(weighted loss, logged metrics); `batch` holds the tiles' labels and sites; `progress` = step /
        num_steps in [0, 1] (traced)."""
