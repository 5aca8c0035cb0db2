"""Study run: recipes × training-set sizes × seeds, durable in SQLite, resumable, local or on Ray.

A study is a TOML spec. Each cell (arm, n, seed) is one ``scarce.train`` run in its own folder
``DIR/cells/<arm>/n<N>-s<seed>``. ``DIR/study.db`` holds a row per cell; a row becomes ``done``
only after the cell's files are written (``metrics.json`` last), in one SQLite transaction. A
killed study is resumed by running the same command: finished cells are kept, a cell whose
``metrics.json`` exists with the same configuration is recorded without training again, and
the rest run. Changing the spec in a way that changes a finished cell is refused (or, with
``--redo-changed``, those cells are started anew).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .artifacts import remove_stale_temporaries, write_npy
from .config import TrainConfig, check_fields, read_toml
from .errors import CannotWrite, ScarceError
from .models import check_backbone
from .pretrain import absolute_source, check_source, source_identity
from .recipes import get_recipe, is_number

DONE, PENDING, RUNNING, DIVERGED, FAILED = "done", "pending", "running", "diverged", "failed"
FINISHED = (DONE, DIVERGED)  # cells never run again


@dataclass(frozen=True)
class Arm:
    """One recipe of the study, with its own name and overrides."""

    name: str
    recipe: str
    options: dict = field(default_factory=dict)
    pretrained: str | None = None


@dataclass
class StudySpec:
    data: str
    arms: list[Arm]
    n: list[int] = field(default_factory=lambda: [50, 100, 200, 500, 1000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    name: str = "study"
    data_dir: str | None = None
    data_options: dict = field(default_factory=dict)
    allow_leakage: bool = False
    size: int = 64
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    epochs: int = 10
    batch_size: int = 16
    tta: int = 4
    metric: str = "test_auc"
    target_auc: float | None = None  # the AUC the user needs: the study estimates the N for it
    user_n: int | None = None  # the user's own N: the recommendation is for it
    threads_per_cell: int = 1

    def cells(self) -> list[tuple[str, int, int]]:
        return [(arm.name, n, seed) for arm in self.arms for n in self.n for seed in self.seeds]

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def cell_config(self, arm_name: str, n: int, seed: int, out: Path) -> TrainConfig:
        arm = self.arm(arm_name)
        return TrainConfig(
            data=self.data, out=str(cell_dir(out, arm_name, n, seed)), data_dir=self.data_dir,
            data_options=dict(self.data_options), allow_leakage=self.allow_leakage, n=n, seed=seed,
            size=self.size, epochs=self.epochs, batch_size=self.batch_size, backbone=self.backbone,
            pretrained=arm.pretrained or self.pretrained, recipe=arm.recipe, recipe_options=dict(arm.options),
            tta=self.tta, threads=self.threads_per_cell, overwrite=True, progress=False)

    def to_dict(self) -> dict:
        return asdict(self)


SPEC_FIELDS = {name for name in StudySpec.__dataclass_fields__} - {"arms"} | {"recipes"}


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study spec (TOML, data only); a relative data path is looked up next to
    the spec first, as for ``scarce train --config``."""
    raw = read_toml(path, "Study spec")
    data = raw.get("data")
    if isinstance(data, str) and data and not Path(data).is_absolute() and (Path(path).parent / data).exists():
        raw["data"] = str(Path(path).parent / data)
    return parse_spec(raw, str(path))


