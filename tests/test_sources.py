"""Readers on real files: the knee PNG folder and its table, pydicom's shipped DICOM files, bad input."""

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from scarce.data.dataset import load_dataset
from scarce.data.sources import check_md5, decode_files, read_dicom, read_image, to_uint8
from scarce.errors import ScarceError

DICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # real files in pydicom's wheel
MONOCHROME1 = DICOM_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"  # a real CR, no suffix


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache, never the user's ~/.cache."""
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def knee(data_dir) -> Path:
    path = data_dir / "samples" / "knee_png"
    if not path.is_dir():
        pytest.skip(f"knee PNG sample folder not found in {data_dir}")
    return path


def knee_files(knee: Path) -> list[Path]:
    return sorted(knee.glob("*/*.png"))


def dicom(name: str) -> Path:
    path = DICOM_FILES / name
    if not path.exists():
        pytest.skip(f"pydicom test file {name} is not shipped with this pydicom version")
    return path


# --------------------------------------------------------------------------- folder per class

def test_knee_folder_loads_as_five_grades_with_a_seeded_stratified_split(knee):
    dataset = load_dataset(knee)
    assert dataset.task == "multiclass" and dataset.classes == ["KL0", "KL1", "KL2", "KL3", "KL4"]
    assert sum(len(s) for s in dataset.splits.values()) == 100
    for name, split in dataset.splits.items():
        assert split.images.dtype.is_floating_point is False and split.images.shape[1:] == (1, 224, 224)
        # each file's folder is its class
        assert [f.split("/")[0] for f in split.files] == [dataset.classes[i] for i in split.labels]
        assert len(np.unique(split.labels)) == 5  # stratified: every grade in every split
    assert 65 <= len(dataset.splits["train"]) <= 75
    assert dataset.extra["split"]["origin"] == "assigned"
    again = load_dataset(knee)
    assert again.fingerprint == dataset.fingerprint
    assert load_dataset(knee, split_seed=1).fingerprint != dataset.fingerprint


def test_folder_with_split_subfolders_keeps_them(knee, tmp_path):
    for i, path in enumerate(knee_files(knee)):
        split = ("train", "val", "test")[i % 3]
        target = tmp_path / "set" / split / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    dataset = load_dataset(tmp_path / "set", size=32)
    assert {n: len(s) for n, s in dataset.splits.items()} == {"train": 34, "val": 33, "test": 33}
    assert all(f.startswith("val/") for f in dataset.splits["val"].files)
    assert dataset.extra["split"] == {"origin": "source"}


def test_mixed_folder_16bit_rgb_odd_sizes_and_a_stray_file(knee, tmp_path):
    files = knee_files(knee)[:40]
    root = tmp_path / "mixed"
    for i, path in enumerate(files):
        target = root / ("a" if i % 2 else "b") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    gray = np.asarray(Image.open(files[0]))
    # the same X-ray saved as 16-bit PNG, as RGB TIFF and at another size
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "b" / "deep.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(root / "a" / "colour.tif")
    Image.fromarray(gray).resize((100, 80)).save(root / "a" / "small.bmp")
    (root / "a" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"Skipped 1 non-image files .*notes.txt"):
        dataset = load_dataset(root, size=64)
    assert sum(len(s) for s in dataset.splits.values()) == 43
    assert all(s.images.shape[1:] == (3, 64, 64) for s in dataset.splits.values())  # one RGB: all RGB
    assert np.array_equal(read_image(root / "b" / "deep.png"), to_uint8(gray.astype(float)))
    assert np.array_equal(read_image(root / "a" / "colour.tif")[..., 1], gray)


