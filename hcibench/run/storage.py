"""Atomic writes: a file either holds its complete new content or does not change."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from hcibench.errors import UsageError

TEMP_SUFFIX = ".tmp"


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name tells `hcibench doctor` whether the writer is still alive.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, (OSError, RuntimeError)):
            raise UsageError(f"cannot write {path}: {_reason(error, path.parent)}") from error
        raise


def _reason(error: BaseException, folder: Path) -> str:
    """A short reason for a failed write; torch reports a full disk only as a failed stream."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "no space left on the device"
    try:
        if shutil.disk_usage(folder).free < 16 * 2**20:
            return "no space left on the device"
    except OSError:
        pass
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda handle: handle.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(path: Path, obj: Any) -> None:
    _atomic(path, lambda handle: torch.save(obj, handle))


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


@functools.cache
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content (read once per size and modification time)."""
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise UsageError(f"file not found: {path}") from None
    return _digest_of(str(path.resolve()), status.st_size, status.st_mtime_ns)


def weights_by_content(backbone: dict) -> dict:
    """Backbone settings for a key or digest: a ``pretrained`` weights file named by its content,
    so that the same file at another path (another checkout or node) counts as the same, and a
    file written anew at the same path does not."""
    if not backbone.get("pretrained"):
        return backbone
    return {**backbone, "pretrained": {"sha256": file_digest(backbone["pretrained"])}}
