"""The package's arrows point down: nothing in the library imports the command line, the model knows nothing
of torch.distributed, and no two modules import each other (directly or around a longer loop).

Checked statically from the source (every import statement, also those inside functions), so a cycle
hidden behind a function-level import is found too."""

import ast
from pathlib import Path

import nanoseek

ROOT = Path(nanoseek.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The nanoseek module a dotted import name loads last (a submodule, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every module `module` imports, nanoseek's own resolved to files and others by their top name."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            if n.startswith("nanoseek"):
                r = _resolve(n)
                if r is not None:
                    out.add(r)
            else:
                out.add(n)
    out.discard(module)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_nothing_below_the_command_line_imports_it():
    offenders = {m: sorted(i for i in deps if i == "nanoseek.cli" or i.startswith("nanoseek.cli."))
                 for m, deps in GRAPH.items() if not (m == "nanoseek.cli" or m.startswith("nanoseek.cli."))}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_model_knows_nothing_of_ranks_training_or_generation():
    for m, deps in GRAPH.items():
        if m.startswith("nanoseek.model"):
            assert not any(d.startswith("torch.distributed") for d in deps), m
            assert not any(d.startswith(("nanoseek.train", "nanoseek.engine", "nanoseek.serve")) for d in deps), m


def test_no_import_cycles():
    # edges from a package's __init__ to its own submodules are re-exports, not layering
    edges = {m: {d for d in deps if d in MODULES and not (MODULES[m].name == "__init__.py" and d.startswith(m + "."))}
             for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert cycles == []
