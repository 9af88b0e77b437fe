"""Atomic file writes shared by every writer of the package (images, tables, checkpoints,
exports, figures).

A file is written to a new temporary file in the destination folder, created by
:func:`tempfile.mkstemp` (``O_CREAT | O_EXCL | O_NOFOLLOW``, an unpredictable name
``.<final-name>.<pid>.<random>.tmp``), so a symlink or file planted in the folder is never
followed or written through: creation fails on any existing name and another name is
tried. The data is flushed and fsynced, the file gets the permissions a plain ``open``
would give (``0o666 & ~umask``, set on the descriptor), then it is moved over the final
name with :func:`os.replace`. A reader never sees half a file, and a failed or interrupted
writer leaves neither a truncated final file nor its temporary file (a process killed
with SIGKILL can leave the temporary file; the pid in its name lets a later run find it).

Failures to create, write or move the file raise :class:`WriteError` (an ``OSError``)
whose message names the destination and the problem in one line, e.g.
``cannot write 'run/last.pth': No space left on device``.

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
import errno
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator, Optional, Union

__all__ = ["atomic_open", "write_text_atomic", "tmp_prefix", "WriteError", "file_mode", "check_writable_dir",
           "fsync_dir", "signals_held"]


class WriteError(OSError):
    """An output file could not be written; ``str()`` is one line naming the file and why."""

    def __init__(self, path: Union[str, os.PathLike], cause: BaseException) -> None:
        code = getattr(cause, "errno", None) or errno.EIO
        why = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(code, why, str(path))
        self.path = str(path)

    def __str__(self) -> str:
        return f"cannot write {self.path!r}: {self.strerror}"


def tmp_prefix(path: Path) -> str:
    """The start of the temporary names used while ``path`` is written by this process
    (``mkstemp`` appends a random part and ``.tmp``)."""
    return f".{path.name}.{os.getpid()}."


def _umask_from_proc() -> Optional[int]:
    """The process umask read from ``/proc/self/status`` (Linux >= 4.7), without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    # Elsewhere the only portable way to read the umask is to set it and set it back; this
    # runs once, at import, before the package starts threads of its own.
    mask = _umask_from_proc()
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_at_import()


def file_mode() -> int:
    """``0o666 & ~umask``: the permissions ``open(path, "w")`` gives a new file."""
    mask = _umask_from_proc()
    return 0o666 & ~(_IMPORT_UMASK if mask is None else mask)


def fsync_dir(folder: Union[str, os.PathLike]) -> None:
    """Best-effort fsync of a folder, so that a rename in it survives a power cut."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable_dir(folder: Union[str, os.PathLike], what: str = "output folder") -> None:
    """Checks, before any work, that files can be created in ``folder``.

    An existing folder is probed by creating and removing one temporary file (the only test
    that also holds for read-only mounts and for root); a missing folder needs its nearest
    existing parent to be a writable folder (nothing is created here).

    Raises:
        WriteError: one line naming the folder, ``what`` it is for (e.g. ``--out``) and the problem.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.is_symlink():
            raise WriteError(probe, OSError(errno.ENOENT, f"dangling symbolic link ({what})"))
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(folder, OSError(errno.ENOTDIR, f"{probe} is not a folder ({what})"))
    try:
        with signals_held():  # an interrupt is handled after the probe is gone
            fd, tmp = tempfile.mkstemp(dir=probe, prefix=".conversenet-probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        # name the argument, and where creation failed when that is a parent of the folder asked for
        where = f"; creating files in {probe}" if probe != folder else ""
        raise WriteError(folder, OSError(e.errno, f"{e.strerror} ({what}{where})")) from None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT / SIGTERM arriving inside the block are handled when it ends.

    Python runs a signal's handler between any two bytecodes, so a ``KeyboardInterrupt``
    can be raised inside :func:`tempfile.mkstemp` after the file exists but before its
    name is returned, where no clean-up can know it. Inside this block the Python
    handlers of SIGINT and SIGTERM are swapped for one that records the signal; at the
    end the saved handlers are back and the first recorded signal goes to its own handler
    (which raises where the caller can clean up). Handlers can only be changed in the main
    thread; elsewhere (where Python never runs signal handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # SIG_DFL / SIG_IGN run no Python code: nothing to hold
            saved[sig] = handler
            signal.signal(sig, lambda signum, frame: arrived.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if arrived:
            signum, frame = arrived[0]
            saved[signum](signum, frame)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_open(path: Union[str, os.PathLike], mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Context manager yielding a file object whose content replaces ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was. OS errors are raised as :class:`WriteError`.
    """
    if "w" not in mode:
        raise ValueError(f"mode must be a write mode, got {mode!r}")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a signal is handled after the name is bound, inside this try: its clean-up removes the file
        with signals_held():
            # mkstemp: O_CREAT | O_EXCL | O_NOFOLLOW, mode 0o600, retried on an existing name
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(path), suffix=".tmp")
            try:
                os.fchmod(fd, file_mode())
                f = os.fdopen(fd, mode, **kwargs)
            except BaseException:
                os.close(fd)
                raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            _unlink_quietly(tmp)
        if isinstance(e, WriteError):
            raise
        raise WriteError(path, e) from None
    except BaseException:
        if tmp is not None:
            _unlink_quietly(tmp)
        raise


def write_text_atomic(text: str, path: Union[str, os.PathLike]) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
