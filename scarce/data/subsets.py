"""Training subsets: class-balanced, nested across N, drawn with the run's seed."""

from __future__ import annotations

import numpy as np

from ..errors import ScarceError
from ..randomness import numpy_generator
from .dataset import ImageDataset


def balanced_subset(labels: np.ndarray, n: int, seed: int, classes: list[str] | None = None,
                    replace: bool = False) -> np.ndarray:
    """Indices of ``n`` training images, as equal per class as possible, drawn with ``seed``.

    Each class is shuffled once by the seed and its first images are taken, so for one seed the
    subset of a smaller N lies inside the subset of a larger N. Earlier classes get the remainder
    when ``n`` does not divide evenly. Multi-label sets are drawn uniformly (no balancing), also
    nested. With ``replace=True`` a class (or a multi-label set) short of images gives all it has
    plus repeats drawn with replacement, still nested; :func:`count_duplicates` tells how many.
    """
    labels = np.asarray(labels)
    if n <= 0:
        raise ScarceError(f"n must be a positive number of training images, not {n}.")
    rng = numpy_generator(seed, "subset")
    if labels.ndim > 1:
        if n > len(labels) and not replace:
            raise ScarceError(f"n={n} asks for more training images than the {len(labels)} available; "
                              f"choose a smaller n or sample with replacement (--replace; replace = true in a config).")
        return np.sort(_take(rng.permutation(len(labels)), n, seed, 0))
    n_classes = len(classes) if classes else int(labels.max()) + 1
    if n < n_classes:
        raise ScarceError(f"n={n} is smaller than the number of classes ({n_classes}); "
                          f"give at least one image per class.")
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    wanted = [n // n_classes + (1 if c < n % n_classes else 0) for c in range(n_classes)]
    for c, (members, count) in enumerate(zip(order, wanted)):
        name = classes[c] if classes else f"class {c}"
        if len(members) == 0:
            raise ScarceError(f"Class '{name}' has no training images, so no subset can hold it; "
                              f"add images of it or drop the class.")
        if count > len(members) and not replace:
            raise ScarceError(f"n={n} needs {count} training images of class '{name}' "
                              f"but only {len(members)} exist; choose a smaller n or sample with replacement (--replace; replace = true in a config).")
    return np.sort(np.concatenate([_take(members, count, seed, c + 1)
                                   for c, (members, count) in enumerate(zip(order, wanted))]))


def _take(members: np.ndarray, count: int, seed: int, stream: int) -> np.ndarray:
    """The first ``count`` of ``members``, topped up with seeded repeats when there are too few.

    Repeats come from their own generator per (seed, stream), so their order does not depend on
    ``count`` and subsets stay nested as N grows.
    """
    if count <= len(members):
        return members[:count]
    extra = numpy_generator(seed, "subset", 1, stream).integers(0, len(members), size=count - len(members))
    return np.concatenate([members, members[extra]])


def count_duplicates(indices: np.ndarray) -> int:
    """How many drawn indices repeat an earlier one (0 without replacement)."""
    indices = np.asarray(indices)
    return int(len(indices) - len(np.unique(indices)))


def training_subset(dataset: ImageDataset, n: int | None, seed: int, replace: bool = False) -> np.ndarray:
    labels = dataset.splits["train"].labels
    if n is None:
        return np.arange(len(labels))
    return balanced_subset(labels, n, seed, dataset.classes, replace=replace)
