"""Kill harness and concurrent use: a study SIGKILLed again and again, in training, in evaluation
and while writing its report, resumes to the results of an uninterrupted run and loses nothing;
a second study process on the same folder is refused while the first one finishes.

Each kill is classified afterwards from what the killed process had written since it started
(see ``_phase``); the counts are printed (``pytest -s``) and asserted (at least one per phase).
"""

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_npz
from test_study import _results, tiny_spec

from scarce.cli import main

pytestmark = pytest.mark.slow

PHASES = ("training", "evaluation", "report")


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "scarce", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _done(out: Path) -> int:
    """Cells recorded done; read-only, so polling never creates or locks the database for long."""
    if not (out / "study.db").exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def _newer(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except OSError:
        return False


def _lock_owner(out: Path) -> int | None:
    try:
        return int((out / "study.lock").read_text())
    except (OSError, ValueError):
        return None


def _phase(out: Path, pid: int, since_ns: int, total: int) -> str:
    """Where the study process ``pid`` (started at ``since_ns``) stands, from what it has written.

    startup: it does not hold the lock yet. report: every cell is recorded, it is analysing and
    writing report.html, results.csv, summary.md. training: a cell folder it prepared has no
    checkpoint of its own yet (model built, epochs running). evaluation: the cell's checkpoint is
    written, its metrics.json is not (test-time augmentation, bootstrap, the remaining files).
    other: between cells (the database being updated).
    """
    if _lock_owner(out) != pid:
        return "startup"
    if _done(out) == total:
        return "report"
    for folder in sorted((out / "cells").glob("*/*")):
        if _newer(folder, since_ns) and not _newer(folder / "metrics.json", since_ns):
            return "evaluation" if _newer(folder / "model.safetensors", since_ns) else "training"
    return "other"


def _kill_study(spec: Path, out: Path, target: str, total: int, rng: random.Random, finish_first: int = 0):
    """Start ``scarce study run`` and SIGKILL it once it is in phase ``target`` (after it has finished
    ``finish_first`` more cells). Returns the phase it was in when killed, or None if it ended first."""
    done_before = _done(out)
    since = time.time_ns()
    process = _cli("study", "run", str(spec), "--out", str(out), "--no-progress")
    deadline = time.time() + 120
    delay = {"training": rng.uniform(0.0, 0.4), "evaluation": rng.uniform(0.0, 0.3),
             "report": rng.uniform(0.0, 0.8)}[target]
    while process.poll() is None and time.time() < deadline:
        if _done(out) >= done_before + finish_first and _phase(out, process.pid, since, total) == target:
            time.sleep(delay)  # a seeded moment inside the phase, not always its first instant
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return _phase(out, process.pid, since, total)
        time.sleep(0.005)
    if process.poll() is None:
        process.kill()
    process.wait()
    return None


def _check_intact(out: Path, reference: Path, cells: int) -> None:
    """Same results as the uninterrupted run; no duplicate, missing, half-written or stray files."""
    assert _results(out) == _results(reference)
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT arm || '/' || n || '/' || seed) FROM cells").fetchone() \
            == (cells, cells)
        assert {row[0] for row in db.execute("SELECT status FROM cells")} == {"done"}
        folders = [row[0] for row in db.execute("SELECT artefact_dir FROM cells")]
    db.close()
    assert len(_results(out)) == cells
    for folder in folders:  # every cell's metrics describe exactly the checkpoint beside them
        metrics = json.loads((out / folder / "metrics.json").read_text())
        checkpoint = hashlib.sha256((out / folder / "model.safetensors").read_bytes()).hexdigest()
        assert metrics["evaluated_checkpoint_sha256"] == checkpoint
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".write-test"))
    assert not (out / "study.lock").exists()


@pytest.fixture(scope="module")
def kill_study(tmp_path_factory):
    """Two recipes × N {8, 16} × seeds {0, 1} on synthetic 32-px images (200 test images, so that
    evaluation takes a measurable moment), and its uninterrupted reference run."""
    folder = tmp_path_factory.mktemp("kills")
    data = write_npz(folder / "kills.npz", sizes=(40, 16, 200))
    spec = tiny_spec(folder, data=f'"{data}"', epochs=3, tta=2)
    reference = folder / "reference"
    assert main(["study", "run", str(spec), "--out", str(reference), "--no-progress"]) == 0
    return spec, reference


def test_eleven_sigkills_in_training_evaluation_and_report_then_resume_loses_nothing(kill_study, tmp_path):
    spec, reference = kill_study
    out, total, rng = tmp_path / "killed", 8, random.Random(20240607)
    landed = {phase: 0 for phase in (*PHASES, "startup", "other")}
    targets = ["training", "evaluation"] * 4
    rng.shuffle(targets)
    for target in targets:
        room = total - 1 - _done(out)  # leave a cell for the report kills to follow
        landed_in = _kill_study(spec, out, target, total, rng, finish_first=min(rng.choice([0, 1, 1]), max(room, 0)))
        if landed_in:
            landed[landed_in] += 1
    for _ in range(3):  # the last cells, then kills while the report is analysed and written
        landed_in = _kill_study(spec, out, "report", total, rng)
        if landed_in:
            landed[landed_in] += 1
    kills = sum(landed.values())
    print(f"\nSIGKILLs: {kills}; landed in " + ", ".join(f"{phase} {count}" for phase, count in landed.items()))
    assert kills >= 10 and all(landed[phase] >= 1 for phase in PHASES), landed
    finished = _cli("study", "run", str(spec), "--out", str(out), "--no-progress")
    assert finished.wait(timeout=300) == 0, finished.stderr.read()
    _check_intact(out, reference, total)


def test_a_second_study_process_is_refused_while_the_first_finishes(kill_study, tmp_path):
    spec, reference = kill_study
    out = tmp_path / "shared"
    first = _cli("study", "run", str(spec), "--out", str(out), "--no-progress")
    deadline = time.time() + 60
    while _lock_owner(out) != first.pid and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert _lock_owner(out) == first.pid
    second = subprocess.run([sys.executable, "-m", "scarce", "study", "run", str(spec), "--out", str(out),
                             "--no-progress"], capture_output=True, text=True, timeout=120)
    assert first.poll() is None  # the refusal happened while the first study was running
    assert second.returncode == 2
    assert second.stderr.startswith(f"scarce: error: Another scarce study (pid {first.pid}) is running in {out}")
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    _check_intact(out, reference, 8)


def test_sigkill_on_real_data_in_training_and_evaluation_then_resume(data_dir, tmp_path):
    """The same harness on the real pediatric pneumonia file: pretrained EfficientNet-Lite0, N = 10."""
    spec = tmp_path / "real.toml"
    spec.write_text(f'name = "real"\ndata = "{data_dir / "pneumonia_kaggle_64.npz"}"\nn = [10]\nseeds = [0]\n'
                    f'epochs = 1\ntta = 0\n\n[[recipes]]\nrecipe = "gradual-unfreezing"\n')
    reference = tmp_path / "reference"
    assert main(["study", "run", str(spec), "--out", str(reference), "--no-progress"]) == 0
    out, rng = tmp_path / "killed", random.Random(7)
    landed = [_kill_study(spec, out, target, 1, rng) for target in ("training", "evaluation")]
    print(f"\nreal data SIGKILLs landed in: {landed}")
    assert landed == ["training", "evaluation"]
    finished = _cli("study", "run", str(spec), "--out", str(out), "--no-progress")
    assert finished.wait(timeout=300) == 0, finished.stderr.read()
    _check_intact(out, reference, 1)
