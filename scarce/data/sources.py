"""Readers: turn an image folder, a CSV/TSV table, DICOM files or a MedMNIST name into records.

A reader lists what a source holds (:class:`Records`: files, labels, classes, task, optional
patient ids and fixed splits) without decoding anything; :func:`decode_files` then decodes every
file once to uint8, resizes it to a common square size and keeps the result in a disk cache so
that the next run skips decoding. :mod:`scarce.data` assembles the records into an ``ImageDataset``.

Decisions (see docs/data.md):

* Images deeper than 8 bits are mapped to uint8 by min-max per image (a constant image becomes 0).
  DICOM first gets its modality LUT (rescale slope/intercept) and VOI LUT or window; a windowed
  image is mapped from the window's output range, not min-max, so the window is kept as set.
* Files without an image suffix inside a class folder are skipped with one warning; a file with an
  image suffix that cannot be decoded is an error that names it.
* Every image is resized at load time to ``size`` x ``size`` (default 224) so that folders of mixed
  sizes fit one array; gray images stay 1-channel unless the source also holds colour images.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ScarceError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


DICOM_SUFFIXES = (".dcm", ".dicom")


IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES


TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")


CACHE_DIR_VARIABLE = "SCARCE_CACHE_DIR"


DEFAULT_SIZE = 224


TASKS = ("binary", "multiclass", "multilabel")


# Names users write for the three splits in a split column or as folder names.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


# Cell values read as "no label" (a NaN in pandas terms).
MISSING_VALUES = {"", "nan", "na", "n/a", "null", "none"}


_CACHE_FORMAT = "scarce-decoded-v1"  # bump when decoding changes, so old caches are not reused


@dataclass
class Records:
    """What a source lists, one entry per image, before any decoding."""

    name: str
    files: list[Path]
    labels: np.ndarray  # int64 (N,) class index, or 0/1 int64 (N, K) for multi-label
    classes: list[str]
    task: str
    root: Path  # file names are reported relative to this folder
    patients: np.ndarray | None = None  # str per image
    splits: np.ndarray | None = None  # "train" / "val" / "test" per image, when the source fixes them
    source: str = ""

    def relative_files(self) -> np.ndarray:
        """File names relative to the root, as stored in each ``Split.files``."""
        return np.array([os.path.relpath(f, self.root) for f in self.files], dtype=str)


def to_uint8(values: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map any numeric image to uint8: from ``value_range`` when given, else min-max of the image."""
    if values.dtype == np.uint8 and value_range is None:
        return values
    values = np.asarray(values, dtype=np.float64)
    low, high = value_range if value_range is not None else (float(values.min()), float(values.max()))
    if high <= low:  # a constant image carries no contrast; keep it black rather than divide by 0
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_pil(path: Path) -> np.ndarray:
    """A PNG/JPEG/TIFF/BMP file as uint8 H x W (gray) or H x W x 3 (colour)."""
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise ScarceError(f"{path} holds {frames} frames; save each image as its own file.")
            image.load()  # decodes now, so a truncated file fails here with its name
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                return to_uint8(np.asarray(image))  # 16-bit/32-bit/float gray: min-max per image
            if mode in ("L", "RGB"):
                return np.asarray(image).copy()
            if mode in ("1", "LA", "La"):
                return np.asarray(image.convert("L")).copy()
            return np.asarray(image.convert("RGB")).copy()  # P, RGBA, CMYK, YCbCr, ...
    except ScarceError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ScarceError(f"Image {path} cannot be read ({error}); replace or remove the file.") from None


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The value range a VOI LUT or window maps to, mirroring pydicom's ``apply_windowing``."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


