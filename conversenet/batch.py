"""Batch machinery of the restore commands: lazy input listing, read-ahead, resumable outputs.

* **Listing** (:func:`iter_inputs`): files, folders (their image files, not recursing) and
  glob patterns are walked lazily, one folder at a time (``os.scandir``, names sorted per
  folder), in the order given. The walk is deterministic, so item ``i`` is the same on every
  rank and run, which is what sharding by index (:func:`conversenet.distributed.shard`)
  needs. Inputs reached twice (same real path) are taken once.
* **Read-ahead** (:class:`RestoreJob`): a ``torch.utils.data.DataLoader`` with worker
  processes walks the listing, keeps this rank's share, checks completion and decodes the
  images while the main process runs the network; its bounded prefetch queue keeps memory
  flat whatever the number of files.
* **Resumability** (:class:`Journal`): every rank appends JSON lines to its own file
  ``<output root>/.conversenet/restore-r<rank>.jsonl``: a ``start`` line before an output is
  written and a ``done`` line after it (and its ``--compare`` image) are complete, with each
  file's size and SHA-256, the input's size and mtime, and a key of the settings that change
  the output. Each line is flushed and fsynced; a torn last line (a process killed while
  writing it) is ignored. A rerun skips an item only when a ``done`` line of the same
  settings exists, the input is unchanged and every file listed still has that size and
  hash; an output with a ``start`` line of the same settings (killed while writing) is the
  job's own and is rewritten without ``--overwrite``.

Example (a folder listed lazily; nothing is read until iterated):
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for n in ("b.png", "a.png", "notes.txt"): _ = (d / n).write_bytes(b"")
    >>> [(p.name, str(rel)) for p, rel in iter_inputs([str(d)], {".png"})]
    [('a.png', 'a.png'), ('b.png', 'b.png')]
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .distributed import Context, JobCounter, barrier, gather

__all__ = [
    "BatchError",
    "Journal",
    "file_digest",
    "settings_key",
    "iter_inputs",
    "check_specs",
    "Item",
    "iter_plans",
    "JobBar",
    "RestoreJob",
]

JOURNAL_DIR = ".conversenet"
#: Jobs with at most this many inputs have every input and output checked before the
#: first network call (:meth:`RestoreJob.precheck`); bigger ones check each in turn.
PRECHECK_MAX = 10_000


class BatchError(ValueError):
    """A user error found before any work (no inputs, an output that is not a folder...)."""


# --------------------------------------------------------------------------------------
# the append-only journal
# --------------------------------------------------------------------------------------
class Journal:
    """Append-only JSON-lines files, one per rank: ``<folder>/<stem>-r<rank>.jsonl``.

    :meth:`append` writes one line with a single ``write`` and flushes and fsyncs it before
    returning, so a line that :meth:`read` returns was complete on disk. :meth:`read` reads
    the files of every rank (any earlier world size too) and skips lines that are not
    complete JSON objects (a torn last line).
    """

    def __init__(self, folder, rank: int = 0, stem: str = "journal") -> None:
        self.folder = Path(folder)
        self.stem = stem
        self.path = self.folder / f"{stem}-r{rank}.jsonl"
        self._f = None

    def files(self) -> List[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{self.stem}-r*.jsonl"))

    def read(self) -> Iterator[Dict[str, Any]]:
        for p in self.files():
            with open(p, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        continue  # torn: the writer was killed in the middle of this line
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict):
                        yield rec

    def clear(self) -> None:
        """Removes the journal files of every rank (``--overwrite``)."""
        self.close()
        for p in self.files():
            p.unlink(missing_ok=True)  # another machine on a shared file system may be first

    def append(self, rec: Dict[str, Any]) -> None:
        if self._f is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")
            if self._f.tell() > 0:
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":  # end a torn line so that it stays a line of its own
                        self._f.write(b"\n")
        self._f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def file_digest(path) -> Tuple[int, str]:
    """``(size in bytes, SHA-256 hex)`` of a file."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def settings_key(settings: Dict[str, Any]) -> str:
    """A short hash of the settings that change the outputs (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def verify_files(root: Path, files: Dict[str, Sequence]) -> bool:
    """True when every ``relative path -> [size, sha256]`` under ``root`` still matches."""
    for rel, (size, digest) in files.items():
        p = root / rel
        try:
            if p.stat().st_size != size:
                return False
            if file_digest(p) != (size, digest):
                return False
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------
# lazy listing
# --------------------------------------------------------------------------------------
def check_specs(specs: Sequence[str]) -> None:
    """Every INPUT must be an existing file or folder or a pattern matching something."""
    for spec in specs:
        if os.path.exists(spec):
            continue
        if next(glob.iglob(spec, recursive=True), None) is None:
            raise BatchError(f"input {spec!r}: no such file, folder or matching pattern")


def _folder_files(folder: str, exts: Set[str]) -> List[str]:
    """Names of the image files in ``folder`` (by extension, hidden ones left out, broken
    symbolic links kept so that the checks report them), sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it
                      if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in exts
                      and (e.is_symlink() or e.is_file()))  # is_file would raise on a link loop


