"""The import contract (ARCHITECTURE.md): dependencies point downward, runtimes never import
each other, and no module-level import cycles. Checked on the source with `ast`, so a new
file is covered the day it is added."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "thinwire"
# lower rank = lower layer; a package may import its own rank only from itself
RANKS = {
    "errors": 0,
    "codecs": 1, "tasks": 1,
    "wire": 2,
    "policy": 3, "obs": 3,
    "exchange": 4,
    "strategy": 5,
    "config": 6, "server": 6,
    "sim": 7, "service": 7, "collective": 7, "swarm": 7, "experts": 7, "flower": 7,
    "api": 8, "cli": 8, "__init__": 8, "__main__": 8,
}
RUNTIMES = {name for name, rank in RANKS.items() if rank == 7}
FRONT = {name for name, rank in RANKS.items() if rank == 8}  # one group: the front door


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(thinwire module imported, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    module = ".".join(("thinwire",) + path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        module = module.removesuffix(".__init__") + ".__init__"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("thinwire")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("thinwire"):
                if node.module is None or name == "thinwire":
                    out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
                else:
                    out.append((name, node.lineno))
    return out


def target_package(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in ROOT.rglob("*.py")}
    assert packages <= set(RANKS), f"add {sorted(packages - set(RANKS))} to RANKS and ARCHITECTURE.md"


def test_dependencies_point_downward_and_runtimes_stay_apart():
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        src = package_of(path)
        for name, line in imports(path):
            dst = target_package(name)
            if dst == src or dst not in RANKS or {src, dst} <= FRONT:
                continue
            if RANKS[dst] >= RANKS[src]:
                kind = "runtime imports runtime" if {src, dst} <= RUNTIMES else "upward import"
                problems.append(f"{path.relative_to(ROOT)}:{line}: {kind} {src} -> {name}")
    assert not problems, "\n".join(problems)


def test_no_module_level_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        mod = ".".join(("thinwire",) + path.relative_to(ROOT).with_suffix("").parts)
        mod = mod.removesuffix(".__init__")
        graph[mod] = {n for n, _ in imports(path, top_level_only=True)}
    known = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for n in deps if (r := resolve(n)) and r != m and not m.startswith(r + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for n in edges.get(m, ()):
            if state.get(n) == 1:
                cycle.extend(stack[stack.index(n):] + [m, n] if n in stack else [m, n])
                return True
            if n not in state and visit(n, stack + [n]):
                return True
        state[m] = 2
        return False

    for m in sorted(edges):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_checker_sees_a_violation(tmp_path):
    """The contract test itself works: a runtime importing another is reported."""
    bad = ROOT / "sim" / "_layer_probe.py"
    bad.write_text("from ..service import core\n")
    try:
        try:
            test_dependencies_point_downward_and_runtimes_stay_apart()
        except AssertionError as exc:
            assert "runtime imports runtime sim -> thinwire.service" in str(exc)
        else:
            raise AssertionError("the contract test missed sim -> service")
    finally:
        bad.unlink()
