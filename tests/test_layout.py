"""The package's layout: the method never imports the paper lab; no module grows past a page count."""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fusion_bench_larv"
METHOD_MODULES = ["blocks", "linalg", "batching", "rank_cache", "diagnostics", "gates", "gate_table", "schedule", "state_dicts",
                  "defaults", "settings", "watched_pool", "algorithm", "report", "plots", "atomic", "checkpoints"]
#: generated-data tables, allowed to be long
DATA_MODULES = {"synth/tasks.py"}


def test_the_method_never_imports_the_lab():
    code = ("import importlib, sys\n"
            f"for m in {METHOD_MODULES!r}:\n"
            "    importlib.import_module('fusion_bench_larv.' + m)\n"
            "print(sorted(k for k in sys.modules if k.startswith('fusion_bench_larv.paper')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                                         if str(p.relative_to(PACKAGE)) not in DATA_MODULES))
def test_no_module_is_over_about_450_lines(path):
    assert len((PACKAGE / path).read_text().splitlines()) <= 460, path


def test_the_named_classes_are_plain_definitions():
    source = (PACKAGE / "algorithm.py").read_text()
    for name in ("LARVSimpleAverage", "LARVTaskArithmetic", "LARVTiesMerging", "LARVTSVM", "LARVIsoC",
                 "LARVIsoCTS", "LARVDareTaskArithmetic", "LARVWUDI", "LARVMagMax"):
        assert f"\nclass {name}(LARVAlgorithm):" in source, name