def _iter_inputs(specs: Sequence[str], exts: Set[str]) -> Iterator[Tuple[Path, Path, bool]]:
    """:func:`iter_inputs` plus, per file, whether another file of the same folder or pattern
    shares its stem (``a.png``, ``a.jpg``: their comparisons need distinct names)."""
    seen: Set[str] = set()
    for spec in specs:
        if os.path.isdir(spec):
            files = [os.path.join(spec, n) for n in _folder_files(spec, exts)]
        elif os.path.exists(spec) or os.path.islink(spec):
            files = [spec]
        else:
            files = [m for m in sorted(glob.glob(spec, recursive=True))
                     if (os.path.isfile(m) or os.path.islink(m)) and os.path.splitext(m)[1].lower() in exts]
        stems: Dict[str, int] = {}
        for f in files:
            k = os.path.splitext(f)[0]
            stems[k] = stems.get(k, 0) + 1
        for f in files:
            key = os.path.realpath(f)
            if key in seen:
                continue
            seen.add(key)
            p = Path(f)
            yield p, Path(p.name), stems[os.path.splitext(f)[0]] > 1


def iter_inputs(specs: Sequence[str], exts: Set[str]) -> Iterator[Tuple[Path, Path]]:
    """``(file, relative output name)`` for every input, lazily, in a deterministic order.

    Folders give their image files (by extension, hidden files skipped) sorted by name;
    patterns their matching image files sorted; an input reached twice is given once. A
    folder's names (not its files) are read when the walk reaches it.
    """
    for f, rel, _ in _iter_inputs(specs, exts):
        yield f, rel


@dataclass
class Item:
    """One input of the job: its global index, paths and the output's name in the journal."""

    index: int
    src: Path
    dest: Path
    key: str  # the output's path relative to the job's root (journal key)
    error: str = ""
    cmp: Optional[Path] = None  # the --compare image, when asked for


def iter_plans(specs: Sequence[str], exts: Set[str], root: Path, single: Optional[Path],
               ext: Optional[str] = None, compare: bool = False) -> Iterator[Item]:
    """:class:`Item` per input: output ``root/<name>`` (or ``single`` for a lone input) and,
    with ``compare``, ``<folder>/compare/<stem>.png`` (``<stem>_<ext>.png`` when inputs of one
    folder or pattern share the stem, numbered if still taken). Two inputs that would be
    written to the same output: the later one carries an error."""
    taken: Dict[str, Path] = {}
    cmp_taken: Set[str] = set()
    cmp_dir = (single.parent if single is not None else root) / "compare"
    for i, (f, rel, shared) in enumerate(_iter_inputs(specs, exts)):
        dest = single if single is not None else root / (rel.with_suffix(ext) if ext else rel)
        k = os.path.relpath(dest, root)
        err = ""
        if k in taken:
            err = f"{taken[k]} is also written to {dest}; restore them separately"
        else:
            taken[k] = f
        cmp = None
        if compare:
            stem = dest.stem + (f"_{f.suffix.lstrip('.').lower() or 'noext'}" if shared else "")
            cmp, n = cmp_dir / f"{stem}.png", 2
            while cmp.name in cmp_taken:
                cmp, n = cmp_dir / f"{stem}_{n}.png", n + 1
            cmp_taken.add(cmp.name)
        yield Item(i, f, dest, k, err, cmp)


# --------------------------------------------------------------------------------------
# the read-ahead loader
# --------------------------------------------------------------------------------------
def _identity(x):
    return x


