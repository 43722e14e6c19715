"""Size of the package for review notes: files, lines, and the longest functions.

    python benchmarks/code_size.py [PACKAGE_DIR] [--top 10]

Lines as `find sparsity_exp -name '*.py' | xargs wc -l` counts them; a function's length is
end_lineno - lineno + 1 of its `def` (nested functions listed on their own, as outer.inner)."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path


def functions(root: Path):
    for path in sorted(root.rglob("*.py")):
        stack = [(ast.parse(path.read_text()), "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = prefix + child.name
                    if not isinstance(child, ast.ClassDef):
                        yield child.end_lineno - child.lineno + 1, qual, f"{path}:{child.lineno}"
                    stack.append((child, qual + "."))
                else:
                    stack.append((child, prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="sparsity_exp")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    root = Path(args.root)
    files = sorted(root.rglob("*.py"))
    lines = sum(len(p.read_bytes().splitlines()) for p in files)
    print(f"{root}: {len(files)} files, {lines} lines")
    for n, qual, where in sorted(functions(root), reverse=True)[:args.top]:
        print(f"{n:5d}  {qual:40s} {where}")


if __name__ == "__main__":
    main()
