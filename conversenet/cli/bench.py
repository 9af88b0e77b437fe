"""``conversenet bench``: Converse2D and the models against the paper's Algorithm 1."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..bench import add_arguments

    p = sub.add_parser(
        "bench",
        help="time Converse2D and the models against the paper's Algorithm 1, an FFT floor and convolutions",
        description="Side-by-side timings (medians) and peak memory; see conversenet.bench.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import BenchError, run_from_args
    from . import CLIError

    try:
        return run_from_args(args)
    except BenchError as e:
        raise CLIError(str(e)) from None
