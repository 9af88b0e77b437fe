"""docs/OPERATOR.md and its citations point at things that exist.

Every file the page names exists; every function, class or method its code map names is
defined in the file of that row (read with ``ast``, nothing imported); every file of the
repository that cites docs/OPERATOR.md finds it. A rename in the code without the page
fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "OPERATOR.md"
# short file names used in the tables for files of conversenet/functional/
SHORT = {"converse.py": "conversenet/functional/converse.py"}


def _defined_names(path: Path) -> set:
    """Top-level functions and classes, and ``Class.method`` for methods and properties."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


def _map_rows():
    """(file, [names]) for every ``\\`file.py\\`: \\`name\\`, ...`` segment of the code-map tables."""
    text = DOC.read_text()
    out = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        where = line.rstrip("|").split("|")[-1]
        for seg in where.split(";"):
            m = re.search(r"`([\w/]+\.py)`:\s*(.*)", seg)
            if m:
                out.append((SHORT.get(m.group(1), m.group(1)), re.findall(r"`([\w.*]+)`", m.group(2))))
    return out


def test_every_file_the_page_names_exists():
    cited = set(re.findall(r"`((?:conversenet|tests|docs)/[\w/.]+)`", DOC.read_text()))
    cited |= set(re.findall(r"\]\(([\w/.]+\.md)\)", DOC.read_text()))
    assert len(cited) > 10
    missing = [c for c in cited if not ((REPO / c).exists() or (DOC.parent / c).exists())]
    assert missing == []


def test_the_code_map_names_only_defined_functions():
    rows = _map_rows()
    assert len(rows) >= 15 and sum(len(n) for _, n in rows) >= 30
    wrong = []
    for file, names in rows:
        path = REPO / file
        assert path.is_file(), file
        defined = _defined_names(path)
        for name in names:
            ok = (any(d.startswith(name[:-1]) for d in defined) if name.endswith("*") else name in defined)
            if not ok:
                wrong.append(f"{file}: {name}")
    assert wrong == []


@pytest.mark.parametrize("citing", sorted(
    p for p in list(REPO.glob("conversenet/**/*.py")) + list(REPO.glob("docs/*.md")) + [REPO / "README.md"]
    if p != DOC and "OPERATOR.md" in p.read_text()))
def test_files_citing_the_page_find_it(citing):
    for ref in re.findall(r"[\w./]*OPERATOR\.md", citing.read_text()):
        assert ref in ("docs/OPERATOR.md", "OPERATOR.md") and DOC.is_file(), ref
