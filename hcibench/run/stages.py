"""Stages: expensive, deterministic pieces of work saved in the run folder and shared.

A stage is identified by its name and a key (the settings it depends on, the dataset, the source
and the seed). Two methods asking for the same stage (ODA and Dual-model-DINO both need the same
DINO feature extractor) get one computation; a resumed run loads it from disk. Every request is
counted, and the counts are kept in ``stages.json`` in the run folder.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hcibench.errors import UsageError
from hcibench.run import accelerator, distributed, storage
from hcibench.run.progress import Progress
from hcibench.run.stage_store import StageStore


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


CONDITIONS = "computed_with"

# Seconds between two saves of a long computation's progress (HCIBENCH_CHECKPOINT_SECONDS).
CHECKPOINT_SECONDS = 600.0
_CHECKPOINT: contextvars.ContextVar = contextvars.ContextVar("stage_checkpoint", default=None)


class StageCheckpoint:
    """Where the stage being computed keeps its progress (``.<id>.partial.pt`` beside the stage
    files), so that a computation killed, crashed or requeued by a cluster goes on from its last
    save instead of starting again. A training loop asks for it with :func:`current_checkpoint`
    and saves at most every ``seconds``; the file goes once the stage's own file is written."""

    def __init__(self, path: Path, seconds: float | None = None):
        self.path = path
        if seconds is None:
            seconds = float(os.environ.get("HCIBENCH_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))
        self.seconds = seconds
        self.saved_at = time.monotonic()

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            return storage.load_torch(self.path)
        except Exception:  # an unreadable checkpoint: the computation starts again
            self.path.unlink(missing_ok=True)
            return None

    def due(self) -> bool:
        return time.monotonic() - self.saved_at >= self.seconds

    def save(self, state: dict) -> None:
        if distributed.is_main():
            storage.save_torch(self.path, state)
        self.saved_at = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def current_checkpoint() -> StageCheckpoint | None:
    """The checkpoint of the stage being computed in this context (None outside a stage, or
    for a stage cache in memory only)."""
    return _CHECKPOINT.get()


def conditions(device: torch.device | None = None) -> dict:
    """What a computation's last digits depend on besides its inputs: the thread count, the
    torch version and, off the CPU, the device (its kind and model)."""
    now = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if device is not None and device.type != "cpu":
        now["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return now


def stamped(value: Any, device: torch.device | None = None) -> Any:
    """A stage result with the conditions it was computed under (dict results only)."""
    if isinstance(value, dict):
        value[CONDITIONS] = conditions(device)
    return value


class StageCache:
    """Stage results with usage counts: on disk (in ``folder/stages``, or in a ``store`` folder
    shared between run folders) or, when ``folder`` is ``None``, in memory only. Counts are kept
    in ``folder/stages.json``."""

    def __init__(
        self,
        folder: Path | None = None,
        keep_in_memory: int = 6,
        store: Path | None = None,
        log=None,
        strict: bool = False,
        device: torch.device | None = None,
    ):
        self.device = device  # where stages are computed (part of their conditions)
        self.folder = Path(folder) if folder else None
        self.memory: OrderedDict[str, Any] = OrderedDict()
        self.keep_in_memory = keep_in_memory
        self.counts: dict[str, dict] = {}
        self.store = None
        self.log = log
        self.strict = strict  # refuse, rather than warn about, a reuse under other conditions
        self.warned: set[str] = set()
        if self.folder:
            self.store = StageStore(Path(store) if store else self.folder / "stages", log=log)
            self.counts = self._read_counts()

    def _read_counts(self) -> dict[str, dict]:
        path = self.folder / "stages.json"
        if not path.exists():
            return {}
        try:
            return storage.read_json(path)
        except ValueError:  # a damaged index: the counts start again, the stages remain
            if self.log:
                self.log("stages.json does not parse; stage counts start again")
            return {}

    def recorded_counts(self) -> dict[str, dict]:
        """Every process's counts as ``stages.json`` holds them now, not only as this process
        last read them: what the manifest shows when several processes share the folder."""
        if not self.folder or not distributed.is_main():
            return self.counts
        self.counts = self._read_counts()
        return self.counts

    def _count(self, stage_id: str, name: str, key: dict, computed: bool) -> None:
        """Add one use to ``stages.json``: read, add and write under the folder's claim, so
        that processes sharing the folder lose no count."""

        def add(counts: dict) -> None:
            entry = counts.setdefault(stage_id, {"name": name, "key": key, "computed": 0, "reused": 0})
            entry["computed" if computed else "reused"] += 1

        if not self.folder or not distributed.is_main():
            add(self.counts)
            return
        with StageStore(self.folder).exclusive("stage-counts"):
            self.counts = self._read_counts()
            add(self.counts)
            storage.write_json(self.folder / "stages.json", self.counts)

    def get(self, name: str, key: dict, compute: Callable[[], Any]) -> Any:
        stage_id = f"{name}-{digest(key)}"

        checkpoint = (
            StageCheckpoint(self.store.folder / f".{stage_id}.partial.pt") if self.store is not None else None
        )

        def counted_compute():
            # Seeding from the key makes a stage's result independent of what ran before it.
            seed_everything(int(digest(key), 16) % 2**31)
            token = _CHECKPOINT.set(checkpoint)
            try:
                value = stamped(compute(), self.device)
            finally:
                _CHECKPOINT.reset(token)
            # Counted before the stage's file is written: a process killed in between leaves
            # no file, so the stage is computed again and counted twice, which it was. Counted
            # after, a kill in between would leave a file that no count says was computed.
            self._count(stage_id, name, key, computed=True)
            return value

        if stage_id in self.memory:
            value = self.memory[stage_id]
            self.memory.move_to_end(stage_id)
            computed = False
        elif distributed.active():
            value, computed = self._get_together(stage_id, counted_compute)
        elif self.store is not None:
            value, computed = self.store.get(stage_id, counted_compute)
        else:
            value, computed = counted_compute(), True
        if not computed:
            self._check_conditions(stage_id, value)
            self._count(stage_id, name, key, computed=False)
        elif checkpoint is not None and distributed.is_main():
            checkpoint.remove()  # the stage's file is written: its progress is no longer needed
        self._remember(stage_id, value)
        return value

    def _get_together(self, stage_id: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """A stage under torchrun: every rank computes it together (the computation has
        collectives), or every rank loads it. Rank 0 decides which, holding the stage's claim
        against other processes while the ranks compute, and alone saves the result."""
        value, claim = None, None
        if distributed.is_main() and self.store is not None:
            value = self.store.load(stage_id)
            while value is None and (claim := self.store.try_claim(stage_id)) is None:
                time.sleep(self.store.poll_seconds)  # another process computes it: wait
                value = self.store.load(stage_id)
        if distributed.broadcast_object(value is not None):
            return (value if distributed.is_main() else self.store.load(stage_id)), False
        try:
            if claim is not None:
                claim.__enter__()
            value = compute()
            if claim is not None:
                storage.save_torch(self.store.path(stage_id), value)
        finally:
            if claim is not None:
                claim.__exit__(None, None, None)
        distributed.barrier()  # the file is there before any rank may look for it
        return value, True

    def _check_conditions(self, stage_id: str, value: Any) -> None:
        """Warn once per stage when it was computed under other numeric conditions: results
        are bitwise repeatable only at equal thread counts (and precision, device)."""
        then = value.get(CONDITIONS) if isinstance(value, dict) else None
        now = conditions(self.device)
        if then and then != now and self.strict:
            raise UsageError(
                f"stage {stage_id} was computed with {then}, this process runs with "
                f"{now}; run with the same settings (e.g. --set threads=...) or "
                f"without --strict"
            )
        if then and then != now and stage_id not in self.warned and self.log:
            self.warned.add(stage_id)
            self.log(
                f"stage {stage_id} was computed with {then}, this process runs with {now}: "
                f"what builds on it may differ in the last digits from a run made at once"
            )

    def _remember(self, stage_id: str, value: Any) -> None:
        self.memory[stage_id] = value
        self.memory.move_to_end(stage_id)
        while len(self.memory) > self.keep_in_memory:
            self.memory.popitem(last=False)


@dataclass
class StageSpec:
    """A stage a method will ask for, declared before anything is computed
    (:meth:`hcibench.Method.stages`): its name and settings as :meth:`Context.stage` receives
    them, the stages it builds on, and ``compute()``, which makes it exist in this process
    (loading the stages it builds on, computing what is missing)."""

    name: str
    settings: Any
    compute: Callable[[], Any]
    needs: list[StageSpec] = field(default_factory=list)


@dataclass
class Context:
    """What a method sees of the run: its settings, seed, stage cache and progress reporting,
    and where and in which precision to compute (see :mod:`hcibench.run.accelerator`)."""

    config: dict
    seed: int = 0
    source: str = ""
    dataset: dict = field(default_factory=dict)
    stages: StageCache = field(default_factory=StageCache)
    progress: Progress = field(default_factory=Progress)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # resolved: "fp32" or "bf16"

    def autocast(self):
        """The autocast context of this run's precision on its device."""
        return accelerator.autocast(self.device, self.precision)

    def stage_key(self, settings: Any) -> dict:
        return {"settings": settings, "dataset": self.dataset, "source": self.source, "seed": self.seed}

    def stage_id(self, name: str, settings: Any) -> str:
        """The id (file name) of stage ``name`` with ``settings`` in this context."""
        return f"{name}-{digest(self.stage_key(settings))}"

    def stage(self, name: str, settings: Any, compute: Callable[[], Any]) -> Any:
        """Compute ``name`` once per (settings, dataset, source, seed) and reuse it afterwards."""
        return self.stages.get(name, self.stage_key(settings), compute)

    def track(self, items, total=None, description=""):
        return self.progress.track(items, total, description)

    def log(self, message: str) -> None:
        self.progress.log(message)
