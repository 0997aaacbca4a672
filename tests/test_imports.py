"""The library never imports its programs (train/, convert/), bench/ or tests/, and importing it never imports
torch: checked on every import statement in pixart_jax/ (function-local ones included) and in a fresh process."""
import ast
import os
import subprocess
import sys

from tests.helpers.paths import ROOT

FORBIDDEN = {"train", "convert", "bench", "tests"}


def imported_modules(path):
    """Every absolute module name an `import` / `from ... import` statement in `path` names."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_library_imports_no_program_bench_or_tests():
    files = sorted((ROOT / "pixart_jax").rglob("*.py"))
    assert len(files) > 30
    offending = [f"{path.relative_to(ROOT)}: {name}" for path in files for name in imported_modules(path)
                 if name.split(".")[0] in FORBIDDEN]
    assert offending == []


def test_importing_every_library_module_loads_no_program_and_no_torch():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "pixart_jax").rglob("*.py") if "torch" not in p.parts)
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN | {'torch'})!r}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_installed_package_is_pixart_jax_alone(tmp_path):
    """Outside the checkout, the environment's install provides `pixart_jax` and no top-level train/convert/tests."""
    code = ("import importlib.util, json\n"
            "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
            "['pixart_jax', 'train', 'convert', 'bench', 'tests']}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ('{"pixart_jax": true, "train": false, "convert": false, "bench": false, '
                                  '"tests": false}')