def read_dicom(path: Path) -> np.ndarray:
    """A single-frame DICOM image as uint8, after modality LUT, VOI LUT/window and MONOCHROME1 inversion."""
    import pydicom  # imported here so that users without DICOM data need not install it
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise ScarceError(f"DICOM file {path} cannot be read ({error}); replace or remove it.") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = ds.get("Modality") or ds.get("SOPClassUID", "non-image")
        raise ScarceError(f"DICOM file {path} has no pixel data (a {kind} object); remove it from the dataset.")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ScarceError(f"DICOM file {path} holds {frames} frames; only single-frame images are "
                          f"supported, so export the frame you need as its own file.")
    try:
        pixels = ds.pixel_array  # pydicom converts YBR colour to RGB here
    except Exception as error:  # decoders raise many types (RuntimeError, ValueError, ...)
        raise ScarceError(f"DICOM file {path}: pixel data cannot be decoded ({error}); replace the file, "
                          f"or install the decoder named above if it is compressed.") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour: no LUTs apply, only bring deeper samples down to 8 bits
        return to_uint8(pixels)
    try:
        values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    except ValueError as error:
        raise ScarceError(f"DICOM file {path} has an unusable rescale or window ({error}); fix the header.") from None
    value_range = _voi_output_range(ds)
    bits = int(ds.get("BitsStored") or 8)
    if value_range is None and bits < 8 and values.dtype.kind == "u":  # e.g. 1-bit masks: keep 0 and max apart
        value_range = (0.0, float(2 ** bits - 1))
    image = to_uint8(values, value_range)
    return 255 - image if photometric == "MONOCHROME1" else image  # MONOCHROME1: low values are white


def is_dicom(path: Path) -> bool:
    """Whether a file carries the DICOM preamble ('DICM' at byte 128); DICOM often has no suffix."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_image(path: Path) -> np.ndarray:
    """Any supported image file as uint8 H x W or H x W x 3."""
    if path.suffix.lower() in PIL_SUFFIXES:
        return read_pil(path)
    return read_dicom(path)


def _fit(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """One decoded image as C x size x size uint8 (Pillow's bilinear resize antialiases)."""
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    if image.ndim == 2:
        image = image[None]
        return np.repeat(image, 3, axis=0) if channels == 3 else image
    return image.transpose(2, 0, 1)


def decode_all(files: list[Path], size: int) -> np.ndarray:
    """Decode and resize every file: uint8 N x C x size x size (C = 3 if any file is colour)."""
    decoded = [read_image(Path(f)) for f in files]
    channels = 3 if any(image.ndim == 3 for image in decoded) else 1
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i in range(len(decoded)):
        out[i] = _fit(decoded[i], size, channels)
        decoded[i] = None  # free as we go so peak memory stays near one copy
    return out


def cache_dir() -> Path:
    """Where decoded arrays are kept: ``$SCARCE_CACHE_DIR``, else ``~/.cache/scarce``."""
    value = os.environ.get(CACHE_DIR_VARIABLE)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "scarce"


def files_key(files: list[Path], size: int) -> str:
    """Fingerprint of the decode inputs: path, byte size and mtime of every file, and the size."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\n{size}\n".encode())
    for f in files:
        stat = os.stat(f)
        digest.update(f"{Path(f).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_files(files: list[Path], size: int = DEFAULT_SIZE, cache: bool = True) -> np.ndarray:
    """Decoded, resized uint8 images (N x C x size x size), read from the disk cache when fresh."""
    if size < 1:
        raise ScarceError(f"size must be a positive number of pixels, not {size}.")
    if not cache:
        return decode_all(files, size)
    target = cache_dir() / f"images-{files_key(files, size)[:40]}.npy"
    if target.exists():
        try:
            images = np.load(target, allow_pickle=False)
            if images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(files):
                return images
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    images = decode_all(files, size)
    _save_atomically(target, images)
    return images


def _save_atomically(target: Path, array: np.ndarray) -> None:
    """Write via a temporary file and ``os.replace`` so readers never see half a file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.stem, suffix=".tmp",
                                             delete=False)
        with handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(handle.name, target)
    except OSError as error:  # a read-only home must not stop training; it only costs speed
        warnings.warn(f"Could not write the decode cache {target} ({error}); set "
                      f"{CACHE_DIR_VARIABLE} to a writable folder to skip decoding next time.")


