"""Atomic file writes: readers see the previous file or the complete new one, never a partial write."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Yield a temporary file beside ``path``; when the block succeeds, fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as file:
        file.write(text)


def write_json_atomic(path: str | os.PathLike, value: Any, indent: int | None = 1) -> None:
    # json.dumps, not json.dump: unindented, it takes the C encoder (json.dump always streams through the pure-Python
    # one, most of the time of writing the synthetic set's 77 MB annotation file); the text is the same.
    text = json.dumps(value, indent=indent, separators=None if indent else (",", ":"))
    with atomic_write(path) as file:
        file.write(text + "\n" if indent else text)
