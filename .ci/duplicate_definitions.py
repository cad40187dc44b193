"""
Fails when a module defines a class or function twice at one level (the later silently replaces the
earlier, so a test class defined twice never runs its first half). Usage:

    python3 .ci/duplicate_definitions.py DIRECTORY...

Prints one line per duplicate, FILE:LINE: NAME defined again (first at line N), and exits 1 if any.
"""

from __future__ import annotations

import ast
import os
import sys


def duplicates(source: str, filename: str) -> list[str]:
    found = []

    def scan(body, where: str):
        seen: dict[str, int] = {}
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name in seen and not _is_overload(node):
                    found.append(f"{filename}:{node.lineno}: {where}{node.name} defined again "
                                 f"(first at line {seen[node.name]})")
                seen.setdefault(node.name, node.lineno)
                if isinstance(node, ast.ClassDef):
                    scan(node.body, f"{where}{node.name}.")

    scan(ast.parse(source, filename).body, "")
    return found


def _is_overload(node) -> bool:
    # property setters and typing overloads define a name again on purpose
    for decorator in getattr(node, "decorator_list", ()):
        text = ast.unparse(decorator)
        if text.endswith((".setter", ".deleter")) or text in ("overload", "typing.overload"):
            return True
    return False


def main(paths: list[str]) -> int:
    problems = []
    for top in paths:
        for directory, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("node_modules", "__pycache__")]
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        problems.extend(duplicates(f.read(), path))
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["tests"]))
