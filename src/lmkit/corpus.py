"""A corpus every Python install has, for the quickstart, tests and benchmarks (no download)."""

from __future__ import annotations


def english_text() -> str:
    """English text every Python install has: the language reference topics shipped in
    pydoc_data, then the longer docstrings of the standard library's modules."""
    import ast
    import sysconfig
    from pathlib import Path

    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(doc)
    return "\n\n".join(p.strip() for p in parts) + "\n"
