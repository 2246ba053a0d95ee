"""Size and structure of the package: the longest files and functions, and import cycles.

    python -m tools.code_metrics [--root .] [--top 5]

Lengths are in lines (a function from its ``def`` to its last line, docstring included).
Import cycles are the strongly connected components of the graph of ``spikegrad`` modules
importing one another, counted twice: with the imports at module level only, and with
every import, those inside functions included (imports under ``if TYPE_CHECKING:`` never
run and are left out; a package's ``__init__`` importing its own submodules is not a cycle).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path, top_level_only: bool) -> dict[str, set[str]]:
    """``module -> the spikegrad modules it imports``."""
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.dump(node.test) for n in ast.walk(node)}
        for node in tree.body if top_level_only else ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in (resolve(t) for t in targets if t.startswith("spikegrad")):
                own_submodule = target and target.startswith(module + ".") and path.name == "__init__.py"
                if target and target != module and not own_submodule:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def function_lengths(src: Path) -> list[tuple[int, str]]:
    out = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1,
                            f"{path.relative_to(src.parent)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository (its src/spikegrad is measured)")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    src = args.root / "src"
    files = sorted(((len(p.read_text().splitlines()), str(p.relative_to(src.parent)))
                    for p in (src / "spikegrad").rglob("*.py")), reverse=True)
    result = {"files": files[:args.top], "functions": function_lengths(src / "spikegrad")[:args.top],
              "cycles_module_level": cycles(import_graph(src, top_level_only=True)),
              "cycles_any_level": cycles(import_graph(src, top_level_only=False))}
    print("longest files:", ", ".join(f"{name} ({n})" for n, name in result["files"]))
    print("longest functions:", ", ".join(f"{name} ({n})" for n, name in result["functions"]))
    for key in ("cycles_module_level", "cycles_any_level"):
        found = result[key]
        print(f"import cycles ({key.split('_', 1)[1].replace('_', ' ')}): {len(found)}"
              + "".join(f"\n    {' <-> '.join(c)}" for c in found))
    return result


if __name__ == "__main__":
    main()
