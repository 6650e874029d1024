"""The shape of the code, kept by a test so later work keeps it: small functions, and an
architecture document that names only what exists. Also: the device package never imports
TensorFlow (tests/test_edge_cli.py proves it at run time; this reads the sources), and its
runtime core never imports the daemon or the CLI built on it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "export")
MAX_LINES = 80  # no function longer than this ...
LONG_LINES = 50  # ... and at most MAX_LONG longer than this
MAX_LONG = 8


def _functions() -> list[tuple[int, str]]:
    out = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    out.append((n, f"{f.relative_to(ROOT)}:{node.lineno} {node.name}()"))
    return sorted(out, reverse=True)


def test_functions_stay_small():
    funcs = _functions()
    too_long = [f"{where} has {n} lines" for n, where in funcs if n > MAX_LINES]
    assert not too_long, f"split these (limit {MAX_LINES} lines): {too_long}"
    long_ones = [f"{where} ({n})" for n, where in funcs if n > LONG_LINES]
    assert len(long_ones) <= MAX_LONG, f"{len(long_ones)} functions over {LONG_LINES} lines (at most {MAX_LONG}): " \
                                       f"{long_ones}"


def test_architecture_doc_names_only_what_exists():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    code = "\n".join(f.read_text(encoding="utf-8") for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py"))
    defined = set(re.findall(r"^\s*(?:def|class)\s+(\w+)", code, re.M))
    defined |= set(re.findall(r"^(\w+)\s*(?::[^=]+)?=", code, re.M))  # module-level names (tables, constants)
    named = set(re.findall(r"`(?:[\w.]+\.)?(\w+)\(", text))
    missing = sorted(n for n in named if n not in defined)
    assert not missing, f"docs/architecture.md names functions that do not exist: {missing}"
    for path in re.findall(r"`((?:edge|export)/[\w/]+\.py)`", text):
        assert (ROOT / path).is_file(), f"docs/architecture.md names {path}, which does not exist"


def _imports(f: Path) -> list[str]:
    """Every module ``f`` imports, at the top or inside a function (lazy imports count too)."""
    names = []
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_edge_sources_never_import_tensorflow():
    for f in (ROOT / "edge").rglob("*.py"):
        if f.name == "tensorflow_lite.py":  # the one backend that is TensorFlow, imported only when chosen
            continue
        bad = [n for n in _imports(f) if n.split(".")[0] in ("tensorflow", "keras", "tf_keras")]
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_edge_never_imports_export_and_nothing_imports_the_old_top_level_names():
    """export builds on edge, never the reverse (the CLI names workstation commands by string and
    imports them only when one runs); and every import goes through the one root, ``feredge``: a
    stray ``import edge`` would load a second copy of a module under another name."""
    for f in (ROOT / "edge").rglob("*.py"):
        bad = [n for n in _imports(f) if n.startswith("feredge.export")]
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"
    for folder in ("edge", "export", "src", "tests", "bench", "scripts"):
        for f in (ROOT / folder).rglob("*.py"):
            bad = [n for n in _imports(f) if n.split(".")[0] in ("edge", "export")]
            assert not bad, f"{f.relative_to(ROOT)} imports {bad} (use feredge.edge / feredge.export)"


def test_runtime_core_never_imports_the_daemon_or_the_cli():
    """The core (edge/ outside edge/daemon and edge/cli) is what both phases build on; an import
    the other way would make the core carry the daemon's config and sinks wherever it goes."""
    core = [f for f in (ROOT / "edge").rglob("*.py") if f.relative_to(ROOT / "edge").parts[0] not in ("daemon", "cli")]
    assert any(f.name == "pipeline.py" for f in core)
    for f in core:
        bad = [n for n in _imports(f) if n.startswith(("feredge.edge.daemon", "feredge.edge.cli"))]
        assert not bad, f"{f.relative_to(ROOT)} (runtime core) imports {bad}"


MAX_PARAMS = 6  # positional + keyword-only, not self/cls/*args/**kwargs; more: group them in a dataclass
# Public functions users call by keyword, documented in their docstrings, may take a little more.
PUBLIC_API = {"read_heldout": 7}


def test_no_long_parameter_lists():
    long_lists = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg not in ("self", "cls")]
                    if len(names) > PUBLIC_API.get(node.name, MAX_PARAMS):
                        long_lists.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}() has {len(names)}")
    assert not long_lists, f"more than {MAX_PARAMS} parameters: {long_lists}"