def _sort_names(names: set[str]) -> list[str]:
    """Class names in a stable order: numerically when all are integers ("2" before "10")."""
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def declared_or_found(found: set[str], classes: list[str] | None, where: str) -> list[str]:
    """The declared classes (every label must be one of them), else the labels found, sorted."""
    if classes is None:
        return _sort_names(found)
    unknown = sorted(found - set(classes))
    if unknown:
        raise ScarceError(f"{where}: labels {', '.join(map(repr, unknown[:5]))} are not among the "
                          f"declared classes {classes}; fix the labels or the classes option.")
    return classes


def single_labels(values: list[str], classes: list[str] | None, task: str | None,
                  where: str) -> tuple[np.ndarray, list[str], str]:
    """Class indices for one label per image, the class list and the task."""
    found = set(values)
    classes = declared_or_found(found, classes, where)
    present = len(found)
    if present < 2:
        raise ScarceError(f"{where}: only one class ({next(iter(found))!r}) is present; a classifier "
                          f"needs images of at least two classes.")
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[v] for v in values], dtype=np.int64)
    task = check_task(task, len(classes), multilabel=False, where=where)
    if task == "multilabel":  # one label per image, asked as multi-label: one-hot rows
        labels = np.eye(len(classes), dtype=np.int64)[labels]
    return labels, list(classes), task


def check_task(task: str | None, n_classes: int, multilabel: bool, where: str) -> str:
    """The task asked for, checked against the labels, or the one the labels imply."""
    if task is not None and task not in TASKS:
        raise ScarceError(f"task={task!r} is not one of {', '.join(TASKS)}.")
    if multilabel:
        if task not in (None, "multilabel"):
            raise ScarceError(f"{where} gives several labels per image, so task must be 'multilabel', "
                              f"not {task!r}.")
        return "multilabel"
    if task == "binary" and n_classes != 2:
        raise ScarceError(f"{where} has {n_classes} classes but task='binary' needs exactly 2; "
                          f"use task='multiclass'.")
    return task or ("binary" if n_classes == 2 else "multiclass")


