"""Command-line entry point: ``conversenet COMMAND ...`` (also ``python -m conversenet``).

Each command lives in its own module ``conversenet.cli.<name>`` that defines
``add_parser(subparsers)`` (registering its arguments and ``func``) and is imported only
when the command line is parsed, so that ``import conversenet`` stays light.

Stopping: every command runs under :func:`stop_signals`: SIGINT raises
``KeyboardInterrupt`` and SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``),
whatever disposition the process inherited (a shell script's ``cmd &`` starts jobs with
SIGINT ignored, and Python keeps an inherited SIG_IGN). Writers are atomic, so the
exception leaves no partial file; :func:`main` prints one line and exits with 130
(SIGINT) or 143 (SIGTERM), i.e. 128 + the signal number. ``conversenet train`` replaces
these handlers during its loop with its own, which save a checkpoint first.

Errors: :class:`CLIError` (bad arguments or input) exits 2; a file that cannot be
written (:class:`conversenet._atomic.WriteError`: read-only folder, full disk) exits 1;
both print one line, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Iterator, List, Optional

# command name -> module under conversenet.cli
COMMANDS = {
    "bench": "bench",
    "eval": "eval",
    "export": "export",
    "info": "info",
    "train": "train",
    "denoise": "restore",
    "sr": "restore",
    "deblur": "restore",
    "demo": "restore",
    "degrade": "restore",
    "visualize": "visualize",
    "serve": "serve",
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


def check_flag(flag: str, value, minimum: int = 1) -> int:
    """An integer option ``>= minimum`` (:func:`conversenet.checks.check_int`), its error
    as a :class:`CLIError` naming the option ("--threads must be >= 1, got 0")."""
    from ..checks import check_int

    try:
        return check_int(flag, value, minimum)
    except ValueError as e:
        raise CLIError(str(e)) from None


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of :func:`stop_signals` (exit code 143).

    A subclass of ``KeyboardInterrupt`` so that every clean-up written for Ctrl-C (removing
    temporaries, saving partial results) also runs on SIGTERM."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001
    raise Terminated()


def exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT -> ``KeyboardInterrupt``, SIGTERM -> :class:`Terminated` while the block runs,
    installed explicitly (an inherited SIG_IGN would otherwise make the command
    unstoppable); the previous handlers are restored afterwards. A no-op off the main
    thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated)}
    try:
        yield
    finally:
        for sig, h in prev.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="conversenet",
        description="Reverse convolution (Converse2D) and ConverseNet restoration models.",
    )
    parser.add_argument("--version", action="version", version=f"conversenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        importlib.import_module(f"{__name__}.{module}").add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .._atomic import WriteError

    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()  # --threads holds for the command only (main() may run in-process)
    try:
        with stop_signals():
            rc = args.func(args)
    except CLIError as e:
        print(f"conversenet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"conversenet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        code = exit_code(e)
        print(f"conversenet {args.command}: interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}); "
              "no partial files left", file=sys.stderr)
        return code
    finally:
        torch.set_num_threads(threads)
    return int(rc or 0)
