"""The import rules of DESIGN.md: contract and the bundle runtime are shared; training never
imports service (nor fastapi or redis); service never imports training or torch; contract
imports only the standard library, numpy and pyarrow; the runtime only those, onnxruntime
and contract."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "contract": {"training", "service", "torch", "fastapi", "redis", "pandas", "onnxruntime"},
    "training": {"service", "fastapi", "redis", "starlette", "uvicorn"},
    "service": {"training", "torch"},
    "runtime": {"training", "service", "torch", "fastapi", "redis", "pandas"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_import_rules(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    bad = []
    for f in files:
        hit = imported_roots(f) & FORBIDDEN[package]
        if hit:
            bad.append(f"{f.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_contract_imports_only_stdlib_numpy_pyarrow() -> None:
    allowed = {"numpy", "pyarrow", "contract", "__future__"} | set(sys.stdlib_module_names)
    for f in sorted((ROOT / "contract").rglob("*.py")):
        extra = imported_roots(f) - allowed
        assert not extra, f"{f.relative_to(ROOT)} imports {sorted(extra)}"


def test_runtime_imports_only_numpy_onnxruntime_pyarrow_and_contract() -> None:
    allowed = {"numpy", "onnxruntime", "pyarrow", "contract", "runtime", "__future__"}
    allowed |= set(sys.stdlib_module_names)
    for f in sorted((ROOT / "runtime").rglob("*.py")):
        extra = imported_roots(f) - allowed
        assert not extra, f"{f.relative_to(ROOT)} imports {sorted(extra)}"


def test_boundary_checker_detects_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import torch\nfrom training.sim import env\n")
    assert {"torch", "training"} <= imported_roots(f)