class _Stream:
    """An ``IterableDataset`` over this rank's share: ``(kind, Item, payload)`` with kind
    "todo" (payload: what ``reader(src)`` returned), "skip" (the journal's done record,
    verified) or "error" (a message). Worker ``w`` of ``n`` takes the rank's items
    ``j % n == w``; each worker walks the (cheap) listing itself. Items in ``settled``
    (handled by :meth:`RestoreJob.precheck`) are passed over."""

    def __init__(self, job: "RestoreJob", settled: Set[int], read: bool = True) -> None:
        self.specs, self.exts, self.root, self.single = job.specs, job.exts, job.root, job.single
        self.rank, self.world, self.reader, self.check = job.ctx.rank, job.ctx.world, job.reader, job.check
        self.complete, self.owned, self.overwrite = job.complete, job.owned, job.overwrite
        self.ext, self.compare = job.ext, job.compare
        self.input_dirs, self.input_files = job._input_dirs, job._input_files
        self.settled, self.read = settled, read

    def is_input(self, path: Path) -> bool:
        rp = os.path.realpath(path)
        return rp in self.input_files or (
            os.path.dirname(rp) in self.input_dirs and os.path.splitext(rp)[1].lower() in self.exts)

    def items(self, wid: int = 0, nw: int = 1) -> Iterator[Tuple[str, Item, Any]]:
        j = -1
        for item in iter_plans(self.specs, self.exts, self.root, self.single, self.ext, self.compare):
            if item.index % self.world != self.rank:
                continue
            j += 1
            if j % nw != wid or item.index in self.settled:
                continue
            if item.error:
                yield "error", item, item.error
                continue
            rec = self.complete.get(item.key)
            if rec is not None and self._complete(item, rec):
                yield "skip", item, rec
                continue
            if self.check is not None:
                protect = {os.path.realpath(item.src)}
                for p in (item.dest, item.cmp):
                    if p is not None and self.is_input(p):
                        protect.add(os.path.realpath(p))
                why = self.check(item, self.overwrite or item.key in self.owned, protect)
                if why:
                    yield "error", item, why
                    continue
            if not self.read:
                yield "todo", item, None
                continue
            try:
                yield "todo", item, self.reader(item.src)
            except Exception as e:  # reported by the main process; the others go on
                yield "error", item, str(e)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return self.items(*((info.id, info.num_workers) if info is not None else (0, 1)))

    def _complete(self, item: Item, rec: Dict) -> bool:
        try:
            st = item.src.stat()
        except OSError:
            return False
        if rec.get("src") != [st.st_size, st.st_mtime_ns]:
            return False  # the input changed since the output was made
        return verify_files(self.root, rec.get("files") or {})


try:  # a real IterableDataset so that the DataLoader treats it as a stream
    from torch.utils.data import IterableDataset as _IterableDataset

    class _StreamDataset(_Stream, _IterableDataset):
        pass
except ImportError:  # pragma: no cover - torch is a dependency
    _StreamDataset = _Stream


