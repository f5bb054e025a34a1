"""Nothing above ``drkit/engines/`` imports an engine package: cli/, deployments/, flows/, tasks/ and the rest
of drkit/ reach PostgreSQL and SQL Server only through the protocols in ``drkit.engines.base``, opened by
``drkit.engines`` (open_engine, chain_for, dr_operations). Read from the source (ast), every import counts:
at module level, inside a function, under TYPE_CHECKING, or by ``importlib.import_module("...")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("cli", "deployments", "flows", "tasks", "drkit")
ENGINE_PACKAGES = ("drkit.engines.postgres", "drkit.engines.sqlserver")

# file -> why it may import an engine package. Keep this short: each entry is a known exception, not a habit.
ALLOWED: dict[str, str] = {
    "cli/demo.py": "`drkit demo` builds the PostgreSQL demo sandbox (local clusters, a streaming replica) itself",
    "drkit/sandbox.py": "the PostgreSQL demo sandbox behind `drkit demo` and the tests: it is PostgreSQL by design",
    "drkit/config.py": "the policy model embeds SQL Server's settings section (drkit.engines.sqlserver.settings: "
                       "a pydantic model only, no engine code)",
}


def _imported(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """Every module ``tree`` imports (absolute names; relative imports resolved against ``package``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # `from drkit.engines import postgres`
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def _is_engine(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in ENGINE_PACKAGES)


def violations(root: Path = ROOT) -> list[str]:
    out: list[str] = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("drkit/engines/") or rel in ALLOWED:
                continue
            package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            lines: dict[int, str] = {}
            for line, mod in _imported(tree, package):
                if _is_engine(mod):
                    lines.setdefault(line, mod)  # `from a.b import c`: a.b, not also a.b.c
            out += [f"{rel}:{line}: imports {mod}" for line, mod in sorted(lines.items())]
    return out


def test_nothing_above_the_engines_imports_an_engine_package() -> None:
    found = violations()
    assert not found, ("put what these need behind drkit.engines.base (a protocol method or an EngineFeatures "
                       "bit):\n" + "\n".join(found))


def test_every_allowed_exception_still_exists_and_still_needs_it() -> None:
    """An allow-list entry whose file no longer imports an engine package is removed, not kept 'just in case'."""
    stale = []
    for rel in ALLOWED:
        path = ROOT / rel
        assert path.exists(), f"{rel} is allow-listed but does not exist"
        package = ".".join(Path(rel).with_suffix("").parts[:-1])
        if not any(_is_engine(m) for _, m in _imported(ast.parse(path.read_text(encoding="utf-8")), package)):
            stale.append(rel)
    assert not stale, f"allow-listed but importing no engine package any more: {stale}"


def test_the_walk_sees_each_form_of_import(tmp_path: Path) -> None:
    """The checker itself: each way of importing an engine is caught, and drkit.engines' own protocols are not."""
    pkg = tmp_path / "flows"
    pkg.mkdir()
    (pkg / "ok.py").write_text("from drkit.engines import open_engine\nfrom drkit.engines.base import Engine\n")
    (pkg / "a.py").write_text("import drkit.engines.postgres.pgctl\n")
    (pkg / "b.py").write_text("def f():\n    from drkit.engines.sqlserver.tsql import quote\n")
    (pkg / "c.py").write_text("from drkit.engines import postgres\n")
    (pkg / "d.py").write_text("import importlib\nm = importlib.import_module('drkit.engines.sqlserver')\n")
    (pkg / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from drkit.engines.postgres.pgctl import LocalCluster\n")
    engines = tmp_path / "drkit" / "engines" / "postgres"
    engines.mkdir(parents=True)
    (engines / "x.py").write_text("from drkit.engines.postgres import pgctl\n")  # inside the engines: fine
    found = {v.split(":")[0] for v in violations(tmp_path)}
    assert found == {"flows/a.py", "flows/b.py", "flows/c.py", "flows/d.py", "flows/e.py"}
