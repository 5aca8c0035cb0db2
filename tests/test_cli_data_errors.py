"""Every bad data input reaches the user as exit code 2 and one sentence, with nothing written."""

import shutil

import pytest

from scarce.cli import main


def _knee_copy(knee, target, count=10, classes=("KL0", "KL1")):
    for i, path in enumerate(sorted((knee / "KL0").iterdir())[:count]):
        folder = target / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    return target


def _case(name, knee, tmp):
    """Build the bad input called ``name``; return (inspect arguments, expected message part)."""
    if name == "missing path":
        return [str(tmp / "nowhere")], "was not found as given"
    if name == "empty folder":
        (tmp / "empty").mkdir()
        return [str(tmp / "empty")], "has no class subfolders"
    if name == "class folder without images":
        (tmp / "set" / "a").mkdir(parents=True)
        (tmp / "set" / "a" / "notes.txt").write_text("x")
        return [str(tmp / "set")], "has no images"
    if name == "truncated image":
        root = _knee_copy(knee, tmp / "set")
        broken = sorted((root / "KL1").iterdir())[0]
        broken.write_bytes(broken.read_bytes()[:2000])
        return [str(root), "--data-option", "cache=false"], f"{broken.name} cannot be read"
    table = tmp / "t.csv"
    rows = (knee / "labels.csv").read_text().splitlines()
    if name == "CSV without the named column":
        return [str(knee / "labels.csv"), "--data-option", "label_column=grade"], "has no column 'grade'"
    if name == "labels not among declared classes":
        return [str(knee / "labels.csv"), "--data-option", 'classes=["KL0","KL1"]'], "not among the declared classes"
    if name == "single class":
        table.write_text("path,label\n" + "\n".join(r.split(",")[0] + ",KL0" for r in rows[1:11]))
        return [str(table), "--data-option", f"root={knee}"], "only one class"
    if name == "path escaping the root":
        table.write_text("path,label\n../../etc/passwd,KL0\nKL1/x.png,KL1\n")
        return [str(table), "--data-option", f"root={knee}"], "points outside the dataset root"
    if name == "duplicate rows":
        table.write_text("\n".join(rows[:4] + rows[2:3]))
        return [str(table), "--data-option", f"root={knee}"], "remove the duplicate row"
    if name == "NaN label":
        table.write_text(rows[0] + "\n" + "\n".join(rows[1:4]) + "\nKL0/9003815R.png,,1\n")
        return [str(table), "--data-option", f"root={knee}"], "is empty (NaN)"
    if name == "empty CSV":
        table.write_text("")
        return [str(table)], "is empty"
    if name == "DICOM without pixel data":
        from pydicom.data import get_testdata_file

        for label in ("a", "b"):
            (tmp / "dcm" / label).mkdir(parents=True)
            shutil.copy(get_testdata_file("rtplan.dcm"), tmp / "dcm" / label / "plan.dcm")
        return [str(tmp / "dcm"), "--data-option", "cache=false"], "no pixel data"
    if name == "unknown option":
        return [str(knee), "--data-option", "colour=true"], "Unknown data option 'colour'"
    raise AssertionError(name)


CASES = ["missing path", "empty folder", "class folder without images", "truncated image",
         "CSV without the named column", "labels not among declared classes", "single class",
         "path escaping the root", "duplicate rows", "NaN label", "empty CSV", "DICOM without pixel data",
         "unknown option"]


@pytest.mark.parametrize("name", CASES)
def test_bad_data_exits_2_with_one_sentence(name, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    args, message = _case(name, data_dir / "samples" / "knee_png", tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["data", "inspect", *args]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert error.startswith("scarce: error: ") and len(error.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