@dataclass
class Summary:
    """What the whole job did (on rank 0 after :meth:`RestoreJob.finish`; this rank's elsewhere)."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    extras: List[Tuple[int, Any]] = field(default_factory=list)


class JobBar:
    """The progress bar of a whole job (all ranks), shown by rank 0 with images/s.

    Every rank calls :meth:`tick` after each item (one request to the job's key-value store,
    no waiting for the others); rank 0's bar shows the sum. :meth:`close` on rank 0 keeps
    the bar going until the whole job's count reaches the total, so the last rate is the
    job's. A world of one is a plain tqdm bar.
    """

    def __init__(self, ctx: Context, name: str, desc: str, total: Optional[int] = None, enabled: bool = True) -> None:
        self.ctx = ctx
        self.counter = JobCounter(ctx, name)
        self.bar = None
        self.postfix = ""
        if enabled and ctx.is_main:
            from tqdm import tqdm

            label = desc if ctx.world == 1 else f"{desc} ({ctx.world} processes)"
            self.bar = tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, file=sys.stderr, leave=False)

    def set_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total = n

    def tick(self, n: int = 1) -> None:
        self.counter.add(n)
        if self.bar is not None:
            self.refresh()

    def refresh(self) -> None:
        n = self.counter.total()
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        if self.postfix:
            self.bar.set_postfix_str(self.postfix, refresh=False)

    def close(self, total: Optional[int] = None) -> None:
        if self.bar is None:
            return
        if self.ctx.distributed and self.counter.shared and total is not None:
            while self.counter.total() < total:
                self.refresh()
                time.sleep(0.2)
        self.refresh()
        self.bar.close()


class RestoreJob:
    """Runs over this rank's share of the inputs, skipping complete outputs.

    Usage (the main loop of ``conversenet denoise | sr | deblur``)::

        job = RestoreJob(ctx, specs, output, exts, reader, overwrite=..., workers=2, check=...)
        job.prepare()                      # user errors here, before any work
        job.resume(settings)               # the journal: what is complete already
        for item, why in job.precheck():   # every input and output checked (up to PRECHECK_MAX)
            ...
        for kind, item, payload in job:    # "todo" / "skip" / "error"
            ...                            # for "todo": job.begin(item); write; job.done(item, files)
        summary = job.finish()             # whole-job counts on rank 0

    Args:
        ctx: the :class:`conversenet.distributed.Context`.
        specs: the INPUT arguments.
        output: OUT (folder, or a file name when there is a single input).
        exts: accepted extensions (lower case, with the dot).
        reader: ``reader(path) -> payload``, run in the loader's workers (picklable).
        overwrite: start afresh (journal removed, existing outputs replaced).
        workers: loader worker processes (0: read in the main process).
        progress: show a progress bar (rank 0) of the whole job.
        desc: the bar's label.
        check: ``check(item, may_replace, protected_real_paths) -> problem or None``, run on
            each item before it is read (picklable; e.g. header and output-path checks).
        compare: items get a ``cmp`` path for a comparison image.
    """

    def __init__(self, ctx: Context, specs: Sequence[str], output: str, exts: Set[str],
                 reader: Callable[[Path], Any], overwrite: bool = False,
                 workers: int = 2, progress: bool = True, desc: str = "images", ext: Optional[str] = None,
                 check: Optional[Callable] = None, compare: bool = False) -> None:
        self.ctx, self.specs, self.output, self.exts = ctx, list(specs), output, set(exts)
        self.reader, self.overwrite, self.workers = reader, overwrite, workers
        self.check, self.compare = check, compare
        self.complete: Dict[str, Dict] = {}
        self.owned: Set[str] = set()
        self._settled: Set[int] = set()
        self.pending: Optional[int] = None
        self.key = ""
        self.progress, self.desc, self.ext = progress, desc, ext
        self.summary = Summary()
        self.total: Optional[int] = None
        self._bar: Optional[JobBar] = None
        self._count_thread: Optional[threading.Thread] = None

    # ---------------------------------------------------------------- before work
    def prepare(self) -> None:
        """Checks the options, the inputs and OUT and decides the output layout (no listing
        beyond the first two inputs)."""
        if self.workers < 0:
            raise BatchError(f"--workers must be >= 0, got {self.workers}")
        check_specs(self.specs)
        first = list(_take(iter_inputs(self.specs, self.exts), 2))
        if not first:
            raise BatchError("no input images found (supported: " + ", ".join(sorted(self.exts)) + ")")
        outp = Path(self.output)
        self.single: Optional[Path] = None
        if len(first) == 1 and outp.suffix.lower() in self.exts and not outp.is_dir():
            self.single, self.root = outp, outp.parent
        else:
            if outp.exists() and not outp.is_dir():
                raise BatchError(f"output {self.output!r} exists and is not a folder")
            self.root = outp
        # outputs must never land on an input: folders and files given, pattern matches
        self._input_dirs = {os.path.realpath(x) for x in self.specs if os.path.isdir(x)}
        self._input_files = {os.path.realpath(x) for x in self.specs if os.path.isfile(x)}
        for x in self.specs:
            if not os.path.exists(x):
                self._input_files.update(os.path.realpath(m) for m in glob.iglob(x, recursive=True))

    def is_input(self, path: Path) -> bool:
        """``path`` is (or would be listed as) one of the job's inputs."""
        return _Stream(self, set()).is_input(path)

    def resume(self, settings: Dict[str, Any]) -> None:
        """Reads the journal (``--overwrite``: removes it): outputs recorded complete with the
        same ``settings`` (everything that changes the files) will be skipped."""
        self.key = settings_key(settings)
        self.journal = Journal(self.root / JOURNAL_DIR, self.ctx.rank, "restore")
        if self.overwrite:
            barrier(self.ctx)  # nobody appends before the old journal is gone (on every machine)
            if self.ctx.local_rank == 0:
                self.journal.clear()
            barrier(self.ctx)
        for rec in self.journal.read():
            if rec.get("k") != self.key or "o" not in rec:
                continue
            self.owned.add(rec["o"])
            if rec.get("s") == "done":  # a later start line does not undo it: the hashes decide
                self.complete[rec["o"]] = rec

    def precheck(self, limit: Optional[int] = None) -> List[Tuple[Item, str]]:
        """Checks every input and output of this rank's share before the first network call
        (``check``, completion), unless the job has more than ``limit`` inputs (default
        :data:`PRECHECK_MAX`): then each item is checked when its turn comes, so that a huge
        folder starts at once. Returns the problems (the stream then passes over those items
        and the complete ones); :attr:`pending` is the number of items left to restore."""
        limit = PRECHECK_MAX if limit is None else limit
        if sum(1 for _ in _take(iter_inputs(self.specs, self.exts), limit + 1)) > limit:
            return []
        problems = []
        self.pending = 0
        for kind, item, payload in _Stream(self, set(), read=False).items():
            if kind == "error":
                problems.append((item, payload))
                self.summary.failed += 1
            elif kind == "skip":
                self.summary.skipped += 1
                if payload.get("x") is not None:
                    self.summary.extras.append((item.index, payload["x"]))
            else:
                self.pending += 1
                continue
            self._settled.add(item.index)
        return problems

    def may_replace(self, item: Item) -> bool:
        """An existing output may be replaced: ``--overwrite``, or the job's own earlier output."""
        return self.overwrite or item.key in self.owned

    # ---------------------------------------------------------------- the stream
    def __iter__(self) -> Iterator[Tuple[str, Item, Any]]:
        from torch.utils.data import DataLoader

        ds = _StreamDataset(self, self._settled)
        loader = DataLoader(ds, batch_size=None, num_workers=self.workers, collate_fn=_identity,
                            prefetch_factor=2 if self.workers else None)
        it = iter(loader)  # the workers are forked here, before the bar's counting thread starts
        self._open_bar()
        if self._settled:  # failed or complete in the pre-check
            self._bar.tick(len(self._settled))
        try:
            for kind, item, payload in it:
                if kind == "skip":
                    self.summary.skipped += 1
                    if payload.get("x") is not None:
                        self.summary.extras.append((item.index, payload["x"]))
                    self._tick()
                elif kind == "error":
                    yield kind, item, payload
                    self.summary.failed += 1
                    self._tick()
                else:
                    yield kind, item, payload
        finally:
            self.journal.close()

    def begin(self, item: Item) -> None:
        """Called before the first file of ``item`` is written."""
        self.journal.append({"k": self.key, "o": item.key, "s": "start"})
        self.owned.add(item.key)

    def done(self, item: Item, files: Sequence[Path], extra: Any = None) -> None:
        """Records that ``item``'s ``files`` are complete (hashes read back from disk)."""
        st = item.src.stat()
        rec = {"k": self.key, "o": item.key, "s": "done", "src": [st.st_size, st.st_mtime_ns],
               "files": {os.path.relpath(f, self.root): list(file_digest(f)) for f in files}}
        if extra is not None:
            rec["x"] = extra
            self.summary.extras.append((item.index, extra))
        self.journal.append(rec)
        self.summary.written += 1
        self._tick()

    def failed(self) -> None:
        """Counts one item that could not be restored (its files are not recorded as done)."""
        self.summary.failed += 1
        self._tick()

    # ---------------------------------------------------------------- progress
    def _open_bar(self) -> None:
        self._bar = JobBar(self.ctx, "restore", self.desc, enabled=self.progress)
        if self._bar.bar is not None:
            # the total arrives from a background count, so that the first image starts at once
            self._count_thread = threading.Thread(target=self._count, daemon=True)
            self._count_thread.start()

    def _count(self) -> None:
        self.total = sum(1 for _ in iter_inputs(self.specs, self.exts))
        self._bar.set_total(self.total)

    def _tick(self) -> None:
        if self.ctx.world == 1:
            s = self.summary
            self._bar.postfix = f"skipped {s.skipped}, failed {s.failed}" if s.skipped or s.failed else ""
        self._bar.tick()

    def write(self, msg: str, err: bool = False) -> None:
        """Prints a line without breaking the progress bar."""
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr if err else sys.stdout)
        (sys.stderr if err else sys.stdout).flush()

    # ---------------------------------------------------------------- after work
    def finish(self) -> Summary:
        """Waits for the other ranks (rank 0 keeps the bar going meanwhile) and returns the
        whole job's counts on rank 0 (this rank's on the others)."""
        if self._count_thread is not None:
            self._count_thread.join()
        if self._bar is not None:
            self._bar.close(self.total)
        parts = gather(self.ctx, self.summary)
        if not self.ctx.is_main:
            return self.summary
        tot = Summary()
        for p in parts:
            tot.written += p.written
            tot.skipped += p.skipped
            tot.failed += p.failed
            tot.extras += p.extras
        tot.extras.sort(key=lambda t: t[0])
        return tot


def _take(it: Iterator, n: int) -> Iterator:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x