def test_the_decode_cache_is_reused_and_invalidated_by_a_changed_file(knee, tmp_path):
    files = [shutil.copy(p, tmp_path / p.name) for p in knee_files(knee)[:5]]
    files = [Path(f) for f in files]
    first = decode_files(files, size=48)
    cached = list((tmp_path / "cache").glob("images-*.npy"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    assert np.array_equal(np.load(cached[0], allow_pickle=False), first)
    assert np.array_equal(decode_files(files, size=48), first)
    os.utime(files[0], ns=(0, 0))  # a touched source file means a new key
    decode_files(files, size=48)
    decode_files(files, size=32)  # and so does another size
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 3


# --------------------------------------------------------------------------- CSV / TSV tables

def test_knee_table_split_keeps_every_patient_in_one_split(knee):
    dataset = load_dataset(knee / "labels.csv")
    assert dataset.classes == ["KL0", "KL1", "KL2", "KL3", "KL4"]
    patients = {name: set(split.patients) for name, split in dataset.splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert len(set().union(*patients.values())) == 64
    assert dataset.extra["split"]["grouped_by"] == "patient"


def test_multilabel_table_with_joined_labels_and_no_finding(knee, tmp_path):
    files = knee_files(knee)
    findings = ["Effusion|Atelectasis", "No Finding", "Effusion", "Mass|Effusion"]
    lines = ["path\tFinding Labels\tPatient ID"]
    lines += [f"{f.relative_to(knee)}\t{findings[i % 4]}\t{i // 2}" for i, f in enumerate(files)]
    table = tmp_path / "findings.tsv"
    table.write_text("\n".join(lines) + "\n")
    dataset = load_dataset(table, root=knee, label_separator="|", size=32)
    assert dataset.task == "multilabel" and dataset.classes == ["Atelectasis", "Effusion", "Mass"]
    assert dataset.num_outputs == 3
    rows = {f: row.tolist() for s in dataset.splits.values() for f, row in zip(s.files, s.labels)}
    expected = {"Effusion|Atelectasis": [1, 1, 0], "No Finding": [0, 0, 0], "Effusion": [0, 1, 0],
                "Mass|Effusion": [0, 1, 1]}
    for i, f in enumerate(files):
        assert rows[str(f.relative_to(knee))] == expected[findings[i % 4]]


def test_binary_label_columns_and_a_given_split_column(knee, tmp_path):
    files = knee_files(knee)
    lines = ["file,effusion,mass,split"]
    lines += [f"{f.relative_to(knee)},{i % 2},{int(i % 3 == 0)},{('train', 'val', 'test')[i % 3]}"
              for i, f in enumerate(files)]
    table = tmp_path / "cols.csv"
    table.write_text("\n".join(lines))
    dataset = load_dataset(table, root=knee, label_columns=["effusion", "mass"], size=32)
    assert dataset.task == "multilabel" and dataset.classes == ["effusion", "mass"]
    assert {n: len(s) for n, s in dataset.splits.items()} == {"train": 34, "val": 33, "test": 33}
    assert dataset.splits["test"].labels[:, 1].sum() == 0  # rows 2, 5, ... are test; i % 3 != 0
    single = load_dataset(table, root=knee, label_columns=["effusion"], size=32)
    assert single.task == "binary" and single.classes == ["not effusion", "effusion"]


def test_a_partial_split_column_gets_val_carved_from_train_by_patient(knee, tmp_path):
    text = (knee / "labels.csv").read_text().splitlines()
    rows = [text[0] + ",split"] + [f"{line},{'test' if i % 5 == 0 else 'train'}" for i, line in enumerate(text[1:])]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    dataset = load_dataset(tmp_path / "t.csv", root=knee, size=32)
    assert len(dataset.splits["test"]) == 20 and len(dataset.splits["val"]) > 0
    assert not set(dataset.splits["val"].patients) & set(dataset.splits["train"].patients)
    assert dataset.extra["split"]["completed"] == ["val"]


# --------------------------------------------------------------------------- DICOM

def test_ct_rescale_gives_hounsfield_units_mapped_min_max():
    path = dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024
    assert np.array_equal(read_dicom(path), to_uint8(hu))


def test_mr_window_clips_below_and_above_the_window():
    path = dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    image, raw = read_dicom(path), ds.pixel_array
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    assert (image[raw <= centre - 0.5 - (width - 1) / 2] == 0).all()
    assert (image[raw > centre - 0.5 + (width - 1) / 2] == 255).all()


def test_monochrome1_is_inverted(tmp_path):
    path = dicom(str(MONOCHROME1.relative_to(DICOM_FILES)))
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME2"  # the same real pixels, read the other way round
    ds.save_as(tmp_path / "mono2.dcm")
    assert np.array_equal(read_dicom(path), 255 - read_dicom(tmp_path / "mono2.dcm"))


def test_dicom_dataset_from_a_table_with_root_in_pydicom(tmp_path):
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle.dcm",
             str(MONOCHROME1.relative_to(DICOM_FILES))]
    for name in names:
        dicom(name)
    lines = ["path,label,split"] + [f"{n},{'ct' if i % 2 else 'mr'},{('train', 'train', 'val', 'val', 'test', 'test')[i]}"
                                    for i, n in enumerate(names)]
    (tmp_path / "dicom.csv").write_text("\n".join(lines))
    dataset = load_dataset(tmp_path / "dicom.csv", root=DICOM_FILES, size=32)
    assert dataset.task == "binary" and dataset.splits["train"].images.shape == (2, 3, 32, 32)


def test_multi_frame_and_pixel_less_and_truncated_dicom_are_refused():
    with pytest.raises(ScarceError, match=r"SC_rgb_rle_2frame.dcm holds 2 frames; only single-frame"):
        read_dicom(dicom("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(ScarceError, match=r"rtplan.dcm has no pixel data \(a RTPLAN object\)"):
        read_dicom(dicom("rtplan.dcm"))
    with pytest.raises(ScarceError, match=r"MR_truncated.dcm: pixel data cannot be decoded"):
        read_dicom(dicom("MR_truncated.dcm"))


# --------------------------------------------------------------------------- bad input

def table(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def knee_rows(knee: Path, n: int = 100) -> list[str]:
    return (knee / "labels.csv").read_text().splitlines()[1:n + 1]


def test_missing_path_and_empty_folders(tmp_path):
    with pytest.raises(ScarceError, match=r"Data file .*nowhere was not found as given"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScarceError, match=r"empty has no class subfolders; put each class's images in"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "cats").mkdir()
    (tmp_path / "empty" / "cats" / "read.me").write_text("x")
    with pytest.raises(ScarceError, match=r"Class folder .*cats has no images"):
        load_dataset(tmp_path / "empty")


def test_truncated_image_is_named(knee, tmp_path):
    for i, path in enumerate(knee_files(knee)[:10]):
        target = tmp_path / "set" / ("a" if i % 2 else "b") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    broken = sorted((tmp_path / "set" / "a").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:2000])
    with pytest.raises(ScarceError, match=rf"Image .*{broken.name} cannot be read .*replace or remove the file"):
        load_dataset(tmp_path / "set", cache=False)


def test_single_class_and_undeclared_labels(knee, tmp_path):
    one = table(tmp_path, "path,label\n" + "\n".join(r.rsplit(",", 1)[0].split(",")[0] + ",KL0"
                                                     for r in knee_rows(knee, 10)))
    with pytest.raises(ScarceError, match=r"only one class \('KL0'\) is present"):
        load_dataset(one, root=knee)
    with pytest.raises(ScarceError, match=r"labels 'KL2', 'KL3', 'KL4' are not among the declared classes"):
        load_dataset(knee / "labels.csv", classes=["KL0", "KL1"])
    with pytest.raises(ScarceError, match=r"has 5 classes but task='binary' needs exactly 2"):
        load_dataset(knee / "labels.csv", task="binary")


def test_table_column_nan_duplicate_escape_and_empty_errors(knee, tmp_path):
    rows = knee_rows(knee, 20)
    with pytest.raises(ScarceError, match=r"has no column 'grade' \(label\); its columns are path, label, patient_id"):
        load_dataset(knee / "labels.csv", label_column="grade")
    with pytest.raises(ScarceError, match=r"has no image path column \(looked for path, file"):
        load_dataset(table(tmp_path, "name,label\na.png,x\n"))
    nan = table(tmp_path, "path,label\n" + "\n".join(rows[:3]) + "\nKL0/9003815R.png,,1\n")
    with pytest.raises(ScarceError, match=r"line 5: label column 'label' is empty \(NaN\)"):
        load_dataset(nan, root=knee)
    duplicate = table(tmp_path, "path,label,patient_id\n" + "\n".join(rows[:3] + rows[1:2]))
    with pytest.raises(ScarceError, match=r"lines 3 and 5 both list KL0/9003175R.png; remove the duplicate row"):
        load_dataset(duplicate, root=knee)
    escape = table(tmp_path, "path,label\n../../etc/passwd,KL0\n")
    with pytest.raises(ScarceError, match=r"line 2: path '../../etc/passwd' points outside the dataset root"):
        load_dataset(escape, root=knee)
    with pytest.raises(ScarceError, match=r"points outside the dataset root"):
        load_dataset(table(tmp_path, "path,label\n/etc/hostname,KL0\n"), root=knee)
    with pytest.raises(ScarceError, match=r"t.csv is empty; it needs a header line and one row per image"):
        load_dataset(table(tmp_path, ""))
    with pytest.raises(ScarceError, match=r"is empty; it needs a header line"):
        load_dataset(table(tmp_path, "path,label\n"))
    bad_binary = table(tmp_path, "path,a,b\nKL0/9003175L.png,1,-1\n")
    with pytest.raises(ScarceError, match=r"column 'b' holds '-1'; binary label columns take 0 or 1"):
        load_dataset(bad_binary, root=knee, label_columns=["a", "b"])
    missing = table(tmp_path, "path,label\nKL0/none.png,KL0\n")
    with pytest.raises(ScarceError, match=r"line 2: image .*none.png does not exist"):
        load_dataset(missing, root=knee)


def test_options_that_do_not_apply_are_refused(knee, data_dir):
    with pytest.raises(ScarceError, match=r"Unknown data option 'colour'"):
        load_dataset(knee, colour=True)
    with pytest.raises(ScarceError, match=r"Option 'label_column' does not apply to .*knee_png \(a folder\)"):
        load_dataset(knee, label_column="x")
    with pytest.raises(ScarceError, match=r"Option 'size' does not apply to .*\(a npz\)"):
        load_dataset(data_dir / "pneumoniamnist.npz", size=64)


def test_too_few_patients_to_split(knee, tmp_path):
    rows = [r for r in knee_rows(knee) if r.split(",")[1] == "KL0"][:3]
    rows += [r for r in knee_rows(knee) if r.split(",")[1] == "KL1"][:3]
    with pytest.raises(ScarceError, match=r"Only \d patients \(or distinct images\) to split; a test share"):
        load_dataset(table(tmp_path, "path,label,patient_id\n" + "\n".join(rows)), root=knee)


def test_medmnist_names_resolve_locally_and_fail_offline_with_the_file_to_place(data_dir, tmp_path):
    dataset = load_dataset("pneumoniamnist", data_dir)
    assert dataset.classes == ["normal", "pneumonia"] and len(dataset.splits["test"]) == 624
    with pytest.raises(ScarceError, match=rf"{tmp_path}/chestmnist.npz is missing; download "
                                          r"https://zenodo.org/records/10519652/files/chestmnist.npz"):
        load_dataset("chestmnist", tmp_path, download=False)
    # the shared copy is not the official file (its train split is smaller): the MD5 check says so
    with pytest.raises(ScarceError, match=r"has MD5 [0-9a-f]{32}, not the official 28209eda"):
        check_md5(data_dir / "pneumoniamnist.npz", "28209eda62fecd6e6a2d98b1501bb15f")
    with pytest.raises(ScarceError, match=r"was not found"):
        load_dataset("nosuchmnist", tmp_path)


def test_to_uint8_handles_constant_images():
    assert not to_uint8(np.full((4, 4), 7, dtype=np.uint16)).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warning either
        to_uint8(np.zeros((2, 2), dtype=np.float32))