def warn_skipped(root: Path, skipped: list[Path]) -> None:
    """Say which files of a folder were not read (a warning, not an error: notes beside images are common)."""
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
        warnings.warn(f"Skipped {len(skipped)} non-image files in {root} (e.g. {shown}); only "
                      f"{', '.join(IMAGE_SUFFIXES)} files and DICOM without suffix are read.")


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (any depth, sorted) and the other files that were skipped."""
    images, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden files such as .DS_Store are never data
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES or (suffix == "" and is_dicom(path)):
            images.append(path)
        else:
            skipped.append(path)
    return images, skipped


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder(root: Path, classes: list[str] | None = None, task: str | None = None,
                patient_regex: str | None = None) -> Records:
    """``root/<class>/<images>``, or ``root/<split>/<class>/<images>`` with train/val/test folders.

    ``patient_regex`` finds the patient id in each file name (its first group, or the whole match).
    """
    root = Path(root)
    top = _subfolders(root)
    if not top:
        raise ScarceError(f"Folder {root} has no class subfolders; put each class's images in "
                          f"{root}/<class name>/.")
    by_split = all(p.name.lower() in SPLIT_ALIASES for p in top) and all(_subfolders(p) for p in top)
    groups = [(SPLIT_ALIASES[p.name.lower()], p) for p in top] if by_split else [(None, root)]
    files, names, split_of, skipped = [], [], [], []
    for split, folder in groups:
        for class_folder in _subfolders(folder):
            images, other = _image_files(class_folder)
            if not images:
                raise ScarceError(f"Class folder {class_folder} has no images "
                                  f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder.")
            files += images
            names += [class_folder.name] * len(images)
            split_of += [split] * len(images)
            skipped += other
    warn_skipped(root, skipped)
    labels, classes, task = single_labels(names, classes, task, f"Folder {root}")
    patients = None
    if patient_regex is not None:
        patients = np.array([_patient_from_name(f, patient_regex) for f in files], dtype=str)
    return Records(root.name, files, labels, classes, task, root, patients,
                   np.array(split_of, dtype=str) if by_split else None, f"folder {root}")


def _patient_from_name(path: Path, pattern: str) -> str:
    match = re.search(pattern, path.name)
    if match is None:
        raise ScarceError(f"File name {path.name} does not match patient_regex {pattern!r}; "
                          f"fix the pattern or rename the file.")
    return match.group(1) if match.groups() else match.group(0)


_PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "Image Index")


_LABEL_COLUMNS = ("label", "labels", "class", "Finding Labels")


_PATIENT_COLUMNS = ("patient_id", "patient", "Patient ID", "PatientID", "subject_id")


_SPLIT_COLUMNS = ("split", "fold", "subset")


def _pick(header: list[str], given: str | None, defaults: tuple[str, ...], role: str, table: Path,
          required: bool, option: str) -> str | None:
    """The column for ``role``: the given name (must exist) or the first default present."""
    if given is not None:
        if given not in header:
            raise ScarceError(f"Table {table} has no column {given!r} ({role}); its columns are "
                              f"{', '.join(header)}; fix {option}.")
        return given
    found = next((name for name in defaults if name in header), None)
    if found is None and required:
        raise ScarceError(f"Table {table} has no {role} column (looked for {', '.join(defaults)}); "
                          f"its columns are {', '.join(header)}; name it with {option}=.")
    return found


def _inside(root: Path, relative: str, table: Path, line: int) -> Path:
    """``root / relative``, refused when it leaves ``root`` (by '..' or an outside absolute path)."""
    root_abs = Path(os.path.abspath(root))
    candidate = Path(os.path.normpath(root_abs / relative))  # lexical: symlinked data dirs still work
    if candidate != root_abs and root_abs not in candidate.parents:
        raise ScarceError(f"Table {table} line {line}: path {relative!r} points outside the dataset root "
                          f"{root_abs}; give paths inside it or set root= to a folder that holds them.")
    return candidate


def _binary_cell(value: str, column: str, table: Path, line: int) -> int:
    text = value.strip().lower()
    if text in MISSING_VALUES:
        raise ScarceError(f"Table {table} line {line}: column {column!r} is empty (NaN); every image "
                          f"needs a 0/1 value there.")
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no"):
        return 0
    raise ScarceError(f"Table {table} line {line}: column {column!r} holds {value!r}; binary label "
                      f"columns take 0 or 1.")


def read_table(table: Path, root: Path | None = None, path_column: str | None = None,
               label_column: str | None = None, label_columns: list[str] | None = None,
               label_separator: str | None = None, no_finding: str = "No Finding",
               patient_column: str | None = None, split_column: str | None = None,
               classes: list[str] | None = None, task: str | None = None,
               delimiter: str | None = None) -> Records:
    """A CSV/TSV listing image paths with labels (one column, several 0/1 columns, or joined labels)."""
    table = Path(table)
    root = Path(root) if root is not None else table.parent
    delimiter = delimiter or ("\t" if table.suffix.lower() in (".tsv", ".tab") else ",")
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            rows = [row for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ScarceError(f"Table {table} cannot be read ({error}); give a UTF-8 CSV or TSV file.") from None
    if not header or not rows:
        raise ScarceError(f"Table {table} is empty; it needs a header line and one row per image.")
    path_col = _pick(header, path_column, _PATH_COLUMNS, "image path", table, True, "path_column")
    if label_columns:
        for name in label_columns:
            _pick(header, name, (), "label", table, True, "label_columns")
        label_col = None
    else:
        label_col = _pick(header, label_column, _LABEL_COLUMNS, "label", table, True, "label_column")
    patient_col = _pick(header, patient_column, _PATIENT_COLUMNS, "patient id", table, False,
                        "patient_column")
    split_col = _pick(header, split_column, _SPLIT_COLUMNS, "split", table, False, "split_column")
    at = {name: i for i, name in enumerate(header)}
    files, values, patients, splits, seen = [], [], [], [], {}
    for number, row in enumerate(rows):
        line = number + 2  # 1-based, after the header
        cell = lambda name: (row[at[name]] if at[name] < len(row) else "").strip()  # noqa: E731
        relative = cell(path_col)
        if not relative:
            raise ScarceError(f"Table {table} line {line}: the {path_col!r} cell is empty; give the image path.")
        path = _inside(root, relative, table, line)
        if path in seen:
            raise ScarceError(f"Table {table} lines {seen[path]} and {line} both list {relative}; "
                              f"remove the duplicate row.")
        seen[path] = line
        if not path.is_file():
            raise ScarceError(f"Table {table} line {line}: image {path} does not exist; fix the path "
                              f"or set root= to the folder the paths are relative to.")
        files.append(path)
        if label_columns:
            values.append([_binary_cell(cell(c), c, table, line) for c in label_columns])
        else:
            value = cell(label_col)
            if value.lower() in MISSING_VALUES:
                raise ScarceError(f"Table {table} line {line}: label column {label_col!r} is empty (NaN); "
                                  f"every image needs a label.")
            values.append(value)
        if patient_col:
            patient = cell(patient_col)
            if patient.lower() in MISSING_VALUES:
                raise ScarceError(f"Table {table} line {line}: patient column {patient_col!r} is empty; "
                                  f"give every image its patient id.")
            patients.append(patient)
        if split_col:
            name = cell(split_col).lower()
            if name not in SPLIT_ALIASES:
                raise ScarceError(f"Table {table} line {line}: split {cell(split_col)!r} is not one of "
                                  f"train, val, test.")
            splits.append(SPLIT_ALIASES[name])
    where = f"Table {table}"
    if label_columns:
        labels, classes, task = _column_labels(values, label_columns, classes, task, where)
    elif label_separator:
        labels, classes, task = _joined_labels(values, label_separator, no_finding, classes, task, where)
    else:
        labels, classes, task = single_labels(values, classes, task, where)
    generic = table.stem.lower() in ("labels", "label", "data", "metadata", "index")
    return Records(table.parent.name if generic else table.stem, files, labels, classes, task, root,
                   np.array(patients, dtype=str) if patient_col else None,
                   np.array(splits, dtype=str) if split_col else None, f"table {table}")


def _column_labels(rows: list[list[int]], columns: list[str], classes: list[str] | None,
                   task: str | None, where: str) -> tuple[np.ndarray, list[str], str]:
    """Several 0/1 columns: multi-label (one column alone is a binary task)."""
    if classes is not None and len(classes) != len(columns):
        raise ScarceError(f"{where}: {len(columns)} label columns but {len(classes)} declared classes; "
                          f"give one class name per column.")
    labels = np.array(rows, dtype=np.int64)
    if len(columns) == 1:  # one 0/1 column is a binary task: "not X" vs "X"
        if len(np.unique(labels)) < 2:
            raise ScarceError(f"{where}: column {columns[0]!r} holds only {labels[0, 0]}; a classifier "
                              f"needs images of both values.")
        return labels[:, 0], [f"not {columns[0]}", columns[0]], check_task(task, 2, False, where)
    return labels, list(classes or columns), check_task(task, len(columns), True, where)


def _joined_labels(values: list[str], separator: str, no_finding: str, classes: list[str] | None,
                   task: str | None, where: str) -> tuple[np.ndarray, list[str], str]:
    """One column like ``Atelectasis|Effusion``; ``no_finding`` is the all-zero row."""
    rows = []
    for value in values:
        tokens = [t.strip() for t in value.split(separator) if t.strip()]
        if no_finding and no_finding in tokens:
            if len(tokens) > 1:
                raise ScarceError(f"{where}: {value!r} joins {no_finding!r} with findings; "
                                  f"a row is either {no_finding!r} or a list of findings.")
            tokens = []
        rows.append(tokens)
    found = {t for tokens in rows for t in tokens}
    classes = declared_or_found(found, classes, where)
    if len(classes) < 2:
        raise ScarceError(f"{where}: only {len(classes)} finding ({', '.join(classes) or 'none'}) is "
                          f"present; a multi-label task needs at least two.")
    index = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=np.int64)
    for i, tokens in enumerate(rows):
        labels[i, [index[t] for t in tokens]] = 1
    return labels, list(classes), check_task(task, len(classes), True, where)


MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


# MD5s of the official MedMNIST+ (v3) files, as listed in the medmnist package's INFO table.
# pneumoniamnist, pneumoniamnist_64 and chestmnist are also confirmed by independent projects.
MEDMNIST = {
    "pneumoniamnist": ("28209eda62fecd6e6a2d98b1501bb15f", ["normal", "pneumonia"]),
    "pneumoniamnist_64": ("8f4eceb4ccffa70c672198ea285246c6", ["normal", "pneumonia"]),
    "pneumoniamnist_128": ("05b46931834c231683c68f40c47b2971", ["normal", "pneumonia"]),
    "pneumoniamnist_224": ("d6a3c71de1b945ea11211b03746c1fe1", ["normal", "pneumonia"]),
    "chestmnist": ("02c8a6516a18b556561a56cbdd36c4a8",
                   ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                    "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                    "pleural", "hernia"]),
    "breastmnist": ("750601b1f35ba3300ea97c75c52ff8f6", ["malignant", "normal, benign"]),
    "dermamnist": ("0744692d530f8e62ec473284d019b0c7",
                   ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                    "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                    "vascular lesions"]),
    "octmnist": ("c68d92d5b585d8d81f7112f81e2d0842",
                 ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"]),
    "bloodmnist": ("7053d0359d879ad8a5505303e11de1dc",
                   ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
                    "monocyte", "neutrophil", "platelet"]),
    "pathmnist": ("a8b06965200029087d5bd730944a56c1",
                  ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                   "normal colon mucosa", "cancer-associated stroma",
                   "colorectal adenocarcinoma epithelium"]),
    "retinamnist": ("bd4c0672f1bba3e3a89f0e4e876791e4", ["0", "1", "2", "3", "4"]),
}


def md5_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def check_md5(path: Path, expected: str) -> None:
    """Refuse a file whose MD5 differs from the published one (a truncated or wrong download)."""
    actual = md5_of(path)
    if actual != expected:
        raise ScarceError(f"{path} has MD5 {actual}, not the official {expected}; delete it and "
                          f"download it again.")


def medmnist_file(name: str, directory: Path | None, download: bool = True) -> Path:
    """``<directory>/<name>.npz`` for a public MedMNIST set, downloaded (MD5-checked) when missing."""
    key = name.lower()
    if key not in MEDMNIST:
        raise ScarceError(f"{name} is neither a file nor a known MedMNIST name ({', '.join(MEDMNIST)}).")
    folder = directory if directory is not None else cache_dir() / "medmnist"
    target = folder / f"{key}.npz"
    if target.exists():
        return target  # a local file is used as is: many copies differ from the official one
    url = MEDMNIST_URL.format(name=key)
    if not download:
        raise ScarceError(f"{target} is missing; download {url} and place it there "
                          f"(or allow downloading).")
    partial = folder / f".{key}.npz.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            for block in iter(lambda: response.read(1 << 20), b""):
                handle.write(block)
        check_md5(partial, MEDMNIST[key][0])
        os.replace(partial, target)  # only a complete, verified file ever gets the real name
    except (OSError, ScarceError) as error:
        partial.unlink(missing_ok=True)
        raise ScarceError(f"{target} is missing and could not be downloaded ({error}); download "
                          f"{url} and place it there.") from None
    return target


def medmnist_classes(stem: str) -> list[str] | None:
    """Class names of a public MedMNIST set, which its .npz does not carry."""
    entry = MEDMNIST.get(stem.lower())
    return list(entry[1]) if entry else None
