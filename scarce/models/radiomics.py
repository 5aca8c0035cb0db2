"""The radiomics baseline: 79 hand-made texture and intensity features, then a logistic regression.

The paper's traditional baseline (E1, E2, E9), against which a CNN must prove itself. Per image,
on the gray image at the run's size (8-bit values 0..255):

- GLCM texture, 72 features: scikit-image's grey-level co-occurrence matrix of the image
  quantised to ``GRAY_LEVELS`` = 64 levels (level = value · 64 // 256), symmetric and normalised
  to sum 1, at distances 1, 2, 4, 6 and angles 0, π/4, π/2; six properties of each: contrast,
  dissimilarity, homogeneity, energy, correlation, ASM (4 × 3 × 6 = 72);
- first order, 7 features on the unquantised values: mean, standard deviation (population),
  central moments 2, 3, 4 and 5, and the Shannon entropy (bits) of the 256-bin histogram.

Features are standardised (scikit-learn's StandardScaler) and fed to an L2-penalised logistic
regression whose strength C is chosen by stratified k-fold cross-validation on the training
subset (LogisticRegressionCV, log-loss; one-vs-rest per label for multi-label tasks). The fitted
model is saved as four tensors in safetensors (scaler mean and scale, coefficients, intercepts),
never pickled, and evaluated from that file like a CNN checkpoint.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch

from .. import artifacts
from ..data.dataset import ImageDataset
from ..data.sources import cache_dir
from ..errors import ScarceError
from ..randomness import integer_seed

GLCM_DISTANCES = (1, 2, 4, 6)


GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2)


GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


GRAY_LEVELS = 64  # the paper gives none; 64 keeps 64 px GLCMs populated and costs ~2 ms an image


FIRST_ORDER = ("mean", "std", "moment2", "moment3", "moment4", "moment5", "entropy")


FEATURE_NAMES = [f"glcm_{prop}_d{d}_a{round(np.degrees(a))}" for prop in GLCM_PROPERTIES
                 for d in GLCM_DISTANCES for a in GLCM_ANGLES] + list(FIRST_ORDER)


FEATURE_VERSION = "scarce-radiomics-v1"  # bump when a definition changes, so caches are not reused


C_GRID = 10  # LogisticRegressionCV's Cs: 10 values of C log-spaced from 1e-4 to 1e4


MAX_FOLDS = 5


def gray_images(images: torch.Tensor) -> np.ndarray:
    """uint8 N x H x W: the one channel of gray images, the ITU-R 601 luma of colour ones."""
    array = images.numpy()
    if array.shape[1] == 1 or (array == array[:, :1]).all():
        return array[:, 0]
    luma = 0.299 * array[:, 0] + 0.587 * array[:, 1] + 0.114 * array[:, 2]
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def image_features(image: np.ndarray) -> np.ndarray:
    """The 79 features of one uint8 gray image (H x W), in the order of ``FEATURE_NAMES``."""
    from skimage.feature import graycomatrix, graycoprops

    quantised = (image.astype(np.uint16) * GRAY_LEVELS // 256).astype(np.uint8)
    glcm = graycomatrix(quantised, GLCM_DISTANCES, GLCM_ANGLES, levels=GRAY_LEVELS, symmetric=True, normed=True)
    texture = [graycoprops(glcm, prop).ravel() for prop in GLCM_PROPERTIES]  # distance-major, then angle
    values = image.astype(np.float64).ravel()
    mean = values.mean()
    centred = values - mean
    moments = [np.mean(centred ** k) for k in (2, 3, 4, 5)]
    histogram = np.bincount(image.ravel(), minlength=256) / values.size
    present = histogram[histogram > 0]
    entropy = -np.sum(present * np.log2(present))
    return np.concatenate(texture + [[mean, np.sqrt(moments[0]), *moments, entropy]])


def features(images: torch.Tensor) -> np.ndarray:
    """float64 N x 79: the features of every image (uint8 N x C x H x W)."""
    gray = gray_images(images)
    return np.stack([image_features(image) for image in gray]) if len(gray) else np.empty((0, len(FEATURE_NAMES)))


def cached_features(images: torch.Tensor) -> np.ndarray:
    """``features(images)``, kept in ``$SCARCE_CACHE_DIR/radiomics`` keyed by the images' bytes.

    The key is the sha256 of the uint8 images exactly as the run sees them (after resizing and any
    held-out labels) plus the feature version, so a study computes each split once for all its
    cells and seeds, and a changed dataset, size or definition never reuses stale features.
    """
    digest = hashlib.sha256(FEATURE_VERSION.encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images.numpy()).tobytes())
    target = cache_dir() / "radiomics" / f"features-{digest.hexdigest()[:40]}.npy"
    if target.is_file():
        try:
            cached = np.load(target, allow_pickle=False)
            if cached.shape == (len(images), len(FEATURE_NAMES)):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed below
    computed = features(images)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_npy(target, computed)
    except (OSError, ScarceError) as error:  # an unwritable cache costs time, never the run
        warnings.warn(f"Could not write the radiomics feature cache {target} ({error}); set "
                      f"SCARCE_CACHE_DIR to a writable folder to skip recomputing next time.")
    return computed


def split_features(dataset: ImageDataset) -> dict[str, np.ndarray]:
    """Features of every split of ``dataset`` (cached)."""
    return {name: cached_features(split.images) for name, split in dataset.splits.items()}


def fit_logistic(x: np.ndarray, labels: np.ndarray, task: str, seed: int = 0):
    """StandardScaler + cross-validated L2 logistic regression (one-vs-rest for multi-label)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = cross_validation_folds(labels, task)
    options = {"Cs": C_GRID, "cv": StratifiedKFold(folds, shuffle=True, random_state=integer_seed(seed, "cv") % 2**32),
               "scoring": "neg_log_loss", "max_iter": 5000}
    if "use_legacy_attributes" in LogisticRegressionCV().get_params():  # scikit-learn >= 1.8
        options.update(l1_ratios=(0.0,), use_legacy_attributes=False)  # l1_ratio 0 = pure L2
    else:
        options["penalty"] = "l2"
    classifier = LogisticRegressionCV(**options)
    if task == "multilabel":
        classifier = OneVsRestClassifier(classifier)
    return make_pipeline(StandardScaler(), classifier).fit(x, labels)


