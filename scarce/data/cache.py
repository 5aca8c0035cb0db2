"""The resized dataset of a run, decoded once per process (a study's cells share it)."""

from __future__ import annotations

import functools
import json

from ..errors import ScarceError
from .dataset import ImageDataset, load_dataset, resize, resolve_path


@functools.lru_cache(maxsize=1)
def load_resized(data: str, data_dir: str | None, options_json: str, size: int) -> ImageDataset:
    """The dataset at ``size``, kept for the next run in this process (a study's cells share it)."""
    options = json.loads(options_json)
    if not _is_npz(data, data_dir):
        options.setdefault("size", size)  # decode straight to the training size
    return resize(load_dataset(data, data_dir, **options), size)


def _is_npz(data: str, data_dir: str | None) -> bool:
    try:
        return resolve_path(data, data_dir).suffix.lower() == ".npz"
    except ScarceError:
        return True  # a bare MedMNIST name (an .npz), or missing: load_dataset reports it
