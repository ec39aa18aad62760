"""Imports timm on a CPU torch whose pinned torchvision ships CUDA-only C++ ops.

timm imports torchvision at import time; torchvision 0.28.0 from PyPI cannot load its compiled ops
on the CPU torch wheel, and its import then fails registering fake kernels for `torchvision::nms`.
A ViT never calls those ops, so declaring their schemas first lets timm import unchanged.
"""

from __future__ import annotations

import sys
from types import ModuleType

_TORCHVISION_OPS = ("nms", "qnms")
_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
INSTALL_HINT = (
    "install the export extra at the tested versions: pip install -c constraints/py311.txt -e '.[export]' "
    "(./run.sh test does this)"
)


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def import_timm() -> ModuleType:
    """`import timm`, declaring stub schemas for torchvision's NMS ops when its compiled ops cannot load."""
    try:
        import timm  # pylint: disable=import-outside-toplevel
        return timm
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    except ImportError as error:
        raise ImportError(f"timm is not importable ({error}); {INSTALL_HINT}") from error
    import torch  # pylint: disable=import-outside-toplevel

    _forget(("timm", "torchvision"))  # both stopped half-way through their imports
    for op in _TORCHVISION_OPS:
        if not torch._C._jit_get_schemas_for_operator(f"torchvision::{op}"):  # pylint: disable=protected-access
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
    import timm  # pylint: disable=import-outside-toplevel,redefined-outer-name

    return timm
