"""``conversenet export``: a registry model with weights as ONNX (or a torch.export .pt2)
for one input size, checked against PyTorch on the package's sample image."""

from __future__ import annotations

import time

from . import CLIError, check_flag

TOLERANCE = 1e-4  # max abs difference from PyTorch (float32) that the check accepts


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (or torch.export .pt2) for a fixed input size",
        description=(
            "Export a registry model with weights for inputs of --size H W pixels (grey or colour "
            "as the model takes). The Converse2D solves become real DFT-matrix products, exact for "
            "that size (docs/LAYER.md). Models taking a blur kernel get a second input 'kernel' "
            "(N, 1, k, k). Unless --no-check, the file is run (onnxruntime, or the loaded .pt2) on "
            "the sample image and compared with PyTorch; exit status 1 when the max abs difference "
            f"exceeds {TOLERANCE:g}."
        ),
    )
    p.add_argument("--model", required=True, help="registry name (conversenet info / list_models())")
    p.add_argument("--weights", default="auto",
                   help="auto | official | builtin | none (random init, seed 0) | PATH to a state dict (default auto)")
    p.add_argument("--format", default="onnx", choices=["onnx", "pt2"],
                   help="onnx (default) or pt2 (torch.export.save of the exported program)")
    p.add_argument("--size", nargs=2, type=int, required=True, metavar=("H", "W"), help="input size in pixels")
    p.add_argument("--batch", type=int, default=1, help="batch size N of the exported graph (default 1)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="ONNX: skip the exporter's graph optimizer (export about 2x faster; the file is larger "
                        "and runs slower)")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--no-check", action="store_true", help="skip running the file and comparing with PyTorch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime")
    p.set_defaults(func=run)


def _load(name: str, weights: str):
    from .. import restore as R
    from ..models import registry

    if name not in registry.list_models():
        raise CLIError(f"unknown model {name!r}; valid names: {', '.join(registry.list_models())}")
    if weights == "none":
        import torch

        torch.manual_seed(0)
        return registry.create(name).eval(), "random initialisation (seed 0)"
    task = registry.model_info(name)["task"]
    try:
        lm = R.load_model(task, name, weights)
    except (R.RestoreError, ValueError) as e:
        raise CLIError(str(e)) from e
    return lm.model.eval(), lm.source


def run(args) -> int:
    import torch

    from .. import export as E

    try:
        size = E.check_size(args.size)
    except ValueError as e:
        raise CLIError(f"--size: {e}") from e
    check_flag("--batch", args.batch)
    if args.threads is not None:
        torch.set_num_threads(check_flag("--threads", args.threads))
    if args.format == "onnx" and not args.no_check:
        try:
            E._require("onnxruntime")
        except E.ExportError as e:
            raise CLIError(f"{e} (or pass --no-check)") from e
    model, source = _load(args.model, args.weights)
    print(f"model: {args.model}, weights: {source}")
    try:
        inputs = E.example_inputs(model, size, args.batch)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = model(*inputs)  # also validates the size before the (slow) tracing
        t_torch = time.perf_counter() - t0
        names = E.input_names(model)
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, inputs))
        t0 = time.perf_counter()
        if args.format == "onnx":
            path = E.export_onnx(model, args.output, inputs=inputs, opset=args.opset, optimize=args.optimize)
        else:
            from .._atomic import atomic_open

            ep = E.export_program(model, inputs=inputs)
            with atomic_open(args.output, "wb") as f:
                torch.export.save(ep, f)
            path = args.output
    except (ValueError, TypeError, E.ExportError) as e:
        raise CLIError(str(e)) from e
    t_export = time.perf_counter() - t0
    import os

    mib = os.path.getsize(path) / 2**20
    print(f"wrote {path} ({args.format}, {mib:.1f} MiB) in {t_export:.1f} s: inputs {shapes} -> y {tuple(ref.shape)}")
    if args.no_check:
        return 0
    t0 = time.perf_counter()
    if args.format == "onnx":
        import onnxruntime

        out = torch.from_numpy(E.run_onnx(path, *inputs, threads=args.threads))
        runner = f"onnxruntime {onnxruntime.__version__}"
    else:
        loaded = torch.export.load(path)
        with torch.no_grad():
            out = loaded.module()(*inputs)
        runner = "torch.export.load"
    t_run = time.perf_counter() - t0
    err = (out - ref).abs().max().item() if out.shape == ref.shape else float("inf")
    ok = err <= TOLERANCE
    print(f"check on the sample image: max abs difference vs PyTorch {err:.2e} "
          f"({'ok' if ok else 'FAILED'}, tolerance {TOLERANCE:g}); {runner} {t_run:.2f} s "
          f"(first run, includes loading), PyTorch eager {t_torch:.2f} s")
    return 0 if ok else 1
