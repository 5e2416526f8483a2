"""The library installs on its own: one wheel, no third-party dependency, typed and versioned."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import weighted_cache

PACKAGE_DIR = Path(weighted_cache.__file__).resolve().parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library's wheel, built offline from a copy of its directory."""
    work = tmp_path_factory.mktemp("lib")
    source = work / "weighted_cache"
    shutil.copytree(PACKAGE_DIR, source,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(work / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )
    (built,) = (work / "dist").glob("weighted_cache-*.whl")
    return built


def _pip(python: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args],
                            check=True, capture_output=True, text=True)
    return result.stdout


def test_a_fresh_venv_installs_the_library_and_nothing_else(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --no-index: any declared dependency would have to come from somewhere, and fail here.
    _pip(python, "install", "--quiet", "--no-index", str(wheel))
    installed = {p["name"] for p in json.loads(_pip(python, "list", "--format", "json"))}
    assert installed == {"weighted-cache"}
    probe = subprocess.run(
        [str(python), "-c",
         "import sys, weighted_cache as w; c = w.Cache(10); c['a'] = 1; "
         "print(w.__version__, c['a'], sorted(m for m in sys.modules if m.startswith('measure')))"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    assert probe.stdout.split() == [weighted_cache.__version__, "1", "[]"]


def test_the_wheel_declares_no_dependency(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    assert "Requires-Dist" not in text
    assert f"Version: {weighted_cache.__version__}" in text


def test_the_wheel_ships_py_typed_and_only_the_library(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert "weighted_cache/py.typed" in names
    assert top == {"weighted_cache", wheel.name.split("-")[0] + "-" + weighted_cache.__version__
                   + ".dist-info"}


def test_version_is_a_release_number_listed_in_the_changelog() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", weighted_cache.__version__)
    changelog = (PACKAGE_DIR / "CHANGELOG.md").read_text()
    assert f"## {weighted_cache.__version__}" in changelog
