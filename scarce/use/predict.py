"""Model used: open a trained model folder, read images to predict on, write predictions.

A model folder is the ``--out`` of ``scarce train``: ``model.safetensors`` (weights, with backbone,
task, classes and image size), ``run.json`` (the settings, among them the test-time augmentation
and seed) and ``thresholds.json`` (decision thresholds chosen on the validation split). Images
reach the model exactly as in training: through the same data layer and resizing to the stored
size, then the same test-time augmentation with the same seed.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import artifacts
from ..data.augment import Augmentation
from ..data.splits import SPLITS
from ..errors import ScarceError
from ..evaluation.decisions import THRESHOLD_NAMES, decide, thresholded_outputs
from ..evaluation.inference import predict
from ..training.recipes import recipe_tta_views

SPLIT_CHOICES = (*SPLITS, "all")


REQUIRED_FILES = ("model.safetensors", "run.json")


# What `scarce train` writes into a model folder: no other command may write over these.
MODEL_FILES = (*REQUIRED_FILES, "metrics.json", "thresholds.json", "history.csv", "test_probabilities.npy",
               "MODEL_CARD.md", "config_hash.txt")


def refuse_model_file(out: Path, folder: Path) -> None:
    """One sentence instead of writing ``out`` over one of the model folder's own files."""
    out = Path(out)
    if out.name in MODEL_FILES and out.resolve().parent == Path(folder).resolve():
        raise ScarceError(f"--out {out} would replace the model's own {out.name}; choose another file name.")


@dataclass
class TrainedModel:
    """A trained model with what it needs to be used: its settings, classes and thresholds."""

    folder: Path
    model: nn.Module
    info: dict  # the checkpoint's metadata: backbone, task, classes, size, ...
    run: dict  # run.json
    thresholds: dict | None  # thresholds.json; None for runs trained before thresholds were stored

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def size(self) -> int:
        return int(self.info["size"])

    @property
    def tta(self) -> int:
        return int(self.run.get("config", {}).get("tta", 0))

    @property
    def tta_views(self) -> Augmentation:
        """The recipe's test-time views (its training geometry), as ``scarce train`` evaluated."""
        return recipe_tta_views(self.run.get("recipe", {}))

    @property
    def seed(self) -> int:
        return int(self.run.get("config", {}).get("seed", 0))

    def threshold(self, name: str | None) -> tuple[str, list[float] | None]:
        """The threshold's name and its value per thresholded output; multi-class models use argmax."""
        if self.task == "multiclass":
            if name is not None:
                raise ScarceError(f"A multi-class model decides by its most probable class; drop --threshold {name}.")
            return "argmax", None
        if name is None:  # youden; runs trained before thresholds were stored can only use 0.5
            name = THRESHOLD_NAMES[0] if self.thresholds is not None else "0.5"
        if name not in THRESHOLD_NAMES:
            raise ScarceError(f"Unknown threshold '{name}'; use one of {', '.join(THRESHOLD_NAMES)}.")
        if self.thresholds is None:
            if name == "0.5":
                return name, [0.5] * len(thresholded_outputs(self.task, self.classes))
            raise ScarceError(f"{self.folder} has no thresholds.json (trained before scarce stored thresholds), "
                              f"so only --threshold 0.5 applies; train the model again for {name}.")
        try:
            return name, list(self.thresholds["thresholds"][name]["values"])
        except (KeyError, TypeError):
            raise ScarceError(f"{self.folder / 'thresholds.json'} holds no threshold '{name}'; restore it from "
                              f"the training run, or choose another --threshold.") from None


def load_model_folder(folder: str | Path) -> TrainedModel:
    """The model in a ``scarce train`` output folder, in evaluation mode."""
    from ..models.backbones import load_trained

    folder = Path(folder)
    if not folder.is_dir():
        raise ScarceError(f"Model folder {folder} does not exist; give the --out folder of a finished scarce train.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ScarceError(f"{folder} is not a scarce model folder: it lacks {' and '.join(missing)}; "
                          f"give the --out folder of a finished scarce train.")
    run = artifacts.read_json(folder / "run.json")
    broken = [key for key in ("config", "recipe", "data") if not isinstance(run.get(key, {}), dict)]
    if broken:
        raise ScarceError(f"{folder / 'run.json'} has no table '{broken[0]}' as scarce train writes it; "
                          f"restore it from the training run.")
    thresholds = artifacts.read_json(folder / "thresholds.json") if (folder / "thresholds.json").is_file() else None
    _, info = artifacts.load_weights(folder / "model.safetensors")
    if "backbone" not in info and info.get("model"):
        raise ScarceError(f"{folder} holds a {info['model']} model; predict, evaluate and export take CNN models "
                          f"(a scarce train run with a timm backbone).")
    model, info = load_trained(folder / "model.safetensors")
    if not {"task", "classes", "size"} <= set(info):
        raise ScarceError(f"{folder}/model.safetensors lacks task, classes or size in its metadata; "
                          f"give a model.safetensors written by scarce train.")
    return TrainedModel(folder, model, info, run, thresholds)


