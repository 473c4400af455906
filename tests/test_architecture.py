"""The package's import graph: the data path reads top to bottom, with no arrow back up.

Layers, lowest first (a module may import only from its own layer or below):
io -> readers -> tissue -> store -> sampling -> data -> models -> engine -> training ->
datasets -> cli. Also: no import cycle between modules (counting the parent packages an import
executes), and no module imports another module's ``_private`` name.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import wsi_patchgd

ROOT = Path(wsi_patchgd.__file__).parent
PKG = "wsi_patchgd"

# Each top-level module or sub-package of wsi_patchgd, in data-path order.
LAYERS = [
    ("errors", "io", "plots"),
    ("readers",),
    ("tissue",),
    ("store",),
    ("sampling",),
    ("augment", "data"),
    ("models",),
    ("engine",),
    ("training",),
    ("datasets",),
    ("api", "demo", "testing"),
    ("cli", "__main__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules(root: Path = ROOT, pkg: str = PKG) -> dict[str, Path]:
    mods = {}
    for path in root.rglob("*.py"):
        parts = [pkg, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of a module except those under ``if TYPE_CHECKING:`` (never imported)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(mods: dict[str, Path], pkg: str = PKG) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> modules it imports (anywhere in the file, functions included, at run time);
    and the private names imported from another module."""
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [(src, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            for src, name in targets:
                if src != pkg and not src.startswith(pkg + "."):
                    continue
                target = f"{src}.{name}" if name and f"{src}.{name}" in mods else src
                if name and target == src and name.startswith("_") and not name.startswith("__"):
                    private.append(f"{mod} imports {src}.{name}")
                # importing a.b.c runs a/__init__ and a/b/__init__ too
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep != mod and not mod.startswith(dep + "."):
                        edges[mod].add(dep)
    return edges, private


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer() -> None:
    missing = sorted({m.split(".")[1] for m in _modules() if "." in m} - set(RANK))
    assert not missing, f"add these to LAYERS: {missing}"


def test_no_import_goes_up_the_data_path() -> None:
    edges, _ = _imports(_modules())
    upward = [
        f"{a} -> {b}"
        for a, bs in edges.items()
        for b in bs
        if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)
    ]
    assert not sorted(upward)


def test_no_private_name_is_used_across_modules() -> None:
    _, private = _imports(_modules())
    assert not sorted(private)


def _cycles(edges: dict[str, set[str]], mods: list[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(mods):
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycle() -> None:
    mods = _modules()
    edges, _ = _imports(mods)
    assert not _cycles(edges, list(mods))


def test_the_checker_sees_planted_violations(tmp_path: Path) -> None:
    """A cycle through a function-level import, a private name and a parent package's
    ``__init__`` are found; a ``TYPE_CHECKING`` import is not an edge (else the tests above
    could pass vacuously)."""
    root = tmp_path / "fake"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from .b import helper\n")
    (root / "a.py").write_text("def f():\n    from .sub.b import _secret\n    return _secret\n")
    (root / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
        "def helper():\n    from .. import a\n    return a\n_secret = 1\n"
    )
    (root / "c.py").write_text("from .sub import helper\nclass C: ...\n")
    mods = _modules(root, "fake")
    edges, private = _imports(mods, "fake")
    assert private == ["fake.a imports fake.sub.b._secret"]
    assert {"fake.sub", "fake.sub.b"} <= edges["fake.a"]  # the parent package runs first
    assert "fake.c" not in edges["fake.sub.b"]  # TYPE_CHECKING only
    assert _cycles(edges, list(mods)) == [["fake.a", "fake.sub", "fake.sub.b"]]
