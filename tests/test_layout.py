"""The package's imports follow the order declared in ``decoding_gpt.layout``.

Read with ``ast`` (nothing is imported): every ``import decoding_gpt.X`` /
``from decoding_gpt.X import ...`` in a unit must point to the same unit or one before
it; the module graph has no cycle; imports inside functions are for heavy optional
third-party packages only, each with a comment saying so; and the units on disk, in
``LAYERS`` and in CONTRIBUTING.md's map are the same.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from decoding_gpt.layout import UNITS, rank

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "decoding_gpt"


def module_name(path: Path) -> str:
    """``decoding_gpt/data/bpe.py`` -> ``decoding_gpt.data.bpe`` (``__init__`` -> package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The top-level unit a module belongs to: ``decoding_gpt.data.bpe`` -> ``data``."""
    return module.split(".")[1]


def package_imports(tree: ast.AST, package_modules: set[str]) -> list[tuple[str, ast.stmt]]:
    """Every ``decoding_gpt`` module a source imports, with the statement that does it.

    ``from decoding_gpt import pretrained`` names a module; ``from decoding_gpt.data import
    get_tokenizer`` names ``decoding_gpt.data``.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names if a.name.startswith("decoding_gpt.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "decoding_gpt":
                for alias in node.names:
                    target = f"decoding_gpt.{alias.name}"
                    if target in package_modules:
                        found.append((target, node))
            elif node.module.startswith("decoding_gpt."):
                found.append((node.module, node))
    return found


def read_package(package: Path = PACKAGE) -> dict[str, tuple[Path, ast.Module]]:
    """Module name -> (path, syntax tree) for every source file of the package."""
    sources = {}
    for path in sorted(package.rglob("*.py")):
        sources[module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return sources


def import_graph(sources: dict[str, tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    names = set(sources)
    return {
        module: {target for target, _ in package_imports(tree, names) if target != module}
        for module, (_, tree) in sources.items()
    }


def back_imports(sources: dict[str, tuple[Path, ast.Module]]) -> list[str]:
    """``path:line: a -> b`` for every import that points up the declared order."""
    problems = []
    for module, (path, tree) in sources.items():
        if module == "decoding_gpt":  # the package root only re-exports device helpers
            continue
        for target, node in package_imports(tree, set(sources)):
            if target == "decoding_gpt":
                continue
            source_unit, target_unit = unit_of(module), unit_of(target)
            if rank(target_unit) > rank(source_unit):
                rel = path.relative_to(ROOT)
                problems.append(f"{rel}:{node.lineno}: {source_unit} imports {target_unit}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def function_level_imports(sources: dict[str, tuple[Path, ast.Module]]) -> list[str]:
    """Imports inside functions that are package-internal, or lack a ``# lazy:`` reason."""
    problems = []
    for path, tree in sources.values():
        lines = path.read_text().splitlines()
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                module = node.module if isinstance(node, ast.ImportFrom) else names[0]
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                text = " ".join(lines[node.lineno - 1 : node.end_lineno])
                if (module or "").startswith("decoding_gpt"):
                    problems.append(f"{where}: package import inside a function")
                elif "# lazy:" not in text and "noqa: PLC0415" not in text:
                    problems.append(f"{where}: function-level import without a '# lazy:' reason")
    return problems


def units_on_disk(package: Path = PACKAGE) -> set[str]:
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    subpackages = {p.parent.name for p in package.glob("*/__init__.py")}
    return modules | subpackages


def contributing_map() -> list[str]:
    """The units named in CONTRIBUTING.md's "Where things live" block, in order."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = re.search(r"## Where things live\n.*?```\n(.*?)```", text, re.S)
    assert block, "CONTRIBUTING.md has no '## Where things live' code block"
    return re.findall(r"^\s*([a-z_]+)(?:\.py|/)\s", block.group(1), re.M)


# --------------------------------------------------------------------------- the rules


SOURCES = read_package()


def test_no_import_points_back_up_the_declared_order():
    assert back_imports(SOURCES) == []


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(SOURCES)) == []


def test_function_level_imports_are_heavy_optional_dependencies_with_a_reason():
    assert function_level_imports(SOURCES) == []


def test_every_unit_is_declared_once_and_exists():
    assert len(UNITS) == len(set(UNITS))
    assert set(UNITS) == units_on_disk()


def test_contributing_map_lists_every_unit_in_the_declared_order():
    assert contributing_map() == list(UNITS)


def test_tools_are_imported_by_nothing_in_the_package():
    graph = import_graph(SOURCES)
    users = {m for m, targets in graph.items() for t in targets if unit_of(t) == "tools"}
    assert {m for m in users if unit_of(m) != "tools"} == set()


# --------------------------------------------------------------------------- the checker


def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, tuple[Path, ast.Module]]:
    """A fake ``decoding_gpt`` tree under ``tmp_path`` holding ``files``."""
    for name, text in files.items():
        path = tmp_path / "decoding_gpt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {
        module_name(p): (p, ast.parse(p.read_text()))
        for p in sorted((tmp_path / "decoding_gpt").rglob("*.py"))
    }


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    return tmp_path


def test_a_planted_back_import_is_caught(fake_root):
    sources = _plant(
        fake_root,
        {"transformer.py": "from decoding_gpt.lens import logit_lens\n", "lens.py": ""},
    )
    assert back_imports(sources) == ["decoding_gpt/transformer.py:1: transformer imports lens"]


def test_a_planted_function_level_back_import_is_caught(fake_root):
    code = "def f():\n    from decoding_gpt.tools.train import main\n    return main\n"
    sources = _plant(fake_root, {"heads.py": code, "tools/__init__.py": "", "tools/train.py": ""})
    assert back_imports(sources) == ["decoding_gpt/heads.py:2: heads imports tools"]
    assert function_level_imports(sources) == [
        "decoding_gpt/heads.py:2: package import inside a function"
    ]


def test_a_planted_cycle_is_caught(fake_root):
    sources = _plant(
        fake_root,
        {
            "grokking.py": "from decoding_gpt import scaling\n",
            "scaling.py": "from decoding_gpt.grokking import train\n",
        },
    )
    assert cycles(import_graph(sources)) == [["decoding_gpt.grokking", "decoding_gpt.scaling"]]


def test_an_unexplained_lazy_import_is_caught(fake_root):
    sources = _plant(
        fake_root,
        {"viz.py": "def f():\n    import circuitsvis\n\ndef g():\n    import numpy  # lazy: x\n"},
    )
    assert function_level_imports(sources) == [
        "decoding_gpt/viz.py:2: function-level import without a '# lazy:' reason"
    ]