def cross_validation_folds(labels: np.ndarray, task: str) -> int:
    """Up to 5 stratified folds, fewer when the rarest class (or label value) has fewer images."""
    labels = np.asarray(labels)
    if task == "multilabel":
        counts = [min(int(column.sum()), int(len(column) - column.sum())) for column in labels.T]
    else:
        counts = [int(c) for c in np.bincount(labels)]
    if min(counts) < 2:
        raise ScarceError(f"radiomics-lr needs at least 2 training images of every class (and, for multi-label "
                          f"tasks, of each label present and absent) to cross-validate; got {min(counts)}; "
                          f"choose a larger n.")
    return min(MAX_FOLDS, min(counts))


def model_tensors(pipeline, task: str) -> dict[str, torch.Tensor]:
    """The fitted pipeline as plain tensors: scaler mean and scale, coefficients (K x 79), intercepts."""
    scaler, classifier = pipeline[0], pipeline[-1]
    estimators = classifier.estimators_ if task == "multilabel" else [classifier]
    coef = np.concatenate([e.coef_ for e in estimators])
    intercept = np.concatenate([e.intercept_ for e in estimators])
    chosen = np.array([float(np.ravel(e.C_)[0]) for e in estimators])
    return {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64)) for name, value in
            {"scaler_mean": scaler.mean_, "scaler_scale": scaler.scale_, "coef": coef, "intercept": intercept,
             "C": chosen}.items()}


def decision(tensors: dict[str, torch.Tensor], x: np.ndarray) -> torch.Tensor:
    """Logits N x K of the saved model: standardise, then the linear map."""
    z = (torch.from_numpy(x) - tensors["scaler_mean"]) / tensors["scaler_scale"]
    return z @ tensors["coef"].T + tensors["intercept"]