@dataclass
class Images:
    """Images ready for a model (uint8, N x 3 x size x size), one identifier each, labels when known."""

    images: torch.Tensor
    ids: list[str]
    labels: np.ndarray | None
    classes: list[str] | None  # the source's class names, when it has labels
    task: str | None
    source: str
    split: str  # which split(s) were read, or "unlabelled"
    fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


def load_images(data: str | Path, size: int, split: str | None = None, data_dir: str | None = None,
                options: dict | None = None) -> Images:
    """Images of any source the data layer reads, resized as in training; also unlabelled images.

    A single image file or a folder of images without subfolders is read unlabelled. Any other
    source goes through :func:`scarce.run.load_resized`, as in training. ``split`` chooses a split
    or ``all``; the default is ``test`` for sources with their own splits (an ``.npz``, a table with
    a split column, split folders) and ``all`` for sources that scarce would split itself.
    """
    from ..data import sources
    from ..data.cache import load_resized
    from ..data.dataset import resolve_path

    options = dict(options or {})
    if split is not None and split not in SPLIT_CHOICES:
        raise ScarceError(f"Unknown split '{split}'; use one of {', '.join(SPLIT_CHOICES)}.")
    try:
        path = resolve_path(data, data_dir)
    except ScarceError:
        path = None  # a bare MedMNIST name, or missing: the data layer reports it
    unlabelled = _unlabelled_files(path) if path is not None else None
    if unlabelled is not None:
        extra = sorted(set(options) - {"cache"})
        if extra:
            raise ScarceError(f"Option {extra[0]!r} does not apply to {path}, a folder of unlabelled images.")
        if split not in (None, "all"):
            raise ScarceError(f"{path} holds unlabelled images without splits; drop --split {split}.")
        decoded = torch.from_numpy(sources.decode_files(unlabelled, size, options.get("cache", True)))
        images = decoded.expand(-1, 3, -1, -1) if decoded.shape[1] == 1 else decoded  # gray as 3 channels
        root = path if path.is_dir() else path.parent
        ids = [str(Path(f).relative_to(root)) for f in unlabelled]
        return Images(images.contiguous(), ids, None, None, None, str(path), "unlabelled")
    if path is not None and path.is_dir():
        subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subfolders) == 1:  # the data layer needs two classes; one class folder is a flat folder
            raise ScarceError(f"Folder {path} has a single class folder; give {subfolders[0]} to read its "
                              f"images unlabelled, or add the other classes' folders.")
    dataset = load_resized(str(data), data_dir, json.dumps(options, sort_keys=True), size)
    own_splits = dataset.extra.get("split", {"origin": "source"}).get("origin") == "source"
    split = split or ("test" if own_splits else "all")
    names = [name for name in SPLITS if name in dataset.splits] if split == "all" else [split]
    npz = str(dataset.source).lower().endswith(".npz")
    parts, ids = [], []
    for name in names:
        part = dataset.splits[name]
        parts.append(part)
        if npz or part.files is None:
            ids += [f"{name}/{i}" for i in range(len(part))]
        else:
            ids += [str(f) for f in part.files]
    labels = np.concatenate([p.labels for p in parts])
    images = torch.cat([p.images for p in parts]) if len(parts) > 1 else parts[0].images
    return Images(images, ids, labels, list(dataset.classes), dataset.task, dataset.source or str(data), split,
                  dataset.fingerprint)


def _unlabelled_files(path: Path) -> list[Path] | None:
    """The image files of a single image or a flat folder of images; None for labelled sources."""
    from ..data import sources

    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in sources.IMAGE_SUFFIXES or (suffix == "" and sources.is_dicom(path)):
            return [path]
        return None
    if not path.is_dir() or any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return None
    files, skipped = sources._image_files(path)
    sources.warn_skipped(path, skipped)
    if not files:
        raise ScarceError(f"Folder {path} has no images and no class subfolders; give image files "
                          f"({', '.join(sources.IMAGE_SUFFIXES)}) or a folder per class.")
    return files


def model_labels(trained: TrainedModel, images: Images) -> np.ndarray | None:
    """The source's labels in the model's class order; refuses labels of another task or class count."""
    if images.labels is None:
        return None
    data_classes, model_classes = images.classes, trained.classes
    if len(data_classes) != len(model_classes):
        raise ScarceError(f"{images.source} has {len(data_classes)} classes ({', '.join(data_classes)}) but the "
                          f"model was trained on {len(model_classes)} ({', '.join(model_classes)}); give data "
                          f"labelled with the model's classes.")
    if images.task != trained.task:
        raise ScarceError(f"{images.source} is a {images.task} task but the model is {trained.task}; give data "
                          f"labelled the way the model was trained.")
    lowered = [name.lower() for name in model_classes]
    if sorted(name.lower() for name in data_classes) == sorted(lowered):
        order = np.array([lowered.index(name.lower()) for name in data_classes])
    else:
        warnings.warn(f"{images.source}: class names {data_classes} differ from the model's {model_classes}; "
                      f"matching them by position.")
        order = np.arange(len(data_classes))
    if trained.task == "multilabel":
        labels = np.zeros_like(images.labels)
        labels[:, order] = images.labels
        return labels
    return order[images.labels]


