"""Upstream models as transfer sources: the backbone file and manifest `scarce pretrain` writes, checked and loaded."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from .. import artifacts
from ..data.dataset import file_fingerprint
from ..errors import ScarceError
from .backbones import PRETRAINED_SOURCES, layer_groups

BACKBONE_FILE = "backbone.safetensors"


MANIFEST_FILE = "manifest.json"


FORMAT = "scarce-backbone-v1"


def is_source_path(pretrained: str) -> bool:
    """True when ``pretrained`` names an upstream model rather than imagenet or scratch."""
    return pretrained not in PRETRAINED_SOURCES


def absolute_source(pretrained: str | None, base: Path | None = None) -> str | None:
    """``pretrained`` with a relative path made absolute against ``base`` (default: the current folder)."""
    if pretrained is None or not is_source_path(pretrained):
        return pretrained
    path = Path(pretrained).expanduser()
    return str(path if path.is_absolute() else (base or Path.cwd()) / path)


def backbone_file(pretrained: str) -> Path:
    """The safetensors file of an upstream source: ``DIR/backbone.safetensors`` or the file itself."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / BACKBONE_FILE).is_file():
            raise ScarceError(f"Pretrained source {path} holds no {BACKBONE_FILE}; give a folder written by "
                              f"`scarce pretrain` (it may not have finished) or its .safetensors file.")
        return path / BACKBONE_FILE
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ScarceError(f"Pretrained source {path} is not a .safetensors file; scarce loads weights "
                              f"only from safetensors files.")
        return path
    raise ScarceError(f"Pretrained source '{pretrained}' is neither imagenet, scratch, nor an existing folder "
                      f"or .safetensors file from `scarce pretrain`.")


def read_source(pretrained: str, backbone: str, size: int | None) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """The backbone file, its tensors and metadata, checked against the run's backbone and image size."""
    path = backbone_file(pretrained)
    read_manifest(path)  # a damaged manifest stops the run now, not after training
    state, info = artifacts.load_weights(path)
    if "backbone" not in info or "size" not in info:
        raise ScarceError(f"Pretrained source {path} lacks scarce's metadata (backbone, size); give a "
                          f"{BACKBONE_FILE} written by `scarce pretrain`.")
    if info["backbone"] != backbone:
        raise ScarceError(f"Pretrained source {path} holds the backbone {info['backbone']} but this run builds "
                          f"{backbone}; pass --backbone {info['backbone']} or pretrain again with "
                          f"--backbone {backbone}.")
    if size is not None and info["size"] != size:
        raise ScarceError(f"Pretrained source {path} was trained on {info['size']} px images but this run uses "
                          f"{size} px; pass --size {info['size']} or pretrain again with --size {size}.")
    return path, state, info


def check_source(pretrained: str, backbone: str, size: int | None) -> None:
    """Fail now, in one sentence, if an upstream source cannot serve a run (studies check before any cell)."""
    if is_source_path(pretrained):
        read_source(pretrained, backbone, size)


def load_backbone(model: nn.Module, pretrained: str, backbone: str, size: int | None) -> nn.Module:
    """Copy an upstream backbone into ``model`` (built for the target task); its head stays new.

    A full ``model.safetensors`` of a scarce run is accepted too: its classifier is dropped.
    Every body tensor must be present with the right shape, else the source belongs to another
    architecture and the run stops.
    """
    path, state, _ = read_source(pretrained, backbone, size)
    head = set(layer_groups(model).head)
    body = {name: tensor for name, tensor in state.items() if name not in head}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError:
        missing, unexpected = ["(tensor shapes differ)"], []
    if unexpected or set(missing) != head:
        raise ScarceError(f"Pretrained source {path} does not fit {backbone}: its tensors belong to another "
                          f"architecture; pretrain again with --backbone {backbone}.")
    return model


def source_record(pretrained: str) -> dict | None:
    """What run.json records of an upstream source: its file, sha256 and manifest (None for imagenet/scratch)."""
    if not is_source_path(pretrained):
        return None
    path = backbone_file(pretrained)
    return {"given": pretrained, "file": str(path.resolve()), "sha256": file_fingerprint(path),
            "manifest": read_manifest(path)}


def read_manifest(backbone: Path) -> dict | None:
    """The manifest beside an upstream backbone file (None if there is none), or one sentence if damaged."""
    path = Path(backbone).parent / MANIFEST_FILE
    return artifacts.read_json(path) if path.is_file() else None


def source_identity(pretrained: str) -> str:
    """What decides a run's numbers about its source: the keyword, or the backbone file's sha256.

    Used in a study's configuration hash, so retraining an upstream model in place changes the
    cells that use it, while moving its folder does not.
    """
    if not is_source_path(pretrained):
        return pretrained
    path = backbone_file(pretrained).resolve()
    stat = path.stat()
    return f"sha256:{_sha256(str(path), stat.st_size, stat.st_mtime_ns)}"


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, computed once per version of the file (a study hashes every cell's config)."""
    return file_fingerprint(Path(path))
