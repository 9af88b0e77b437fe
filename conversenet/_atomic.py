"""Atomic file writes shared by every writer of the package (images, tables, checkpoints).

A file is written to ``.<final-name>.<pid>.tmp`` in the destination folder, flushed and
fsynced, given the permissions a plain ``open`` would give (``0o666 & ~umask``), then moved
over the final name with :func:`os.replace`. A reader never sees half a file, and a killed
writer leaves only a ``.tmp`` file, never a truncated final one.

Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with atomic_open(os.path.join(d, "a.txt"), "w") as f:
    ...     _ = f.write("hello")
    >>> sorted(os.listdir(d)), open(os.path.join(d, "a.txt")).read()
    (['a.txt'], 'hello')
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator, Union

__all__ = ["atomic_open", "write_text_atomic", "tmp_name"]


def tmp_name(path: Path) -> Path:
    """The temporary name used while ``path`` is being written by this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike], mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Context manager yielding a file object whose content replaces ``path`` on success."""
    if "w" not in mode:
        raise ValueError(f"mode must be a write mode, got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(text: str, path: Union[str, os.PathLike]) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
