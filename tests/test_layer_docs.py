"""Runs the ```python blocks of docs/LAYER.md (issue 14: every snippet run as a test).

Blocks of one ``##`` section run in order in one namespace, each section in a fresh one,
from the repository root. A block whose first line is ``# requires: NAME`` is skipped
when module NAME cannot be imported (``cuda``: when no GPU is present).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAYER_MD = ROOT / "docs" / "LAYER.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# the sections this file must keep (issue 14); other sections' blocks run too
REQUIRED = ("Replacing a depthwise convolution", "Replacing a transposed convolution (ConverseUpsample)", "1-D and 3-D",
            "Mixed precision", "torch.compile", "Memory formats and devices",
            "Export (ONNX, torch.export)")


def sections():
    """{heading: [code blocks]} for every ``## `` section of LAYER.md."""
    out, current = {}, None
    chunks = re.split(r"^## (.+)$", LAYER_MD.read_text(encoding="utf-8"), flags=re.M)
    for i in range(1, len(chunks), 2):
        current = chunks[i].strip()
        out[current] = FENCE.findall(chunks[i + 1])
    return out


def test_required_sections_have_snippets():
    found = sections()
    for name in REQUIRED:
        assert name in found, f"docs/LAYER.md lacks the section '## {name}'"
        assert found[name], f"section '## {name}' has no ```python block"


def test_readme_links_layer_md():
    assert "(docs/LAYER.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [n for n, blocks in sections().items() if blocks])
def test_layer_md_section_runs(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": f"layer_md_{re.sub(r'[^0-9a-zA-Z]+', '_', name)}"}
    torch.manual_seed(0)
    for i, code in enumerate(sections()[name]):
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        req = re.match(r"#\s*requires:\s*(\S+)", first)
        if req:
            mod = req.group(1)
            if mod == "cuda" and not torch.cuda.is_available():
                pytest.skip(f"block {i + 1} of '{name}' needs a CUDA GPU")
            if mod != "cuda" and importlib.util.find_spec(mod) is None:
                pytest.skip(f"block {i + 1} of '{name}' needs the module {mod}")
        exec(compile(code, f"docs/LAYER.md [{name}] block {i + 1}", "exec"), namespace)
