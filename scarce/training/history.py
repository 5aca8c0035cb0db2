"""What a training run records per epoch, and the divergence error."""

from __future__ import annotations

from dataclasses import dataclass, field


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class History:
    """Per-epoch record of a training run."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    # The epochs in the kept model (a soup or an ensemble of them, best first; else just
    # best_epoch), and that model's validation loss and AUC.
    kept_epochs: list[int] = field(default_factory=list)
    kept_val: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Where the training time went: batch assembly + augmentation, forward/backward/step,
    # validation after each epoch (seconds).
    timings: dict = field(default_factory=lambda: {"augment": 0.0, "forward_backward": 0.0, "validate": 0.0})
