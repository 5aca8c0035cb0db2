"""scarce: train trustworthy image classifiers from scarce labelled data.

The package reads as a table of contents:
``data`` (images in), ``models`` (backbone and layer groups), ``recipes`` and ``train``
(how a model is trained), ``evaluate`` (metrics and test-time augmentation), ``run``
(one run end to end), ``artifacts`` (files out) and ``cli`` (the command line).
"""

from .config import TrainConfig
from .errors import ScarceError
from .run import RunResult, train

__all__ = ["TrainConfig", "ScarceError", "RunResult", "train"]
__version__ = "0.1.0"
