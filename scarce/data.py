"""Data in: load a labelled image set into memory, resize it once, draw training subsets.

Every source ends as an :class:`ImageDataset`: named splits of uint8 image tensors
(N x C x H x W) with their labels, kept decoded in memory so that training never
decodes again. Only the MedMNIST ``.npz`` layout is read here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ScarceError

SPLITS = ("train", "val", "test")
TASKS = ("binary", "multiclass", "multilabel")
DATA_DIR_VARIABLE = "SCARCE_DATA_DIR"


@dataclass
class Split:
    """Images and labels of one split.

    ``labels`` is int64 of shape (N,) for binary and multi-class tasks (a class index),
    and 0/1 of shape (N, K) for multi-label tasks.
    """

    images: torch.Tensor  # uint8, N x C x H x W, C = 1 (gray) or 3 (RGB)
    labels: np.ndarray
    patients: np.ndarray | None = None  # patient id per image, when known
    files: np.ndarray | None = None  # original file name per image, when known

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "Split":
        """The images at ``indices``, in that order."""
        pick = lambda a: None if a is None else a[indices]  # noqa: E731
        return Split(self.images[torch.as_tensor(indices, dtype=torch.long)], self.labels[indices],
                     pick(self.patients), pick(self.files))


@dataclass
class ImageDataset:
    """A labelled image set with train/val/test splits."""

    name: str
    task: str  # one of TASKS
    classes: list[str]
    splits: dict[str, Split]
    fingerprint: str  # sha256 of the source, so runs record exactly what they read
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """Logits the model needs: 1 for binary, one per class or label otherwise."""
        return 1 if self.task == "binary" else len(self.classes)

    def class_counts(self, split: str) -> list[int]:
        labels = self.splits[split].labels
        if self.task == "multilabel":
            return [int(c) for c in labels.sum(axis=0)]
        return [int(c) for c in np.bincount(labels, minlength=len(self.classes))]

    def summary(self) -> dict:
        """Counts per split and class, for metadata and printing."""
        return {
            "name": self.name,
            "task": self.task,
            "classes": list(self.classes),
            "fingerprint": self.fingerprint,
            "image_size": list(next(iter(self.splits.values())).images.shape[1:]),
            "counts": {name: self.class_counts(name) for name in self.splits},
        }


def data_dir(configured: str | os.PathLike | None = None) -> Path | None:
    """The user's data directory: the configured one, else ``$SCARCE_DATA_DIR``."""
    value = configured or os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else None


