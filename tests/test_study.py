"""`scarce study`: spec checks, identical subsets across arms, the durable store, kills and
resumption, spec changes, the lock, and the local and Ray executors giving the same results."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import write_npz

from scarce.cli import main
from scarce.config import TrainConfig
from scarce.errors import ScarceError
from scarce.study.runner import StudyLock
from scarce.study.spec import config_hash, load_spec, parse_spec
from scarce.study.store import Store
from scarce.training.recipes import get_recipe

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(tmp_path: Path, **changes) -> Path:
    """Two recipes × N {8, 16} × seeds {0, 1} on synthetic 32-px images: 8 cells of a few seconds."""
    data = write_npz(tmp_path / "tiny.npz", sizes=(24, 16, 16))
    values = {"name": '"tiny"', "data": f'"{data}"', "size": 32, "pretrained": '"scratch"', "n": "[8, 16]",
              "seeds": "[0, 1]", "epochs": 2, "tta": 1, "target_auc": 0.9}
    values.update(changes)
    text = "\n".join(f"{k} = {v}" for k, v in values.items())
    text += '\n\n[[recipes]]\nrecipe = "gradual-unfreezing"\n\n[[recipes]]\nname = "plain"\nrecipe = "scratch"\n'
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "scarce", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    return sorted(({k: row[k] for k in ("recipe", "n", "seed", "status", "test_auc", "test_accuracy")}
                   for row in rows), key=lambda r: (r["recipe"], int(r["n"]), int(r["seed"])))


def _done(out: Path) -> int:
    try:
        with sqlite3.connect(out / "study.db", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


# ----------------------------------------------------------------------------- the spec

def test_spec_errors_are_one_sentence(tmp_path):
    with pytest.raises(ScarceError, match="unknown field 'seed'. Did you mean 'seeds'"):
        parse_spec({"data": "x.npz", "seed": [0], "recipes": ["regular"]})
    with pytest.raises(ScarceError, match="no \\[\\[recipes\\]\\]"):
        parse_spec({"data": "x.npz"})
    with pytest.raises(ScarceError, match="Did you mean 'gradual-unfreezing'"):
        parse_spec({"data": "x.npz", "recipes": [{"recipe": "gradual-unfreeze"}]})
    with pytest.raises(ScarceError, match="'n' lists 50 twice"):
        parse_spec({"data": "x.npz", "n": [50, 50], "recipes": ["regular"]})
    with pytest.raises(ScarceError, match="every n must be positive"):
        parse_spec({"data": "x.npz", "n": [0, 50], "recipes": ["regular"]})
    with pytest.raises(ScarceError, match="both named 'regular'"):
        parse_spec({"data": "x.npz", "recipes": ["regular", {"recipe": "scratch-regular", "name": "regular"}]})
    bad = tmp_path / "bad.toml"
    bad.write_text("n = [50,\n")
    with pytest.raises(ScarceError, match="bad.toml is not valid TOML"):
        load_spec(bad)


def test_arms_are_lists_with_overrides(tmp_path):
    spec = parse_spec({"data": "x.npz", "recipes": [
        {"recipe": "gradual-unfreezing", "name": "gu-low", "options": {"lr": 3e-4}},
        {"recipe": "gradual-unfreezing", "name": "gu-cxr", "pretrained": "scratch"}]})
    assert [a.name for a in spec.arms] == ["gu-low", "gu-cxr"]
    config = spec.cell_config("gu-low", 50, 1, tmp_path)
    assert config.recipe_options == {"lr": 3e-4} and config.n == 50 and config.seed == 1
    assert spec.cell_config("gu-cxr", 50, 1, tmp_path).pretrained == "scratch"
    assert len(spec.cells()) == 2 * 5 * 3


# ----------------------------------------------------------------------------- running

@pytest.mark.slow
def test_study_runs_every_cell_on_identical_subsets_and_writes_the_report(tmp_path, capsys):
    spec = tiny_spec(tmp_path)
    out = tmp_path / "study"
    assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 0
    rows = _results(out)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    for n in (8, 16):
        for seed in (0, 1):
            subsets = {json.dumps(json.loads((out / "cells" / arm / f"n{n}-s{seed}" / "run.json").read_text())
                                  ["data"]["train_subset_indices"]) for arm in ("gradual-unfreezing", "plain")}
            assert len(subsets) == 1  # every recipe saw the same images
    small = json.loads((out / "cells" / "plain" / "n8-s0" / "run.json").read_text())["data"]["train_subset_indices"]
    large = json.loads((out / "cells" / "plain" / "n16-s0" / "run.json").read_text())["data"]["train_subset_indices"]
    assert set(small) <= set(large)
    for name in ("report.html", "results.csv", "summary.md"):
        assert (out / name).stat().st_size > 100
    assert main(["study", "status", str(out)]) == 0
    assert "8 done" in capsys.readouterr().out
    (out / "report.html").unlink()
    assert main(["study", "report", str(out)]) == 0 and (out / "report.html").exists()
    with sqlite3.connect(out / "study.db") as db:
        row = db.execute("SELECT config_hash, versions, data_fingerprint, artefact_dir, seconds FROM cells").fetchone()
    assert len(row[0]) == 64 and "torch" in json.loads(row[1]) and len(row[2]) == 64 and row[4] > 0


@pytest.mark.slow
def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(tmp_path):
    spec = tiny_spec(tmp_path)
    reference = tmp_path / "reference"
    assert main(["study", "run", str(spec), "--out", str(reference), "--no-progress"]) == 0
    out = tmp_path / "killed"
    kills = 0
    for kill_after in (0, 2, 5):  # kill in the first cell, and after 2 and 5 finished cells
        process = _cli("study", "run", str(spec), "--out", str(out), "--no-progress")
        deadline = time.time() + 120
        while _done(out) <= kill_after and process.poll() is None and time.time() < deadline:
            time.sleep(0.05 if kill_after else 0.5)
        if kill_after == 0:
            time.sleep(1.0)  # inside the first cell's training
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills == 3
    assert _done(out) < 8
    finished = _cli("study", "run", str(spec), "--out", str(out), "--no-progress")
    assert finished.wait(timeout=300) == 0, finished.stderr.read()
    assert _results(out) == _results(reference)
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT arm || n || seed) FROM cells").fetchone() == (8, 8)
    assert not list(out.rglob("*.tmp")) and not (out / "study.lock").exists()


@pytest.mark.slow
def test_changing_a_finished_cell_is_refused_unless_asked(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "run", str(tiny_spec(tmp_path, n="[8]", seeds="[0]")), "--out", str(out),
                 "--no-progress"]) == 0
    first = _results(out)
    changed = tiny_spec(tmp_path, n="[8]", seeds="[0]", epochs=3)
    assert main(["study", "run", str(changed), "--out", str(out), "--no-progress"]) == 2
    assert "changes 2 finished cell(s)" in capsys.readouterr().err
    assert _results(out) == first  # nothing lost
    # Adding a seed is not a change of finished cells: only the new ones run.
    more = tiny_spec(tmp_path, n="[8]", seeds="[0, 1]")
    assert main(["study", "run", str(more), "--out", str(out), "--no-progress"]) == 0
    assert len(_results(out)) == 4
    assert [r for r in _results(out) if r["seed"] == "0"] == first
    assert main(["study", "run", str(changed), "--out", str(out), "--no-progress", "--redo-changed"]) == 0


def test_an_option_written_at_its_default_is_no_change_and_a_real_one_is(tmp_path, capsys):
    """What a cell's hash holds: settings that differ from their defaults, so an option a later
    scarce adds (at a default that changes nothing) does not turn finished cells into changed ones."""
    out = tmp_path / "study"
    assert main(["study", "run", str(tiny_spec(tmp_path, n="[8]", seeds="[0]")), "--out", str(out),
                 "--no-progress"]) == 0
    first, spec = _results(out), tmp_path / "spec.toml"
    cells = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    spec.write_text(spec.read_text().replace('recipe = "scratch"\n', 'recipe = "scratch"\noptions = { bss = 0.0 }\n'))
    assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert _results(out) == first
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()} == cells  # nothing retrained
    spec.write_text(spec.read_text().replace("bss = 0.0", "bss = 0.001"))
    assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 2
    assert "changes 1 finished cell(s) (plain n=8 seed=0)" in capsys.readouterr().err
    recipe = get_recipe("scratch")
    config = TrainConfig(data="x.npz", recipe="scratch")
    assert config_hash(config) == config_hash(replace(config, recipe_options={"bss": 0.0, "lr": recipe.lr}))


def test_a_second_study_process_is_refused_and_a_stale_lock_recovered(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / "study.lock").write_text(str(sleeper.pid))
        with pytest.raises(ScarceError, match=f"Another scarce study \\(pid {sleeper.pid}\\) is running"):
            with StudyLock(out):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with StudyLock(out):  # the owner is dead: its lock is stale and taken over
        assert (out / "study.lock").read_text() == str(os.getpid())
    assert not (out / "study.lock").exists()


def test_store_refuses_a_corrupt_database(tmp_path):
    (tmp_path / "study.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ScarceError, match="is not a usable study database"):
        Store(tmp_path / "study.db")


@pytest.mark.slow
def test_local_pool_and_ray_give_the_same_results_as_one_process(tmp_path):
    pytest.importorskip("ray")
    spec = tiny_spec(tmp_path, n="[8]")
    results = {}
    for name, extra in (("single", []), ("pool", ["--workers", "2"]), ("ray", ["--executor", "ray"])):
        out = tmp_path / name
        assert main(["study", "run", str(spec), "--out", str(out), "--no-progress", *extra]) == 0, name
        results[name] = _results(out)
    assert results["single"] == results["pool"] == results["ray"]
    with sqlite3.connect(tmp_path / "ray" / "study.db") as db:
        assert {row[0] for row in db.execute("SELECT executor FROM cells")} == {"ray"}


@pytest.mark.slow
def test_ray_cluster_started_outside_is_used_with_address(tmp_path):
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    port = "6391"
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port,
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        spec = tiny_spec(tmp_path, n="[8]", seeds="[0]")
        out = tmp_path / "study"
        # A study started locally switches executors when resumed: both write the same store.
        assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 0
        more = tiny_spec(tmp_path, n="[8]", seeds="[0, 1]")
        assert main(["study", "run", str(more), "--out", str(out), "--no-progress", "--executor", "ray",
                     "--address", f"127.0.0.1:{port}"]) == 0
        with sqlite3.connect(out / "study.db") as db:
            executors = dict(db.execute("SELECT seed, executor FROM cells WHERE arm = 'plain'").fetchall())
        assert executors == {0: "local", 1: "ray"}
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_no_ray_cluster_at_auto_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from scarce.study.executors import execute_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ScarceError, match="Cannot reach a Ray cluster at auto"):
        execute_ray({("a", 1, 0): {}}, "auto", 1, 0, lambda *a, **k: None)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    from scarce.study.executors import execute_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ScarceError, match=r"pip install 'scarce\[ray\]'"):
        execute_ray({}, None, 1, 0, lambda *a, **k: None)


def test_progress_shows_done_total_current_cell_and_eta(tmp_path, capsys):
    from scarce.study.runner import Progress

    progress = Progress(total=4, done=1)
    progress.start(("plain", 8, 0))
    progress.advance(("plain", 8, 0), {"status": "done", "metrics": {"test_auc": 0.8123}})
    err = capsys.readouterr().err
    assert "[2/4] running plain n=8 seed=0" in err
    assert "[2/4] plain n=8 seed=0: AUC 0.812; ETA" in err


@pytest.mark.parametrize("spec", sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))
                         + sorted((Path(__file__).parents[1] / "benchmarks").glob("*.toml")), ids=lambda p: p.name)
def test_every_bundled_spec_parses_with_known_recipes_and_options(spec):
    import tomllib

    from scarce.config import make_config
    from scarce.training.recipes import get_recipe

    raw = tomllib.loads(spec.read_text())
    if "recipes" not in raw:  # a `scarce train --config` file, not a study
        config = make_config(spec)
        assert get_recipe(config.recipe).name == config.recipe
        return
    parsed = parse_spec(raw, where=spec.name)  # unknown recipes, options or fields would raise
    names = [arm.name for arm in parsed.arms]
    assert len(names) == len(set(names)) >= 1


def test_an_unexpected_error_in_one_cell_fails_that_cell_and_the_study_goes_on(tmp_path, monkeypatch):
    """A defect inside a cell (not bad input: that is refused before any cell runs) is recorded on
    the cell, with its kind, and the other cells still run; nothing stays 'running'."""
    import scarce.runs.run
    real_train = scarce.runs.run.train

    def train_or_break(config):
        if config.seed == 1:
            raise RuntimeError("simulated defect")
        return real_train(config)

    monkeypatch.setattr(scarce.runs.run, "train", train_or_break)
    spec = tiny_spec(tmp_path, n="[8]")
    assert main(["study", "run", str(spec), "--out", str(tmp_path / "s")]) == 1
    with sqlite3.connect(tmp_path / "s" / "study.db") as db:
        rows = db.execute("SELECT seed, status, error FROM cells ORDER BY arm, seed").fetchall()
    assert [(seed, status) for seed, status, _ in rows] == [(0, "done"), (1, "failed")] * 2
    assert all(error == "unexpected RuntimeError: simulated defect" for seed, _, error in rows if seed == 1)
    assert (tmp_path / "s" / "report.html").exists()


def test_every_recipe_search_round_is_still_a_valid_study_spec():
    """The rounds in benchmarks/recipe_search/ are how docs/benchmarks.md's verdicts were measured: they must still run."""
    from scarce.study.spec import load_spec

    rounds = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_search").glob("round_*.toml"))
    assert len(rounds) == 17
    for path in rounds:
        spec = load_spec(path)
        assert spec.arms, path.name
