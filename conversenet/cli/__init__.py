"""Command-line entry point: ``conversenet COMMAND ...`` (also ``python -m conversenet``).

Each command lives in its own module ``conversenet.cli.<name>`` that defines
``add_parser(subparsers)`` (registering its arguments and ``func``) and is imported only
when the command line is parsed, so that ``import conversenet`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# command name -> module under conversenet.cli
COMMANDS = {
    "bench": "bench",
    "eval": "eval",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"conversenet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
