"""The layout shows the method: the world reaches the stages only through the files it writes, and the stage
packages import one another without a cycle."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "surgical"
WORLD_IMPORT = re.compile(r"^\s*(from\s+(\.\.?world|surgical\.world)\b|import\s+surgical\.world\b)", re.M)
STAGE_PACKAGES = ("map", "curate", "distill", "verify", "quantize", "pipeline", "baselines", "world", "demo")


def test_only_the_world_and_the_demo_import_the_world():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.relative_to(SRC).parts[0] not in ("world", "demo") and WORLD_IMPORT.search(p.read_text())]
    assert offenders == []


def _imported_packages(path: Path) -> set[str]:
    """Top-level surgical subpackages a module imports (relative or absolute, at any depth of the file)."""
    rel = path.relative_to(SRC).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(rel[:-1])[: len(rel) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [a.name for a in node.names]
            elif node.module and node.module.startswith("surgical."):
                names = [node.module.split(".")[1]]
            else:
                continue
            out.update(names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("surgical."))
    return out


def _stage_graph(skip_cli: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in STAGE_PACKAGES}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC).parts
        if parts[0] not in STAGE_PACKAGES or (skip_cli and f.name == "cli.py"):
            continue
        graph[parts[0]].update(p for p in _imported_packages(f) if p in STAGE_PACKAGES and p != parts[0])
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path + [n, m]
            if m not in state and (c := visit(m, path + [n])):
                return c
        state[n] = 2
        return None

    for n in graph:
        if n not in state and (c := visit(n, [])):
            return c
    return None


def test_stage_packages_have_no_import_cycle():
    assert _cycle(_stage_graph(skip_cli=True)) is None


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_quantize_does_not_import_verify_and_the_pipeline_calls_both():
    g = _stage_graph(skip_cli=True)
    assert "verify" not in g["quantize"]
    assert {"quantize", "verify"} <= g["pipeline"]


def test_every_relative_import_resolves():
    """Lazy imports inside functions are not checked by the linter; a moved module must not leave one dangling."""
    missing = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).parts
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = SRC.joinpath(*rel[:-1])
                for _ in range(node.level - 1):
                    base = base.parent
                targets = [node.module] if node.module else [a.name for a in node.names]
                for t in targets:
                    p = base.joinpath(*t.split("."))
                    names_ok = p.with_suffix(".py").exists() or (p / "__init__.py").exists()
                    if node.module is None and not names_ok:  # `from . import name`: a module or a name in __init__
                        names_ok = t in (base / "__init__.py").read_text()
                    if not names_ok:
                        missing.append(f"{f.relative_to(SRC)}:{node.lineno}: {'.' * node.level}{t}")
    assert missing == []
