"""A copy of a ConfigDict with some dotted keys changed: how derived configs (a method's training config, a
workdir's old settings put back) are made without touching the original; and a config group read into its
dataclass with unknown keys refused."""

from __future__ import annotations

import dataclasses
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


def dataclass_from(cls: type, values: Mapping[str, Any], where: str, ignored: tuple[str, ...] = ()) -> Any:
    """`cls(**values)` for a config group `where` (e.g. "config.lmc.scale") whose keys are `cls`'s fields plus
    `ignored` (switches the caller reads itself); missing keys take the dataclass defaults, an unknown key raises
    a ValueError naming it and the known keys."""
    known = sorted(field.name for field in dataclasses.fields(cls))
    kept = {name: value for name, value in dict(values.items()).items() if name not in ignored}
    unknown = sorted(set(kept) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; the known keys are {list(ignored) + known}.")
    return cls(**kept)