def parse_spec(raw: dict, where: str = "the study spec") -> StudySpec:
    check_fields(raw, SPEC_FIELDS, where)
    if "data" not in raw:
        raise ScarceError(f"{where}: no 'data'; name the dataset (file, folder or table) to study.")
    if not raw.get("recipes"):
        raise ScarceError(f"{where}: no [[recipes]]; list at least one recipe to compare.")
    arms = []
    if not isinstance(raw["recipes"], list):
        raise ScarceError(f"{where}: 'recipes' must be a list of [[recipes]] tables, not {raw['recipes']!r}.")
    for index, entry in enumerate(raw.pop("recipes")):
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict):
            raise ScarceError(f"{where}: recipes[{index}] must be a table or a recipe name, not {entry!r}.")
        if not isinstance(entry.get("options", {}), dict):
            raise ScarceError(f"{where}: recipes[{index}].options must be a table such as {{ lr = 3e-4 }}, "
                              f"not {entry['options']!r}.")
        unknown = set(entry) - {"name", "recipe", "options", "pretrained"}
        if unknown:
            raise ScarceError(f"{where}: recipes[{index}] has unknown field(s) {', '.join(sorted(unknown))}; "
                              f"use name, recipe, options, pretrained.")
        recipe = entry.get("recipe") or entry.get("name")
        if not recipe:
            raise ScarceError(f"{where}: recipes[{index}] needs 'recipe' (a recipe name).")
        get_recipe(recipe, **entry.get("options", {}))  # unknown names or options fail here
        pretrained = entry.get("pretrained")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ScarceError(f"{where}: recipes[{index}].pretrained must be imagenet, scratch or a path, "
                              f"not {pretrained!r}.")
        # An upstream model's relative path means the folder `scarce study run` is started from.
        arms.append(Arm(entry.get("name", recipe), recipe, dict(entry.get("options", {})),
                        absolute_source(pretrained)))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ScarceError(f"{where}: two recipes are both named '{_first_repeat(names)}'; give each a distinct name.")
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ScarceError(f"{where}: recipe name '{name}' cannot be a folder name; choose another.")
    spec = StudySpec(arms=arms, **raw)
    if not isinstance(spec.data_options, dict):
        raise ScarceError(f"{where}: 'data_options' must be a table such as {{ task = \"binary\" }}, "
                          f"not {spec.data_options!r}.")
    if not isinstance(spec.pretrained, str):
        raise ScarceError(f"{where}: 'pretrained' must be imagenet, scratch or a path, not {spec.pretrained!r}.")
    spec.pretrained = absolute_source(spec.pretrained)
    for key in ("n", "seeds"):
        values = getattr(spec, key)
        if not isinstance(values, list) or not values or not all(isinstance(v, int) for v in values):
            raise ScarceError(f"{where}: '{key}' must be a non-empty list of whole numbers, not {values!r}.")
        if len(set(values)) != len(values):
            raise ScarceError(f"{where}: '{key}' lists {_first_repeat(values)} twice.")
    if any(n <= 0 for n in spec.n):
        raise ScarceError(f"{where}: every n must be positive; got {spec.n}.")
    for key in ("size", "epochs", "batch_size", "threads_per_cell"):
        value = getattr(spec, key)
        if not isinstance(value, int) or value <= 0:
            raise ScarceError(f"{where}: '{key}' must be a positive whole number, not {value!r}.")
    if spec.metric != "test_auc":
        raise ScarceError(f"{where}: metric '{spec.metric}' is not supported yet; studies compare test_auc.")
    if spec.target_auc is not None and not (is_number(spec.target_auc) and 0.5 < spec.target_auc < 1):
        raise ScarceError(f"{where}: target_auc must lie between 0.5 and 1, not {spec.target_auc!r}.")
    if spec.user_n is not None and not (is_number(spec.user_n) and spec.user_n == int(spec.user_n) > 0):
        raise ScarceError(f"{where}: user_n must be a positive whole number (your training-set size), "
                          f"not {spec.user_n!r}.")
    # Every setting a cell gets is checked now, as `scarce train` checks it, not when the cell runs.
    try:
        for arm in spec.arms:
            for seed in spec.seeds:
                spec.cell_config(arm.name, spec.n[0], seed, Path(".")).validate()
        check_backbone(spec.backbone)
    except ScarceError as error:
        raise ScarceError(f"{where}: {error}") from None
    spec.n, spec.seeds = sorted(spec.n), sorted(spec.seeds)
    return spec


def _first_repeat(values):
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)


def cell_dir(out: Path, arm: str, n: int, seed: int) -> Path:
    return Path(out) / "cells" / arm / f"n{n}-s{seed}"


