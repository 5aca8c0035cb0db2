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

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import CannotWrite, ScarceError
from ..training.recipes import get_recipe
from .executors import execute_local, execute_ray
from .spec import StudySpec, config_hash, load_spec, parse_spec
from .store import DIVERGED, DONE, FAILED, FINISHED, PENDING, RUNNING, Store


def run_study(spec_path: str | Path, out: str | Path, executor: str = "local", workers: int = 1,
              address: str | None = None, cpus_per_cell: float = 1.0, gpus_per_cell: float = 0.0,
              redo_changed: bool = False, progress: bool = True) -> dict:
    """Run (or resume) a study; write its report at the end. Returns the status counts."""
    from ..artifacts import remove_stale_temporaries, write_npy  # torch: only when a study runs

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
    """The backbone is one timm knows, and every arm's upstream model exists and fits the spec's
    backbone and size (before any cell runs; here, not in parse_spec, so `study status` needs no timm)."""
    from ..models.backbones import check_backbone
    from ..models.upstream import check_source

    try:
        check_backbone(spec.backbone)
    except ScarceError as error:
        raise ScarceError(f"{where}: {error}") from None
    for arm in spec.arms:
        try:
            source = get_recipe(arm.recipe, **arm.options).pretrained or arm.pretrained or spec.pretrained
            check_source(source, spec.backbone, spec.size)
        except ScarceError as error:
            raise ScarceError(f"{where}: recipe '{arm.name}': {error}") from None


def _check_data(spec: StudySpec):
    """Load and check the data once up front: clear errors before any folder or cell is made."""
    from ..data.cache import load_resized
    from ..data.leakage import ensure_no_leakage

    dataset = load_resized(spec.data, spec.data_dir, json.dumps(spec.data_options, sort_keys=True), spec.size)
    ensure_no_leakage(dataset, spec.allow_leakage)
    if any(get_recipe(arm.recipe, **arm.options).model == "radiomics" for arm in spec.arms):
        from ..models.radiomics import split_features

        split_features(dataset)  # once, into the feature cache, instead of in every cell
    labels = dataset.splits["train"].labels
    from ..data.subsets import balanced_subset

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

    from ..artifacts import versions
    from .analysis import analyze
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
