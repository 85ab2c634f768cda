"""A content-addressed folder of stage results that several processes may share.

A stage file is named by its id (``<name>-<hash of its key>``), so two run folders whose stages
have equal keys share one file: a sweep over step-3 settings recomputes only step 3. A stage is
computed by one process at a time: before computing, a process creates ``.<id>.claim`` with
``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+), holding its pid, host and start
time, and refreshes the claim's modification time while it works. Another process asking for the
same stage waits for the file instead of computing it again. A claim is taken over when its
process is gone (same host) or when it has not been refreshed for ``stale_seconds`` (any host),
so a killed process never blocks the folder for good.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hcibench.run import storage

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class Claim:
    """An exclusive claim file, refreshed by a background thread until released."""

    def __init__(self, path: Path):
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self) -> Claim:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class StageStore:
    """Stage files in ``folder`` (``<id>.pt``), each computed once across processes."""

    def __init__(
        self,
        folder: Path,
        stale_seconds: float = STALE_SECONDS,
        poll_seconds: float = 0.5,
        log: Callable[[str], None] | None = None,
    ):
        self.folder = Path(folder)
        self.stale_seconds = stale_seconds
        self.poll_seconds = poll_seconds
        self.log = log or (lambda message: None)

    def path(self, stage_id: str) -> Path:
        return self.folder / f"{stage_id}.pt"

    def _claim_path(self, stage_id: str) -> Path:
        return self.folder / f".{stage_id}.claim"

    def load(self, stage_id: str) -> Any | None:
        """The stored result, or None when there is none; a file that cannot be read (truncated
        by a crash of another tool, a full disk) is removed so that the stage is recomputed."""
        path = self.path(stage_id)
        if not path.exists():
            return None
        try:
            return storage.load_torch(path)
        except Exception as error:  # any unreadable file: the stage is computed again
            self.log(f"stage {stage_id}: its file cannot be read ({type(error).__name__}); recomputing it")
            path.unlink(missing_ok=True)
            return None

    def try_claim(self, stage_id: str) -> Claim | None:
        """The claim on ``stage_id``, or None when a live process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._claim_path(stage_id)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.claim_is_stale(path):
                    return None
                self.log(f"stage {stage_id}: taking over the claim of a process that is gone")
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            return Claim(path)
        return None

    def claim_is_stale(self, path: Path) -> bool:
        try:
            holder = json.loads(path.read_text() or "{}")
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            holder, age = {}, time.time() - path.stat().st_mtime
        if holder.get("host") == socket.gethostname() and "pid" in holder:
            return not process_alive(int(holder["pid"]))
        return age > self.stale_seconds

    @contextlib.contextmanager
    def exclusive(self, name: str):
        """Hold the claim ``name`` for the duration of a ``with`` block, waiting for it."""
        while (claim := self.try_claim(name)) is None:
            time.sleep(self.poll_seconds)
        with claim:
            yield

    def get(self, stage_id: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(result, computed here): the stored result, or ``compute()`` under the stage's claim,
        waiting while another process computes it."""
        waited = False
        while True:
            value = self.load(stage_id)
            if value is not None:
                return value, False
            claim = self.try_claim(stage_id)
            if claim is not None:
                with claim:
                    value = self.load(stage_id)  # finished between our look and our claim
                    if value is not None:
                        return value, False
                    value = compute()
                    storage.save_torch(self.path(stage_id), value)
                return value, True
            if not waited:
                self.log(f"stage {stage_id} is being computed by another process; waiting")
                waited = True
            time.sleep(self.poll_seconds)
