"""scarce: train trustworthy image classifiers from scarce labelled data.

The package reads as a table of contents (docs/architecture.md): ``data`` (images in),
``models`` (backbones, upstream models, radiomics features), ``training`` (recipes, schedules,
the loop), ``evaluation`` (metrics, decisions, inference with test-time augmentation), ``runs``
(one run end to end), ``use`` (predict, evaluate, export, explain), ``study`` (recipes × N ×
seeds), and at the top ``config``, ``cli``, ``errors`` and ``artifacts`` (files out).
"""

from .config import TrainConfig
from .errors import ScarceError
from .runs.common import RunResult
from .runs.run import train

__all__ = ["TrainConfig", "ScarceError", "RunResult", "train"]
__version__ = "0.1.0"
