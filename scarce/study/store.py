"""The study's SQLite store: one row per cell, every change one transaction."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..errors import ScarceError

DONE, PENDING, RUNNING, DIVERGED, FAILED = "done", "pending", "running", "diverged", "failed"
FINISHED = (DONE, DIVERGED)  # cells never run again


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
