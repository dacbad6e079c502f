"""bench/ must not import from tests/: test scaffolding is free to change under the tests' needs, and a figure
must stay re-derivable from the benchmark alone. Tests may import bench/ (the parity corpus lives there), never
the reverse; the embedded MiniLM's directory comes from export/models.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

BENCH = REPO / "bench"


def _bench_sources() -> list[Path]:
    """bench/'s own modules: not the peers' throwaway venvs it builds inside bench/ (bench/.venv-infinity)."""
    return [f for f in sorted(BENCH.rglob("*.py")) if not any(part.startswith(".") for part in
                                                               f.relative_to(BENCH).parts)]


def _test_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if name == "tests" or name.startswith("tests.")]
    return found


def test_no_bench_module_imports_from_tests() -> None:
    files = _bench_sources()
    assert len(files) > 10
    offenders = {str(f.relative_to(REPO)): hits for f in files if (hits := _test_imports(f.read_text()))}
    assert offenders == {}


def test_no_bench_module_names_tests_in_an_import_string() -> None:
    """Also the textual forms ast cannot see: importlib.import_module("tests...."), __import__, -m tests...."""
    pattern = re.compile(r"""(import_module|__import__)\(\s*["']tests[."']|["']-m["'],\s*["']tests\.""")
    offenders = [str(f.relative_to(REPO)) for f in _bench_sources() if pattern.search(f.read_text())]
    assert offenders == []


def test_the_check_sees_lazy_and_plain_imports() -> None:
    source = "import tests.x\nfrom tests import y\n\ndef f():\n    from tests.tiny_checkpoint import minilm_dir\n"
    assert len(_test_imports(source)) == 3
    assert _test_imports("from bench.parity_corpus import parity_sentences\nimport testsuite\n") == []
