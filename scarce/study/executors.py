"""Where cells run: in this process, a local process pool, or Ray."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import TrainConfig
from ..errors import CannotWrite, ScarceError
from .spec import config_hash
from .store import DIVERGED, DONE, FAILED


def run_cell(config_dict: dict) -> dict:
    """Train one cell (in whatever process or Ray worker runs it); return its outcome as plain data.

    If the cell's folder already holds a finished run with the same configuration (the process
    was killed after writing it but before the database knew), that run is reported as is.
    """
    from ..artifacts import versions
    from ..runs.run import train
    from ..training.history import TrainingDiverged

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
    from ..artifacts import write_text

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
