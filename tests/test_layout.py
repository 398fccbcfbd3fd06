"""The package's layout: the root holds the method only, the method imports no wing, no module
grows past 400 lines (the task registry aside), every script under scripts/ parses."""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusion_bench_larv"
SCRIPTS = PACKAGE.parent / "scripts"
#: the method: everything at the package root
METHOD_MODULES = ["__init__", "algorithm", "atomic", "batching", "blocks", "checkpoints", "defaults", "diagnostics",
                  "gate_table", "gates", "linalg", "plots", "rank_cache", "report", "schedule", "settings",
                  "state_dicts", "watched_pool"]
#: the wings: run infrastructure, task pools, the embedded benchmark, the paper lab
WINGS = ["runs", "taskpools", "synth", "paper"]
#: generated-data tables, allowed to be long
DATA_MODULES = {"synth/tasks.py"}


def test_the_root_holds_the_method_and_the_wings_only():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert modules == sorted(METHOD_MODULES), "a new root module: the method, or a wing?"
    packages = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(WINGS)


def test_the_method_never_imports_a_wing():
    code = ("import importlib, sys\n"
            f"for m in {METHOD_MODULES!r}:\n"
            "    importlib.import_module('fusion_bench_larv' + ('' if m == '__init__' else '.' + m))\n"
            f"print(sorted(k for k in sys.modules if k.split('.')[:2] in [['fusion_bench_larv', w] for w in {WINGS!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_wings_are_importable():
    """Every wing module imports (a moved module's stale relative import fails here, not at a user's)."""
    modules = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for w in WINGS
                     for p in (PACKAGE / w).glob("*.py") if p.stem != "__main__")
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                                         if str(p.relative_to(PACKAGE)) not in DATA_MODULES))
def test_no_module_is_over_400_lines(path):
    assert len((PACKAGE / path).read_text().splitlines()) <= 400, path


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.py")))
def test_every_python_script_parses(name):
    """No test imports the research and bench scripts, so a broken edit would otherwise land unseen."""
    path = SCRIPTS / name
    compile(path.read_text(), str(path), "exec")


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_every_shell_script_parses(name):
    out = subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_named_classes_are_plain_definitions():
    source = (PACKAGE / "algorithm.py").read_text()
    for name in ("LARVSimpleAverage", "LARVTaskArithmetic", "LARVTiesMerging", "LARVTSVM", "LARVIsoC",
                 "LARVIsoCTS", "LARVDareTaskArithmetic", "LARVWUDI", "LARVMagMax"):
        assert f"\nclass {name}(LARVAlgorithm):" in source, name
