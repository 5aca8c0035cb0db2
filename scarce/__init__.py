"""scarce: train trustworthy image classifiers from scarce labelled data.

The package reads as a table of contents (docs/architecture.md): ``data`` (images in),
``models`` (backbones, upstream models, radiomics features), ``training`` (recipes, schedules,
the loop), ``evaluation`` (metrics, decisions, inference with test-time augmentation), ``runs``
(one run end to end), ``use`` (predict, evaluate, export, explain), ``study`` (recipes × N ×
seeds), and at the top ``config``, ``cli``, ``errors`` and ``artifacts`` (files out).
"""

from .errors import ScarceError

__all__ = ["TrainConfig", "ScarceError", "RunResult", "train"]
__version__ = "0.1.0"

# Imported on first use, so that `scarce --help` and other light commands never import torch.
_LAZY = {"TrainConfig": ".config", "RunResult": ".runs.common", "train": ".runs.run"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'scarce' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
