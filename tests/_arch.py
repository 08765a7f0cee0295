"""Static checks of the code's architecture (used by tests/test_architecture.py).

``python tests/_arch.py [ROOT]`` prints the counts: cross-module private accesses, layer
violations, imports of adapters by the core, private imports by adapters, import cycles.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the layers of ckptstore/, lowest first; a module may import its own layer and lower ones
LAYERS = {
    "ckptstore._errors": 0,
    "ckptstore._units": 0,
    "ckptstore._progress": 0,
    "ckptstore._version": 0,
    "ckptstore._lazy": 0,
    "ckptstore.format": 1,
    "ckptstore.storage": 2,
    "ckptstore.pipeline": 3,
    "ckptstore.store": 4,
    "ckptstore._api": 5,
    "ckptstore.interop": 6,
    "ckptstore.web": 6,
    "ckptstore.testing": 7,
    "ckptstore.cli": 7,
    "ckptstore.__main__": 9,
    "ckptstore": 8,  # the package's __init__: the public surface
}
#: private attributes of third-party objects we use on purpose
THIRD_PARTY_PRIVATE = {
    "_strip_protocol",
    "_request",
    "_getframe",
    # s3fs's coroutine for one API call (its retries and error translation): storage/_s3io.py
    # streams a GET's body into the caller's buffer with it
    "_call_s3",
    # torch's own underscored API: a state_dict()'s per-module versions, and the parts of an
    # uncoalesced sparse COO tensor (.indices()/.values() refuse those)
    "_metadata",
    "_indices",
    "_values",
}
SELF_NAMES = {"self", "cls", "mcs"}
#: what code outside the core (adapters, users) may import
PUBLIC_PACKAGES = {"ckptstore", "ckptstore.interop", "ckptstore.testing"}


@dataclass
class Report:
    private_names: list[str] = field(default_factory=list)
    layer_violations: list[str] = field(default_factory=list)
    core_imports_adapters: list[str] = field(default_factory=list)
    adapter_private_imports: list[str] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    modules: int = 0
    lines: int = 0


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "adapters":
        parts = ["ckptstore", "adapters", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def files(root: Path) -> list[Path]:
    return sorted([*(root / "ckptstore").rglob("*.py"), *(root / "adapters").rglob("*.py")])


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def layer_of(mod: str) -> int | None:
    best = None
    for prefix, n in LAYERS.items():
        if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, n)
    return None if best is None else best[1]


def _imports(tree: ast.AST, mod: str, is_pkg: bool, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(target module, imported names, line) of every import that runs, at any depth (imports
    under ``if TYPE_CHECKING:`` are for type checkers only and are skipped)."""
    out = []
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            target = resolve(mod, is_pkg, node)
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{target}.{n}" in known]  # ``from . import _hashing``
            if len(submodules) < len(names):
                out.append((target, [n for n in names if n not in submodules], node.lineno))
            out.extend((f"{target}.{n}", [], node.lineno) for n in submodules)
        elif isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, [], node.lineno))
    return out


def analyse(root: Path = ROOT) -> Report:
    rep = Report()
    paths = files(root)
    known = {module_name(p, root) for p in paths}
    graph: dict[str, set[str]] = {m: set() for m in known}
    for path in paths:
        mod = module_name(path, root)
        is_pkg = path.name == "__init__.py"
        text = path.read_text()
        rep.modules += 1
        rep.lines += text.count("\n")
        tree = ast.parse(text)
        where = f"{path.relative_to(root)}"
        in_adapters = mod.startswith("ckptstore.adapters")
        for target, names, line in _imports(tree, mod, is_pkg, known):
            ours = target == "ckptstore" or target.startswith("ckptstore.")
            if not ours:
                continue
            if target in known and target != mod:
                graph[mod].add(target)
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in known:
                    rep.private_names.append(f"{where}:{line}: imports {n} from {target}")
            if in_adapters:
                if not target.startswith("ckptstore.adapters") and target not in PUBLIC_PACKAGES:
                    rep.adapter_private_imports.append(f"{where}:{line}: imports {target}")
                continue
            if target.startswith("ckptstore.adapters"):
                rep.core_imports_adapters.append(f"{where}:{line}: imports {target}")
                continue
            src_layer, dst_layer = layer_of(mod), layer_of(target)
            if src_layer is None or dst_layer is None:
                rep.layer_violations.append(f"{where}:{line}: {mod} or {target} has no layer")
            elif dst_layer > src_layer:
                rep.layer_violations.append(
                    f"{where}:{line}: {mod} (layer {src_layer}) imports {target} (layer {dst_layer})"
                )
        own = _own_private_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                v = node.value
                if isinstance(v, ast.Name) and v.id in SELF_NAMES:
                    continue
                if node.attr in own:  # an object of a class this module defines
                    continue
                if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                    continue
                if node.attr in THIRD_PARTY_PRIVATE:
                    continue
                rep.private_names.append(f"{where}:{node.lineno}: .{node.attr} of {ast.unparse(v)}")
    rep.cycles = _cycles(graph)
    return rep


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private names this module defines: functions, classes, and ``self._x`` attributes."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            own.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in SELF_NAMES
            and node.attr.startswith("_")
        ):
            own.add(node.attr)
    return own


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    r = analyse(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    print(f"modules: {r.modules}, lines: {r.lines}")
    for name in ("private_names", "layer_violations", "core_imports_adapters", "adapter_private_imports", "cycles"):
        items = getattr(r, name)
        print(f"{name}: {len(items)}")
        for x in items[:50]:
            print("   ", x)
