#!/usr/bin/env python3
"""The figures issue 13 asks for: longest functions, largest files, modules in import cycles.

    python3 scripts/arch_report.py [--top N]

Every import statement counts, also those inside functions (as import-linter counts them).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xcam", "exporters")
SCRIPTS = ("benchmarks", "scripts")  # sized too, not part of the import graph


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules `name` imports (a `from pkg import mod` counts as importing pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    top = parser.parse_args().top
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    files = [*found.values(), *(p for d in SCRIPTS for p in sorted((ROOT / d).glob("*.py")))]
    sizes = sorted(((len(p.read_text().splitlines()), p) for p in files), reverse=True)
    funcs = sorted((f for p in files for f in functions(p)), reverse=True)
    print(f"modules: {len(found)}, files: {len(files)}, lines: {sum(s for s, _ in sizes)}")
    print(f"\nlargest files (top {top}):")
    for size, path in sizes[:top]:
        print(f"  {size:5d}  {path.relative_to(ROOT)}")
    print(f"\nlongest functions (top {top}):")
    for size, name in funcs[:top]:
        print(f"  {size:5d}  {name}")
    print(
        f"  files over 400 lines: {sum(s > 400 for s, _ in sizes)}; "
        f"functions over 60 lines: {sum(s > 60 for s, _ in funcs)}"
    )
    groups = cycles(graph)
    print(f"\nmodules in import cycles: {sum(map(len, groups))} in {len(groups)} cycle(s)")
    for group in groups:
        print("  " + ", ".join(group))


if __name__ == "__main__":
    main()
