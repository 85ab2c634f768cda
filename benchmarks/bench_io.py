"""Image reading: decode + pre-processing throughput of the file datasets, and the memory they
take while iterating a dataset too large to be worth holding.

Run: ``pytest benchmarks/bench_io.py --benchmark-only -s``. Reports

* images/s reading 64×64 3-channel images in batches of 64 (``Domain.batches``, as training
  does): 16-bit multi-page TIFF and 8-bit PNG strips (3 tiles side by side), without
  pre-processing and with percentile clipping plus per-plate normalisation, on one thread and on
  the decoding thread pool (``dataset.workers``);
* the peak resident memory above the start while iterating 20,000 such TIFFs written to a
  temporary folder (about 0.5 GB on disk, 0.98 GB as float32 tensors), and its ratio to the
  dataset's size as tensors: the store reads lazily, so the ratio stays far below 1.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from hcibench_plugins.datasets.files.imagestore import default_workers
from hcibench_plugins.datasets.folder import FolderDataset

SIZE = 64
CHANNELS = 3
BATCH = 64
THROUGHPUT_IMAGES = 512
MEMORY_IMAGES = 20_000
DISTINCT = 64  # distinct images written round-robin (the content does not matter for memory)


def write_dataset(root, count: int, kind: str) -> None:
    """``count`` images in ``root`` with an index.csv: 16-bit TIFF or 8-bit PNG strips, 8 plates."""
    rng = np.random.default_rng(0)
    payloads = []
    for i in range(DISTINCT):
        if kind == "tiff":
            array = rng.integers(0, 65535, (CHANNELS, SIZE, SIZE), dtype=np.uint16)
            path = root / f"template{i}.tif"
            tifffile.imwrite(path, array, photometric="minisblack")
        else:
            array = rng.integers(0, 255, (SIZE, SIZE * CHANNELS), dtype=np.uint8)
            path = root / f"template{i}.png"
            Image.fromarray(array).save(path)
        payloads.append(path.read_bytes())
        path.unlink()
    suffix = "tif" if kind == "tiff" else "png"
    (root / "images").mkdir()
    paths = []
    for i in range(count):
        relative = f"images/{i:06d}.{suffix}"
        (root / relative).write_bytes(payloads[i % DISTINCT])
        paths.append(relative)
    plates = [f"P{i % 8}" for i in range(count)]
    pd.DataFrame(
        {
            "path": paths,
            "source": "A",
            "batch": [f"B{int(p[1:]) % 2}" for p in plates],
            "plate": plates,
            "well": "A01",
            "compound": np.where(np.arange(count) % 4 == 0, "DMSO", "c1"),
            "label": "x",
        }
    ).to_csv(root / "index.csv", index=False)


def dataset(root, kind: str, workers: int, preprocess: bool) -> FolderDataset:
    options = {**FolderDataset.default_settings("quick"), "workers": workers}
    if kind == "png":
        options["strip_channels"] = CHANNELS
    if preprocess:
        options.update(clip=[0.1, 99.9], normalise="dmso")
    return FolderDataset(str(root), **options)


def iterate(domain) -> int:
    seen = 0
    for images, _, _ in domain.batches(BATCH):
        seen += len(images)
    return seen


@pytest.fixture(scope="module", params=["tiff", "png"])
def small(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"io-{request.param}")
    write_dataset(root, THROUGHPUT_IMAGES, request.param)
    return request.param, root


@pytest.mark.parametrize("workers", [1, max(2, default_workers())], ids=["1-thread", "pool"])
@pytest.mark.parametrize("preprocess", [False, True], ids=["decode", "clip+plate-norm"])
def test_read_throughput(benchmark, small, workers, preprocess):
    kind, root = small
    domain = dataset(root, kind, workers, preprocess).domain("A")
    iterate(domain)  # warm the page cache and the per-plate statistics
    seen = benchmark.pedantic(iterate, args=(domain,), rounds=3, warmup_rounds=0)
    rate = seen / benchmark.stats.stats.median
    threads = domain.images.workers
    benchmark.extra_info.update(
        {"images_per_s": rate, "format": kind, "threads": threads, "preprocess": preprocess}
    )
    print(
        f"\n{kind} {SIZE}×{SIZE}×{CHANNELS} ({'16-bit TIFF' if kind == 'tiff' else '8-bit PNG strip'}"
        f", {'clip + per-plate DMSO normalisation' if preprocess else 'decode only'}, "
        f"{threads} thread(s)): {rate:.0f} images/s"
    )


class PeakRss:
    """The resident set size sampled every few milliseconds on a thread (Linux /proc)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = self.start = self.current()
        self.running = False

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.current())


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_while_iterating_20k_images(benchmark, tmp_path):
    write_dataset(tmp_path, MEMORY_IMAGES, "tiff")
    on_disk = sum(f.stat().st_size for f in (tmp_path / "images").iterdir())
    domain = dataset(tmp_path, "tiff", 0, False).domain("A")  # workers=0: the default
    as_tensors = MEMORY_IMAGES * CHANNELS * SIZE * SIZE * 4
    peaks = []

    absolute = []

    def measured():
        with PeakRss() as rss:
            seen = iterate(domain)
        peaks.append(rss.peak - rss.start)
        absolute.append(rss.peak)
        return seen

    started = time.perf_counter()
    seen = benchmark.pedantic(measured, rounds=1, warmup_rounds=0)
    seconds = time.perf_counter() - started
    assert seen == MEMORY_IMAGES
    peak = max(peaks)
    ratio = peak / as_tensors
    benchmark.extra_info.update(
        {
            "images": seen,
            "dataset_mib": as_tensors / 2**20,
            "on_disk_mib": on_disk / 2**20,
            "peak_rss_mib": peak / 2**20,
            "process_peak_rss_mib": max(absolute) / 2**20,
            "peak_over_dataset": ratio,
            "images_per_s": seen / seconds,
        }
    )
    print(
        f"\niterating {seen} TIFFs ({as_tensors / 2**20:.0f} MiB as float32 tensors, "
        f"{on_disk / 2**20:.0f} MiB on disk) in batches of {BATCH}: peak RSS +"
        f"{peak / 2**20:.1f} MiB above the start = {ratio:.4f} of the dataset (the whole "
        f"process, Python and torch included: {max(absolute) / 2**20:.0f} MiB); "
        f"{seen / seconds:.0f} images/s"
    )
    assert ratio < 0.1
