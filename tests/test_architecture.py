"""The package's import structure: no cycle between modules and no import from a lower floor to a higher one.

Walks every module's imports with `ast` (function-level imports included, since they couple modules just as much)
so the floors of docs/design.md stay true as modules are added: floors are given by package prefix.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "asuka"

# Floor of each package prefix (longest prefix wins); docs/design.md "Floors" shows the same table.
FLOORS: dict[str, int] = {
    "asuka.utils": 0,
    "asuka.data": 1,
    "asuka.models": 2,
    "asuka.training": 3,
    "asuka.pipelines": 3,
    "asuka.eval": 4,
    "asuka.benchmark": 5,
    "asuka.app": 5,
    "asuka.report": 5,
    "asuka.demo": 5,
    "asuka": 6,  # the package's own __init__
}


def module_name(path: Path) -> str:
    """Dotted name of a file of the package (`pkg/__init__.py` -> `pkg`)."""
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def floor_of(module: str) -> int:
    """The floor of the longest matching prefix; an unlisted package fails loudly so it gets a floor."""
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[best]


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that `module` imports anywhere in its file (resolved to the most specific module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
            # `from pkg import submodule` targets the submodule, `from pkg import name` the package.
            targets = [t for t in targets if t in modules][:1] or [source]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_floors_cover_every_module():
    for name in all_modules():
        floor_of(name)  # raises ValueError (max of nothing) for a module under no listed prefix


def test_no_import_runs_up_a_floor():
    graph = import_graph()
    upward = sorted(
        f"{src} (floor {floor_of(src)}) imports {dst} (floor {floor_of(dst)})"
        for src, dsts in graph.items()
        for dst in dsts
        if floor_of(dst) > floor_of(src) and not src.startswith(dst + ".") and not dst.startswith(src + ".")
    )
    assert not upward, "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_checker_sees_a_cycle_and_a_function_level_import(tmp_path):
    """The walker itself: a function-level import is an edge, and a two-module circle is found."""
    tree = ast.parse("def f():\n    from asuka.utils import errors\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "asuka.utils" for n in ast.walk(tree))
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_quadruplet_store_has_no_tensor_methods():
    """The manifest shares the sharded folder's index and resume logic, not the latent cache's tensor reading."""
    from asuka.data.latent_cache import LatentCache
    from asuka.data.quadruplets import QuadrupletStore
    from asuka.data.sharded_folder import ShardedFolder

    assert not issubclass(QuadrupletStore, LatentCache)
    assert issubclass(QuadrupletStore, ShardedFolder) and issubclass(LatentCache, ShardedFolder)
    assert not any(hasattr(QuadrupletStore, name) for name in ("get", "has", "write_shard", "shard_missing"))


def test_training_conditions_come_from_the_models_floor():
    """The null conditions of stage 2 and the FLUX latent cache are read by the backbone layer, which the pipeline
    builder also uses: the training stages do not reach into the FLUX pipeline builder for them."""
    graph = import_graph()
    assert "asuka.models.backbones.flux_released" in graph["asuka.training.conditions"]
    assert not [dst for dst in graph["asuka.training.conditions"] if dst.startswith("asuka.pipelines")]
    assert not [src for src, dsts in graph.items()
                if src.startswith("asuka.training") and "asuka.pipelines.build_flux" in dsts]


def test_no_private_name_imported_from_another_module():
    """``from asuka.x import _name``: a helper another module needs gets a public name (or moves)."""
    found = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asuka"):
                found += [f"{name} imports {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, "\n".join(found)
