"""``conversenet visualize``: the paper's Figure 2 for a Converse2D layer of a model.

Example::

    conversenet visualize --task denoise --weights official --image photo.png --layer 0 -o fig2.png

Shows, for a few channels, the layer's input feature maps Y, kernels K, outputs X*, the
reconstruction X* (x) K and the error map Y - X* (x) K (see :mod:`conversenet.visualize`).
Without ``--image`` the generated sample scene of ``conversenet demo`` is used.
"""

from __future__ import annotations

from pathlib import Path

from . import CLIError, check_flag


def add_parser(sub) -> None:
    p = sub.add_parser("visualize", help="draw Figure 2 (Y, K, X*, X*(x)K, error) for a Converse2D layer",
                       description="Captures a Converse2D layer's input with a forward hook and draws its feature "
                                   "maps, kernels, outputs, reconstructions and error maps as one PNG (needs matplotlib).")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--image", default=None, help="input image (default: the generated sample scene)")
    p.add_argument("--task", default="denoise", choices=["denoise", "sr", "deblur"], help="default: denoise")
    p.add_argument("--model", default=None, help="registry name (default: the task's released network)")
    p.add_argument("--weights", default="auto", help="auto, official, builtin, a .pth file, or none (random)")
    p.add_argument("--layer", default="0", help="Converse2D layer: index (0 = first) or module name (default 0)")
    p.add_argument("--channels", default=None, help="comma-separated channel indices (default: the 3 most structured)")
    p.add_argument("--num-channels", dest="num_channels", type=int, default=3, help="channels shown (default 3)")
    p.add_argument("--sigma", type=float, default=25.0, help="denoise: noise added to the image first (default 25; 0: none)")
    p.add_argument("--size", type=int, default=96, help="the image is centre-cropped to at most this side (default 96)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of the PNG (default 110)")
    p.add_argument("--list", action="store_true", help="list the model's Converse2D layers and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from .. import restore as R
    from .. import visualize as V
    from ..data import ImageReadError, read_image, to_float
    from ..tasks import get_task

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--output must be a .png file, got {args.output!r}")
    if out.exists() and not args.overwrite:
        raise CLIError(f"{out} exists (use --overwrite to replace it)")
    if args.image is not None and Path(args.image).resolve() == out.resolve():
        raise CLIError("--output must not be the input image")
    check_flag("--size", args.size, 16)
    from .._atomic import WriteError, check_writable_dir

    try:  # a read-only place fails now, before the model is built
        check_writable_dir(out.parent)
    except WriteError as e:
        raise CLIError(f"--output: {e}") from None
    if args.weights.lower() == "none":
        from ..models import create

        name = args.model or R.DEFAULT_MODELS[args.task]
        try:
            net = create(name).eval()
        except ValueError as e:
            raise CLIError(str(e)) from e
        source = f"{name} with random weights"
    else:
        try:
            lm = R.load_model(args.task, args.model, args.weights, "cpu", blind=False)
        except (R.RestoreError, ValueError) as e:
            raise CLIError(str(e)) from e
        net, source = lm.model, lm.source
    layers = V.converse_layers(net)
    if args.list:
        for i, n in enumerate(layers):
            print(f"{i:3d}  {n}")
        return 0
    layer = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    if args.image is None:
        img = to_float(R.sample_image(max(args.size, 16)))
    else:
        try:
            arr, _ = read_image(args.image)
        except ImageReadError as e:
            raise CLIError(str(e)) from e
        img = to_float(arr)
    sigma = args.sigma if get_task(args.task).noisy_input else 0.0  # the noise a denoiser expects
    x, kernel = V.prepare_input(net, img, size=args.size, sigma=sigma)
    channels = None
    if args.channels:
        try:
            channels = [int(c) for c in args.channels.split(",")]
        except ValueError:
            raise CLIError(f"--channels must be comma-separated integers, got {args.channels!r}") from None
    try:
        maps = V.converse_maps(net, x, layer, channels, args.num_channels, kernel)
        V.figure2(maps, out, dpi=args.dpi, title=f"Converse2D layer {maps['layer']} of {source.split(' (')[0]}")
    except ImportError as e:
        raise CLIError(str(e)) from e
    except ValueError as e:
        raise CLIError(str(e)) from e
    print(f"wrote {out}: layer {maps['layer']}, channels {maps['channels']}, "
          f"max |Y - X*(x)K| = {np.abs(maps['E']).max():.3g} (weights: {source})")
    return 0
