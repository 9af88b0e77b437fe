"""Per-image comparison of a `conversenet eval` results.json with a reference.

The reference is either another results.json (e.g. a CPU run vs a GPU run) or a markdown
file with per-image tables (``| image | PSNR | SSIM |`` rows, such as the authors'-code
reference results beside the data); ``--section`` picks the table under the first heading
that contains the given text, ``--psnr-col``/``--ssim-col`` the 1-based number columns
(``--ssim-col 0``: none). Only the images the reference lists are compared.

Prints n, max |dPSNR| and max |dSSIM| over those images (ours unrounded minus the
reference as given) and, for a markdown reference, how many of ours round to the
reference's printed value (2 decimals PSNR, 4 SSIM).

Example::

    python benchmarks/compare_per_image.py runs/t4_bsd68/results.json \\
        ../shared/docs/reference-results.md --section "BSD68"
    python benchmarks/compare_per_image.py runs/gpu/results.json runs/cpu/results.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def load_results(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return {r["image"]: r for r in doc["images"]}


def load_markdown(path: Path, section: str, psnr_col: int, ssim_col: int) -> dict:
    lines = path.read_text().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("#") and section in l), None)
    if start is None:
        raise SystemExit(f"no heading containing {section!r} in {path}")
    out = {}
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"[\w.-]+", cells[0]) or cells[0] == "image":
            continue
        try:
            row = {"psnr": float(cells[psnr_col])}
            if ssim_col:
                row["ssim"] = float(cells[ssim_col])
        except (ValueError, IndexError):
            continue
        out[re.sub(r"\.(png|bmp|jpg|tif)$", "", cells[0])] = row
    if not out:
        raise SystemExit(f"no per-image rows under {section!r} in {path}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours", type=Path, help="results.json of a conversenet eval run")
    ap.add_argument("reference", type=Path, help="results.json or markdown file")
    ap.add_argument("--section", default=None, help="markdown: heading text of the table")
    ap.add_argument("--psnr-col", type=int, default=1)
    ap.add_argument("--ssim-col", type=int, default=2)
    a = ap.parse_args(argv)
    ours = load_results(a.ours)
    md = a.reference.suffix.lower() == ".md"
    if md:
        if not a.section:
            ap.error("--section is required for a markdown reference")
        ref = load_markdown(a.reference, a.section, a.psnr_col, a.ssim_col)
    else:
        ref = load_results(a.reference)
    missing = sorted(set(ref) - set(ours))
    if missing:
        print(f"not in {a.ours}: {', '.join(missing)}", file=sys.stderr)
        return 1
    names = sorted(ref)
    for m, nd in (("psnr", 2), ("ssim", 4)):
        pairs = [(n, ours[n][m], ref[n][m]) for n in names if m in ref[n]]
        if not pairs:
            continue
        worst = max(pairs, key=lambda p: abs(p[1] - p[2]))
        line = f"{m}: n={len(pairs)} max |d|={abs(worst[1] - worst[2]):.3g} (image {worst[0]})"
        if md:
            same = sum(round(o, nd) == round(r, nd) for _, o, r in pairs)
            diff = [n for n, o, r in pairs if round(o, nd) != round(r, nd)]
            line += f"; equal at {nd} decimals: {same}/{len(pairs)}" + (f" (not: {', '.join(diff)})" if diff else "")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
