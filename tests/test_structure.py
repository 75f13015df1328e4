"""The package's import structure: layers that point one way, and no import circle.

Read from the source with :mod:`ast` (every ``import``, at module level or inside a
function, ``TYPE_CHECKING`` blocks included), so a lazy import cannot hide an edge."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Sub-packages (and top-level modules) by layer: a module may import its own
#: sub-package and lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_io", "_version", "errors", "_memory", "distributed"),
    ("data",),
    ("models",),
    ("evidence",),
    ("training", "gating"),
    ("integrations", "inputs"),
    ("studies", "api"),
    ("cli", "__main__", ""),  # "": the facade, drift_gate/__init__.py
)
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "drift_gate").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from a import b``: ``a.b`` when
    that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            found.update(subs if len(subs) == len(node.names) else {base, *subs})
    return {m for m in found if m in modules and m != name}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_sub_package_has_a_layer() -> None:
    assert {_part(m) for m in _modules()} <= set(RANK), "give a new sub-package its layer in LAYERS"


def _upward(src: int, dst: int) -> bool:
    """Into a higher layer, or sideways within a middle one (``training`` and ``gating``
    do not import each other); the base modules and the entry points may share a layer."""
    return dst > src or (dst == src and src not in (0, len(LAYERS) - 1))


def test_imports_point_down_the_layers() -> None:
    upward = sorted(
        f"{a} imports {b}"
        for a, targets in _graph().items()
        for b in targets
        if _part(a) != _part(b) and _upward(RANK[_part(a)], RANK[_part(b)])
    )
    assert upward == []


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == [], [" -> ".join(c) for c in circles]


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The reader finds relative, lazy and ``from package import module`` edges."""
    (tmp_path / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "b.py").write_text("from drift_gate.c import x\n")
    modules = {"drift_gate.a": tmp_path / "a.py", "drift_gate.b": tmp_path / "b.py", "drift_gate.c": tmp_path}
    assert _imports("drift_gate.a", tmp_path / "a.py", modules) == {"drift_gate.b"}
    assert _imports("drift_gate.b", tmp_path / "b.py", modules) == {"drift_gate.c"}
    assert _upward(RANK["data"], RANK["gating"]) and _upward(RANK["training"], RANK["gating"])
    assert not _upward(RANK["gating"], RANK["data"]) and not _upward(RANK["cli"], RANK[""])
