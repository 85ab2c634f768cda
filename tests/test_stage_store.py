"""A stage folder shared by run folders and processes: each stage is computed once."""

import json
import multiprocessing
import os
import time

from conftest import tiny_args

from hcibench.run.stage_store import StageStore


def _compute_slowly(folder, marks, ready):
    ready.wait()
    store = StageStore(folder, poll_seconds=0.05)

    def compute():
        with open(marks, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return {"value": 42}

    value, _ = store.get("fe-dino-abc", compute)
    assert value == {"value": 42}


def test_two_processes_asking_at_the_same_moment_compute_the_stage_once(tmp_path):
    marks = tmp_path / "computed.txt"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    workers = [
        context.Process(target=_compute_slowly, args=(tmp_path / "cache", marks, ready)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    ready.set()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(marks.read_text().split()) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fe-dino-abc.pt"]


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    store = StageStore(tmp_path)
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / ".s-1.claim").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    value, computed = store.get("s-1", lambda: 7)
    assert (value, computed) == (7, True)
    assert not (tmp_path / ".s-1.claim").exists()


def test_an_unreadable_stage_file_is_recomputed(tmp_path):
    said = []
    store = StageStore(tmp_path, log=said.append)
    store.get("s-2", lambda: {"weights": list(range(100))})
    path = tmp_path / "s-2.pt"
    path.write_bytes(path.read_bytes()[:40])
    value, computed = store.get("s-2", lambda: {"weights": [1]})
    assert computed and value == {"weights": [1]}
    assert any("cannot be read" in line for line in said)


def test_two_run_folders_share_their_stages_through_the_cache(cli, tmp_path):
    cache = tmp_path / "cache"
    args = [
        "run",
        "--methods",
        "supervised",
        "--sources",
        "S8",
        "--targets",
        "S8",
        "--cache",
        str(cache),
        *tiny_args(),
    ]
    for name in ("a", "b"):
        result = cli(*args, "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
    counts = [json.loads((tmp_path / n / "stages.json").read_text()) for n in ("a", "b")]
    assert [s["computed"] for s in counts[0].values()] == [1]
    assert [s["computed"] for s in counts[1].values()] == [0]
    assert not (tmp_path / "a" / "stages").exists()
    assert len(list(cache.glob("*.pt"))) == 1