def predict_images(trained: TrainedModel, images: Images, tta: int | None = None) -> np.ndarray:
    """Probabilities with the run's test-time augmentation and seed (as ``scarce train`` evaluated)."""
    tta = trained.tta if tta is None else tta
    if tta < 0:
        raise ScarceError(f"tta must be 0 or a positive whole number, not {tta}.")
    return predict(trained.model, images.images, trained.task, tta=tta, seed=trained.seed,
                   augmentation=trained.tta_views)


def probability_columns(trained: TrainedModel, probs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """CSV column names (``prob_<class>``) and values (N x K); binary gives both classes."""
    probs = np.asarray(probs)
    if trained.task == "binary":
        probs = np.stack([1 - probs, probs], axis=1)
    return [f"prob_{name}" for name in trained.classes], probs


def decision_names(trained: TrainedModel, probs: np.ndarray, values: list[float] | None) -> list[str]:
    """The decision per image as class names; multi-label decisions join the positive labels with '|'."""
    decided = decide(trained.task, probs, values)
    classes = trained.classes
    if trained.task == "multilabel":
        return ["|".join(name for name, on in zip(classes, row) if on) for row in decided]
    return [classes[k] for k in decided]


def label_names(trained: TrainedModel, labels: np.ndarray) -> list[str]:
    if trained.task == "multilabel":
        return ["|".join(name for name, on in zip(trained.classes, row) if on) for row in labels]
    return [trained.classes[k] for k in labels]


def predictions_csv(trained: TrainedModel, images: Images, probs: np.ndarray, threshold: str,
                    values: list[float] | None, labels: np.ndarray | None = None,
                    heatmaps: list[str] | None = None) -> str:
    """One row per image: id, [label], prob_<class>..., decision, threshold, [heatmap]."""
    names, table = probability_columns(trained, probs)
    header = ["id"] + (["label"] if labels is not None else []) + names + ["decision", "threshold"]
    header += ["heatmap"] if heatmaps is not None else []
    decisions = decision_names(trained, probs, values)
    truth = label_names(trained, labels) if labels is not None else None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i, identifier in enumerate(images.ids):
        row = [identifier] + ([truth[i]] if truth is not None else [])
        row += [f"{p:.6g}" for p in table[i]] + [decisions[i], threshold]
        row += [heatmaps[i]] if heatmaps is not None else []
        writer.writerow(row)
    return buffer.getvalue()


def heatmap_name(index: int, identifier: str) -> str:
    """A safe, unique PNG file name for an image's heatmap."""
    from ..data.sources import IMAGE_SUFFIXES

    suffix = Path(identifier).suffix
    stem = identifier[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else identifier
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("._")[:80]
    return f"{index:05d}_{safe or 'image'}.png"


@dataclass
class PredictResult:
    csv: Path
    rows: int
    threshold: str
    values: list[float] | None
    tta: int
    heatmaps: Path | None


def predict_source(model: str | Path, data: str | Path, out: str | Path, split: str | None = None,
                   data_dir: str | None = None, options: dict | None = None, tta: int | None = None,
                   threshold: str | None = None, explain: bool = False) -> PredictResult:
    """``scarce predict``: probabilities and decisions for every image of ``data``, as a CSV at ``out``.

    With ``explain``, a Grad-CAM PNG per image goes to ``<out stem>_gradcam/`` beside the CSV.
    """
    trained = load_model_folder(model)
    name, values = trained.threshold(threshold)  # check the name before any slow work
    if explain:
        from .explain import require_grad_cam

        require_grad_cam()
    out = Path(out)
    if out.is_dir():
        raise ScarceError(f"--out {out} is a folder; give a CSV file name such as {out}/predictions.csv.")
    refuse_model_file(out, trained.folder)
    images = load_images(data, trained.size, split, data_dir, options)
    labels = model_labels(trained, images)
    probs = predict_images(trained, images, tta)
    out.parent.mkdir(parents=True, exist_ok=True)
    heatmaps, heatmap_folder = None, None
    if explain:
        from .explain import explained_classes, write_heatmaps

        heatmap_folder = out.parent / f"{out.stem}_gradcam"
        files = [heatmap_folder / heatmap_name(i, identifier) for i, identifier in enumerate(images.ids)]
        targets = explained_classes(trained.task, probs, values)
        write_heatmaps(trained.model, images.images, trained.task, targets, files)
        heatmaps = [str(f.relative_to(out.parent)) for f in files]
    artifacts.write_text(out, predictions_csv(trained, images, probs, name, values, labels, heatmaps))
    return PredictResult(out, len(images), name, values, trained.tta if tta is None else tta, heatmap_folder)
