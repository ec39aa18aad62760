"""A copy of a ConfigDict with some dotted keys changed: how derived configs (a method's training config, a
workdir's old settings put back) are made without touching the original."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


def with_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A deep copy of `config` with each dotted key of `values` (e.g. "lmc.stain_views") set; a value may change
    the key's type (a config.json's int where the config holds a float)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in values.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        with node.ignore_type():
            node[key] = value
    return config