def config_hash(config: TrainConfig) -> str:
    """What decides a cell's numbers: every setting except where it is written and how it reports.

    Settings at their default value are left out (of the run's settings and of the resolved
    recipe), so a later scarce that adds an option, at a default that changes nothing, still
    recognises the finished cells; a recipe's description is text and is left out too.
    """
    settings = {k: v for k, v in _changed_fields(config).items()
                if k not in ("out", "overwrite", "progress", "recipe_options")}  # options: in the recipe below
    recipe = get_recipe(config.recipe, **config.recipe_options)
    settings["recipe_resolved"] = {k: v for k, v in _changed_fields(recipe).items() if k != "description"}
    settings["pretrained"] = source_identity(config.pretrained)  # an upstream model by content, not path
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _changed_fields(instance) -> dict:
    """A dataclass instance's fields that differ from the field's default (fields without one: all)."""
    changed = {}
    for spec_field in fields(instance):
        default = (spec_field.default_factory() if spec_field.default_factory is not MISSING
                   else spec_field.default)
        value = getattr(instance, spec_field.name)
        if default is MISSING or value != default:
            changed[spec_field.name] = value
    return changed


# ----------------------------------------------------------------------------- the store

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    arm TEXT NOT NULL, n INTEGER NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, config_hash TEXT NOT NULL, artefact_dir TEXT NOT NULL,
    test_auc REAL, metrics TEXT, data_fingerprint TEXT, versions TEXT, error TEXT,
    seconds REAL, attempts INTEGER NOT NULL DEFAULT 0, executor TEXT, updated_at REAL,
    PRIMARY KEY (arm, n, seed));
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    """The study's SQLite database: one row per cell, every change one transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ScarceError(f"{self.path} is not a usable study database ({error}); "
                              f"move it away or choose another --out.") from None

    def close(self) -> None:
        self.db.close()

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM study WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)", (key, value))

    def sync_cells(self, wanted: dict[tuple[str, int, int], tuple[str, str]], redo_changed: bool) -> list:
        """Add missing cells; find finished cells whose configuration changed (refuse or reset)."""
        existing = {(a, n, s): (status, h) for a, n, s, status, h in
                    self.db.execute("SELECT arm, n, seed, status, config_hash FROM cells")}
        changed = [key for key, (status, old) in existing.items()
                   if key in wanted and status in FINISHED and old != wanted[key][0]]
        if changed and not redo_changed:
            listed = ", ".join(f"{a} n={n} seed={s}" for a, n, s in changed[:3])
            raise ScarceError(f"The spec changes {len(changed)} finished cell(s) ({listed}{', …' if len(changed) > 3 else ''}); "
                              f"restore the spec, use another --out, or pass --redo-changed to run them anew.")
        with self.db:
            for key, (digest, folder) in wanted.items():
                if key not in existing:
                    self.db.execute("INSERT INTO cells (arm, n, seed, status, config_hash, artefact_dir, updated_at)"
                                    " VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, PENDING, digest, folder, time.time()))
                elif key in changed or existing[key][1] != digest:
                    self.db.execute("UPDATE cells SET status = ?, config_hash = ?, test_auc = NULL, metrics = NULL,"
                                    " error = NULL, updated_at = ? WHERE arm = ? AND n = ? AND seed = ?",
                                    (PENDING, digest, time.time(), *key))
        return changed

    def mark(self, key: tuple[str, int, int], status: str, executor: str | None = None, **values) -> None:
        columns = {"status": status, "updated_at": time.time(), **values}
        if executor:
            columns["executor"] = executor
        assignments = ", ".join(f"{name} = ?" for name in columns)
        attempts = ", attempts = attempts + 1" if status == RUNNING else ""
        with self.db:
            self.db.execute(f"UPDATE cells SET {assignments}{attempts} WHERE arm = ? AND n = ? AND seed = ?",
                            (*columns.values(), *key))

    def rows(self) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM cells ORDER BY arm, n, seed")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM cells GROUP BY status").fetchall())


# ----------------------------------------------------------------------------- running one cell

def run_cell(config_dict: dict) -> dict:
    """Train one cell (in whatever process or Ray worker runs it); return its outcome as plain data.

    If the cell's folder already holds a finished run with the same configuration (the process
    was killed after writing it but before the database knew), that run is reported as is.
    """
    from .artifacts import versions
    from .run import train
    from .train import TrainingDiverged

    config = TrainConfig(**config_dict)
    digest = config_hash(config)
    out = Path(config.out)
    finished = _finished_run(out, digest)
    if finished is not None:
        return finished
    started = time.perf_counter()
    try:
        result = train(config)
    except TrainingDiverged as error:
        return {"status": DIVERGED, "error": str(error), "seconds": time.perf_counter() - started}
    except CannotWrite:
        raise  # disk full or the like: stop the study (finished cells stay), not one failed cell
    except ScarceError as error:
        return {"status": FAILED, "error": str(error), "seconds": time.perf_counter() - started}
    except Exception as error:  # a defect, not bad input: record it on the cell and go on with the others
        return {"status": FAILED, "error": f"unexpected {type(error).__name__}: {error}",
                "seconds": time.perf_counter() - started}
    run = json.loads((out / "run.json").read_text())
    _write_hash(out, digest)
    return {"status": DONE, "metrics": result.metrics, "seconds": time.perf_counter() - started,
            "data_fingerprint": run["data"]["fingerprint"], "versions": versions()}


def _write_hash(out: Path, digest: str) -> None:
    from .artifacts import write_text

    write_text(out / "config_hash.txt", digest + "\n")


def _finished_run(out: Path, digest: str) -> dict | None:
    try:
        if (out / "config_hash.txt").read_text().strip() != digest:
            return None
        metrics = json.loads((out / "metrics.json").read_text())
        run = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return {"status": DONE, "metrics": metrics, "seconds": metrics.get("train_seconds", 0.0),
            "data_fingerprint": run["data"]["fingerprint"], "versions": run.get("versions")}


# ----------------------------------------------------------------------------- executors

def _local_worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def execute_local(configs: dict, workers: int, on_result, on_start=None) -> None:
    """Run cells in this process (workers = 1) or in a pool of worker processes."""
    if workers <= 1:
        for key, config in configs.items():
            if on_start is not None:
                on_start(key)
            on_result(key, run_cell(config))
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_local_worker_init,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(run_cell, config): key for key, config in configs.items()}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(pending.pop(future), future.result())


def execute_ray(configs: dict, address: str | None, cpus_per_cell: float, gpus_per_cell: float, on_result) -> None:
    """Run cells as Ray tasks; results come back here and go through the same store."""
    try:
        import ray
    except ImportError:
        raise ScarceError("The ray executor needs Ray; install it with: pip install 'scarce[ray]'.") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            # A new local cluster listens on loopback only; an address joins an existing cluster.
            local = {} if address else {"_node_ip_address": "127.0.0.1"}
            ray.init(address=address, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, ignore_reinit_error=True, **local)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ScarceError(f"Cannot reach a Ray cluster at {address or 'a new local cluster'} ({error}); "
                              f"start one with `ray start --head` or leave out --address.") from None
    remote = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0)(run_cell)
    try:
        pending = {remote.remote(config): key for key, config in configs.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for reference in done:
                on_result(pending.pop(reference), ray.get(reference))
    finally:
        if started_here:
            ray.shutdown()


# ----------------------------------------------------------------------------- the command

def run_study(spec_path: str | Path, out: str | Path, executor: str = "local", workers: int = 1,
              address: str | None = None, cpus_per_cell: float = 1.0, gpus_per_cell: float = 0.0,
              redo_changed: bool = False, progress: bool = True) -> dict:
    """Run (or resume) a study; write its report at the end. Returns the status counts."""
    if executor not in ("local", "ray"):
        raise ScarceError(f"Unknown executor '{executor}'; use local or ray.")
    spec = load_spec(spec_path)
    _check_sources(spec, str(spec_path))
    dataset = _check_data(spec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScarceError(f"Output path {out} is a file; give a folder for --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CannotWrite(f"Cannot create study folder {out} ({error.strerror}); choose a writable --out.") from None
    with StudyLock(out):
        remove_stale_temporaries(out)  # half-written files of a killed run; the finished ones stay
        store = Store(out / "study.db")
        try:
            configs = {key: spec.cell_config(*key, out) for key in spec.cells()}
            wanted = {key: (config_hash(c), str(Path(c.out).relative_to(out))) for key, c in configs.items()}
            store.sync_cells(wanted, redo_changed)
            store.put("spec", json.dumps(spec.to_dict(), default=str))
            if not (out / "test_labels.npy").exists():
                write_npy(out / "test_labels.npy", dataset.splits["test"].labels)
            todo = {key: asdict(configs[key]) for key in spec.cells()
                    if _status(store, key) not in FINISHED}
            progress_bar = Progress(len(configs), len(configs) - len(todo), enabled=progress)

            def on_result(key, outcome):
                metrics = outcome.get("metrics")
                store.mark(key, outcome["status"], executor,
                           test_auc=None if metrics is None else metrics.get("test_auc"),
                           metrics=None if metrics is None else json.dumps(metrics),
                           data_fingerprint=outcome.get("data_fingerprint"),
                           versions=json.dumps(outcome.get("versions")), error=outcome.get("error"),
                           seconds=outcome.get("seconds"))
                progress_bar.advance(key, outcome)

            for key in todo:
                store.mark(key, RUNNING, executor)
            if executor == "local":
                execute_local(todo, workers, on_result, progress_bar.start)
            else:
                execute_ray(todo, address, cpus_per_cell, gpus_per_cell, on_result)
            progress_bar.close()
            write_study_report(out, store, spec)
            return store.counts()
        finally:
            store.close()


def _status(store: Store, key) -> str:
    return store.db.execute("SELECT status FROM cells WHERE arm = ? AND n = ? AND seed = ?", key).fetchone()[0]


def _check_sources(spec: StudySpec, where: str) -> None:
    """Every arm's upstream model exists and fits the spec's backbone and size (before any cell runs)."""
    for arm in spec.arms:
        try:
            source = get_recipe(arm.recipe, **arm.options).pretrained or arm.pretrained or spec.pretrained
            check_source(source, spec.backbone, spec.size)
        except ScarceError as error:
            raise ScarceError(f"{where}: recipe '{arm.name}': {error}") from None


def _check_data(spec: StudySpec):
    """Load and check the data once up front: clear errors before any folder or cell is made."""
    from .run import load_resized
    from .splits import ensure_no_leakage

    dataset = load_resized(spec.data, spec.data_dir, json.dumps(spec.data_options, sort_keys=True), spec.size)
    ensure_no_leakage(dataset, spec.allow_leakage)
    if any(get_recipe(arm.recipe, **arm.options).model == "radiomics" for arm in spec.arms):
        from .radiomics import split_features

        split_features(dataset)  # once, into the feature cache, instead of in every cell
    labels = dataset.splits["train"].labels
    from .data import balanced_subset

    for n in spec.n:  # impossible N fails now, not in the middle of the study
        balanced_subset(labels, n, spec.seeds[0], dataset.classes)
    return dataset


class Progress:
    """Cells done / total, the last cell, and an ETA from the mean time of the cells run now."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, done, enabled
        self.started, self.finished_now = time.perf_counter(), 0

    def start(self, key) -> None:
        if self.enabled:
            arm, n, seed = key
            print(f"[{self.done + 1}/{self.total}] running {arm} n={n} seed={seed} …", file=sys.stderr, flush=True)

    def advance(self, key, outcome) -> None:
        self.done += 1
        self.finished_now += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        remaining = (self.total - self.done) * elapsed / self.finished_now
        arm, n, seed = key
        auc = (outcome.get("metrics") or {}).get("test_auc")
        result = f"AUC {auc:.3f}" if auc is not None else outcome["status"]
        print(f"[{self.done}/{self.total}] {arm} n={n} seed={seed}: {result}; "
              f"ETA {_duration(remaining)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(f"study finished: {self.done}/{self.total} cells in {_duration(time.perf_counter() - self.started)}",
                  file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class StudyLock:
    """One study process per folder: a lock file holding the owner's pid; a dead owner's lock is stale."""

    def __init__(self, out: Path):
        self.path = Path(out) / "study.lock"

    def __enter__(self):
        while True:
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _read_pid(self.path)
                if owner is not None and _alive(owner):
                    raise ScarceError(f"Another scarce study (pid {owner}) is running in {self.path.parent}; "
                                      f"wait for it to finish or stop it.") from None
                self.path.unlink(missing_ok=True)  # stale: its owner was killed
                continue
            os.write(handle, str(os.getpid()).encode())
            os.close(handle)
            return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- results and report

def study_results(store: Store, spec: StudySpec) -> list[dict]:
    """One dict per cell of the spec: recipe (the arm's name), n, seed, status, test_auc, metrics."""
    results, cells = [], set(spec.cells())
    for row in store.rows():
        if (row["arm"], row["n"], row["seed"]) not in cells:
            continue  # a cell of an earlier spec: kept in the database, left out of the report
        metrics = json.loads(row["metrics"]) if row["metrics"] else {}
        result = {"recipe": row["arm"], "n": row["n"], "seed": row["seed"], "status": row["status"],
                  "test_auc": row["test_auc"]}
        for key in ("test_auc_ci", "test_accuracy", "best_epoch", "train_seconds"):
            if key in metrics:
                result[key] = metrics[key]
        result["seconds"] = row["seconds"]
        result["error"] = row["error"]
        result["artefact_dir"] = row["artefact_dir"]
        results.append(result)
    return results


def write_study_report(out: Path, store: Store, spec: StudySpec) -> dict:
    """Analyse the finished cells and write report.html, results.csv and summary.md."""
    import numpy as np

    from .analysis import analyze
    from .artifacts import versions
    from .report import write_report

    results = study_results(store, spec)
    labels = None
    if (out / "test_labels.npy").exists():
        labels = np.load(out / "test_labels.npy", allow_pickle=False)
        for result in results:
            probs = out / result["artefact_dir"] / "test_probabilities.npy"
            if result["status"] == DONE and probs.exists():
                result["probs"] = np.load(probs, allow_pickle=False)
    analysis = analyze(results, labels=labels, target=spec.target_auc, user_n=spec.user_n)
    for result in results:
        result.pop("probs", None)
    return write_report(out, spec.to_dict(), results, analysis, versions())


def open_study(out: str | Path) -> tuple[Store, StudySpec]:
    out = Path(out)
    if not (out / "study.db").exists():
        raise ScarceError(f"{out} holds no study (no study.db); run `scarce study run SPEC --out {out}` first.")
    store = Store(out / "study.db")
    raw = store.get("spec")
    spec_dict = json.loads(raw)
    spec_dict["recipes"] = [{k: v for k, v in arm.items() if v is not None} for arm in spec_dict.pop("arms")]
    return store, parse_spec(spec_dict, str(out / "study.db"))


def study_status(out: str | Path) -> str:
    store, spec = open_study(out)
    try:
        rows = store.rows()
        counts = store.counts()
        lines = [f"study {spec.name}: {len(rows)} cells — " +
                 ", ".join(f"{counts.get(s, 0)} {s}" for s in (DONE, PENDING, RUNNING, DIVERGED, FAILED) if counts.get(s))]
        for arm in spec.arms:
            done = [r for r in rows if r["arm"] == arm.name and r["status"] == DONE]
            lines.append(f"  {arm.name}: {len(done)}/{len(spec.n) * len(spec.seeds)} done")
        if counts.get(RUNNING) and not (Path(out) / "study.lock").exists():
            lines.append("  cells marked running belong to a stopped run; run the same command again to resume")
        return "\n".join(lines)
    finally:
        store.close()


def rebuild_report(out: str | Path) -> dict:
    store, spec = open_study(out)
    try:
        return write_study_report(Path(out), store, spec)
    finally:
        store.close()
