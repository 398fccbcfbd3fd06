"""`pip install -e .` keeps a torch the user already has (any torch >= 2.1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def torch_requirement():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the pip test below runs everywhere
    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
    return req


@pytest.mark.parametrize("version", ["2.1.0", "2.4.1+cu121", "2.13.0", "2.13.0+cpu", "3.0.0"])
def test_torch_requirement_accepts_other_versions(version):
    assert torch_requirement().specifier.contains(version, prereleases=False)


def test_torch_requirement_rejects_too_old():
    assert not torch_requirement().specifier.contains("2.0.1")


def _older_torch_the_environment_accepts() -> str:
    """The oldest torch 2.x release >= 2.1 that every installed distribution other than this
    package accepts (fresh installs take the newest releases of our unpinned dependencies,
    e.g. accelerate, whose own torch floor moves over time)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    floors = []
    for dist in metadata.distributions():
        if dist.metadata["Name"] == "fusion-bench-larv":
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.name == "torch" and (req.marker is None or req.marker.evaluate({"extra": ""})):
                floors.append(req.specifier)
    installed = Version(metadata.version("torch")).release
    for minor in range(1, installed[1]):
        candidate = f"2.{minor}.0"
        if all(spec.contains(candidate) for spec in floors):
            return candidate
    pytest.fail(f"no torch 2.x older than the installed {metadata.version('torch')} satisfies the environment: {floors}")


def _source_copy(tmp_path):
    """The files a build of this package reads, copied, so that it writes nothing into the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("fusion_bench_larv", "config", "hydra_plugins"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_pip_install_keeps_an_installed_torch(tmp_path):
    """`pip install --dry-run -e .` where an older torch is installed: pip installs only this package.

    The installed torch is a bare ``dist-info`` put first on ``sys.path`` (PYTHONPATH), so pip
    sees that version; every other requirement is satisfied by this venv. The version is the
    oldest 2.x >= 2.1 that the venv's other distributions accept. Offline: ``--no-index`` and
    ``--no-build-isolation`` (this venv's setuptools builds the metadata).
    """
    version = _older_torch_the_environment_accepts()
    assert torch_requirement().specifier.contains(version)
    fake = tmp_path / "site" / f"torch-{version}.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (fake / "INSTALLER").write_text("pip\n")
    src = _source_copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    seen = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert seen.stdout.strip() == version, seen.stderr
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "--no-cache-dir",
         "--quiet", "--report", str(report), "-e", str(src)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    installs = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]
    assert installs == [("fusion-bench-larv", "0.1.0")]


def test_wheel_carries_the_shipped_weights_and_configs(tmp_path):
    """A non-editable install gets the shipped tinyclip_synth weights (synth/shipped.py) and the
    Hydra configs: the wheel holds every file the shipped index lists, with its size."""
    import zipfile

    from fusion_bench_larv.synth.shipped import ShippedAssets

    src = _source_copy(tmp_path)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "--no-cache-dir",
         "--quiet", "-w", str(tmp_path / "dist"), str(src)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every folder of package data is a listed package: no "Package would be ignored" warning,
    # which pip shows at every install and which announces that such files will be left out
    assert "would be ignored" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fusion_bench_larv-*.whl")
    with zipfile.ZipFile(wheel) as z:
        sizes = {info.filename: info.file_size for info in z.infolist()}
    source = ShippedAssets.find()
    assert source is not None
    prefix = "fusion_bench_larv/synth/shipped/tinyclip_synth_seed0/"
    assert prefix + "index.json" in sizes
    for name, record in source.index["files"].items():
        assert sizes.get(prefix + name) == record["bytes"], name
    assert "fusion_bench_larv_config/method/larv_iso_c.yaml" in sizes
