"""Packaging: the built wheel and sdist carry the license, the metadata and only real files."""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import fsm

ROOT = Path(__file__).resolve().parent.parent
BACKUP_SUFFIXES = (".orig", ".rej", ".bak", ".swp", "~")
pytest.importorskip("hatchling", reason="building needs hatchling (the test extra has it)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel and an sdist built from the working tree, with the installed hatchling."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(out)],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
    )
    wheel = next(out.glob("*.whl"))
    sdist = next(out.glob("*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_the_distribution_has_a_distinctive_name_and_one_version(built: dict[str, Path]) -> None:
    """The wheel is fsm-kernel-lifecycle at fsm.__version__, the only place it is written."""
    meta = _wheel_metadata(built["wheel"])
    assert meta["Name"] == "fsm-kernel-lifecycle"
    assert meta["Version"] == fsm.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]


def test_the_license_ships_and_metadata_is_complete(built: dict[str, Path]) -> None:
    """LICENSE (MIT) is in the wheel and the sdist; the license and classifiers are set."""
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    with zipfile.ZipFile(built["wheel"]) as archive:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    with tarfile.open(built["sdist"]) as archive:
        assert any(n.endswith("/LICENSE") for n in archive.getnames())
    meta = _wheel_metadata(built["wheel"])
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    assert "Framework :: Trio" in classifiers and "Typing :: Typed" in classifiers


def test_no_backup_file_ships(built: dict[str, Path]) -> None:
    """Neither archive contains an editor backup or a patch leftover (.orig, .rej, ...)."""
    with zipfile.ZipFile(built["wheel"]) as archive:
        names = archive.namelist()
    with tarfile.open(built["sdist"]) as archive:
        names += archive.getnames()
    assert [n for n in names if n.endswith(BACKUP_SUFFIXES)] == []
    assert any(n.endswith("fsm/py.typed") for n in names)


def test_the_test_extra_does_not_force_marimo() -> None:
    """pip install '.[test]' does not pull marimo in; the marimo extra does."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not [d for d in extras["test"] if "marimo" in d]
    assert any(d.startswith("marimo") for d in extras["marimo"])


def test_the_command_prints_the_version() -> None:
    """fsm --version prints the package version."""
    result = subprocess.run(
        [sys.executable, "-m", "fsm", "--version"], capture_output=True, text=True,
        check=False, timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"fsm {fsm.__version__}"


def test_fsm_marimo_without_its_extra_says_which_extra() -> None:
    """Importing fsm.marimo without httpx fails with an ImportError naming the marimo extra."""
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "try:\n    import fsm.marimo\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'fsm-kernel-lifecycle[marimo]'" in done.stdout
