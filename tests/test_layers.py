"""The layers point one way: ranlens.cli -> ranlens.app -> ranlens.model, never back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a side, and the packages its modules may not import
FORBIDDEN = {
    "model": ("ranlens.app", "ranlens.cli"),
    "app": ("ranlens.cli",),
}


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_no_side_imports_upwards(side):
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / side).rglob("*.py"))
        for name in imported_names(path)
        if name.startswith(FORBIDDEN[side]) or name.split(".")[0] in {"app", "model"}
    }
    assert not offenders, sorted(offenders)


def test_the_model_side_loads_without_the_web_side():
    # importing everything under ranlens.model must not pull in FastAPI or the app
    code = (
        "import importlib, pkgutil, sys, ranlens.model as m\n"
        "for info in pkgutil.iter_modules(m.__path__): importlib.import_module('ranlens.model.' + info.name)\n"
        "bad = sorted(n for n in sys.modules if n.startswith(('ranlens.app', 'ranlens.cli', 'fastapi')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_server_does_not_import_what_only_training_needs():
    """Start time: all of torchvision (with torch._dynamo) cost the server about 2 s; training-only
    code (DataLoader workers, distributed, plotting) has no place in it either."""
    code = ("import sys, ranlens.app.main; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'matplotlib.pyplot', 'torch.distributed.run', "
            "'ranlens.model.train', 'ranlens.model.stream') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