def resolve_path(path: str | os.PathLike, directory: str | os.PathLike | None = None) -> Path:
    """Find ``path`` as given, else inside the data directory; never guess anything else."""
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate
    base = data_dir(directory)
    if base is not None and not candidate.is_absolute() and (base / candidate).exists():
        return base / candidate
    where = f" or in the data directory {base}" if base is not None else (
        f" (set {DATA_DIR_VARIABLE} or data_dir to the folder that holds it)")
    raise ScarceError(f"Data file {path} was not found as given{where}.")


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_npz(path: str | os.PathLike, classes: list[str] | None = None,
             task: str | None = None) -> ImageDataset:
    """Read a MedMNIST-layout ``.npz``: ``{train,val,test}_{images,labels}`` (+ ``_meta``, ``_files``).

    Images are uint8 N x H x W (gray) or N x H x W x 3 (RGB). Labels of shape (N, 1) are a class
    index; labels of shape (N, K) with K > 1 are multi-label 0/1 columns.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ScarceError(f"{path} is not a readable .npz file ({error}).") from None
    with archive:
        missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")
                   if f"{s}_{kind}" not in archive.files]
        if missing:
            raise ScarceError(f"{path} lacks the arrays {', '.join(missing)}; a MedMNIST-layout "
                              f"file needs train/val/test _images and _labels.")
        raw = {s: {key[len(s) + 1:]: archive[key] for key in archive.files if key.startswith(s + "_")}
               for s in SPLITS}
    label_width = raw["train"]["labels"].reshape(len(raw["train"]["labels"]), -1).shape[1]
    task = task or ("multilabel" if label_width > 1 else None)
    splits = {}
    for name, arrays in raw.items():
        labels = arrays["labels"].reshape(len(arrays["labels"]), -1).astype(np.int64)
        if np.isnan(arrays["labels"].astype(float)).any():
            raise ScarceError(f"{path}: {name}_labels contains NaN; every image needs a label.")
        images = arrays["images"]
        if images.dtype != np.uint8:
            raise ScarceError(f"{path}: {name}_images has dtype {images.dtype}; expected uint8.")
        images = torch.from_numpy(images)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        splits[name] = Split(images.contiguous(), labels if label_width > 1 else labels[:, 0],
                             arrays.get("meta"), arrays.get("files"))
    if task is None:
        n_classes = int(max(s.labels.max() for s in splits.values())) + 1
        task = "binary" if n_classes <= 2 else "multiclass"
    n_classes = label_width if task == "multilabel" else int(max(s.labels.max() for s in splits.values())) + 1
    if task == "binary":
        n_classes = 2
    if classes is None:
        classes = known_classes(path.stem) or [f"class_{i}" for i in range(n_classes)]
    if len(classes) != n_classes:
        raise ScarceError(f"{path} has {n_classes} classes but {len(classes)} class names were given.")
    return ImageDataset(path.stem, task, list(classes), splits, file_fingerprint(path), str(path))


# Class names of the datasets whose files carry none (MedMNIST stores them separately).
_CLASS_NAMES = {
    "pneumonia_kaggle_64": ["normal", "pneumonia"],
    "pneumonia_kaggle_128": ["normal", "pneumonia"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "cxr_covid_64": ["normal", "covid"],
    "knee_oa_64": ["KL0", "KL1", "KL2", "KL3", "KL4"],
}


def known_classes(stem: str) -> list[str] | None:
    return _CLASS_NAMES.get(stem)


def load_dataset(path: str | os.PathLike, directory: str | os.PathLike | None = None) -> ImageDataset:
    """Load any supported source by path (relative paths are also looked up in the data directory)."""
    resolved = resolve_path(path, directory)
    if resolved.suffix == ".npz":
        return load_npz(resolved)
    raise ScarceError(f"{path}: unsupported data source; give a MedMNIST-layout .npz file.")


def resize(dataset: ImageDataset, size: int) -> ImageDataset:
    """Every split resized to ``size`` x ``size`` and made 3-channel, once, still uint8."""
    splits = {name: replace(split, images=_resize_images(split.images, size))
              for name, split in dataset.splits.items()}
    return replace(dataset, splits=splits)


def _resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if tuple(images.shape[2:]) == (size, size):
        return images.contiguous()
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


def balanced_subset(labels: np.ndarray, n: int, seed: int, classes: list[str] | None = None) -> np.ndarray:
    """Indices of ``n`` training images, as equal per class as possible, drawn with ``seed``.

    Each class is shuffled once by the seed and its first images are taken, so for one seed the
    subset of a smaller N lies inside the subset of a larger N. Earlier classes get the remainder
    when ``n`` does not divide evenly. Multi-label sets are drawn uniformly (no balancing).
    """
    labels = np.asarray(labels)
    if n <= 0:
        raise ScarceError(f"n must be a positive number of training images, not {n}.")
    rng = np.random.default_rng(seed)
    if labels.ndim > 1:
        if n > len(labels):
            raise ScarceError(f"n={n} asks for more training images than the {len(labels)} available.")
        return np.sort(rng.permutation(len(labels))[:n])
    n_classes = int(labels.max()) + 1
    if n < n_classes:
        raise ScarceError(f"n={n} is smaller than the number of classes ({n_classes}); "
                          f"give at least one image per class.")
    order = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    wanted = [n // n_classes + (1 if c < n % n_classes else 0) for c in range(n_classes)]
    for c, (members, count) in enumerate(zip(order, wanted)):
        if count > len(members):
            name = classes[c] if classes else f"class {c}"
            raise ScarceError(f"n={n} needs {count} training images of class '{name}' "
                              f"but only {len(members)} exist; choose a smaller n.")
    return np.sort(np.concatenate([members[:count] for members, count in zip(order, wanted)]))
