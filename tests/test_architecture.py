"""The shape of the code, checked: one name in site-packages, imports that point one way
(and fail the build when one points up), and modules of a readable size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def copy_project(dest: Path) -> Path:
    """The tracked files (links into the design card's folders followed), for building or
    linting a copy without touching the working tree."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src, dst = ROOT / name, dest / name
        if src.is_symlink() and src.is_dir():
            continue  # the links are recreated below, as links
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for link in (ROOT / "keel").iterdir():
        if link.is_symlink():
            (dest / "keel" / link.name).symlink_to(os.readlink(link))
    return dest


@pytest.mark.slow
def test_site_packages_gets_keel_and_nothing_else(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "src")
    # Built with this environment's setuptools (no network), installed into a clean venv.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(project)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Nothing from this checkout on the path: pip would take it for an installed keel.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = next((venv / "lib").glob("python*/site-packages"))
    before = set(os.listdir(site))
    wheel = next((tmp_path / "dist").glob("keel-*.whl"))
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        env=clean,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    added = set(os.listdir(site)) - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"keel"}
    assert len(added) == 2, added
    package = site / "keel"
    for folder in ("actors", "router", "policy", "sandbox", "storage", "evals"):
        assert (package / folder / "__init__.py").is_file(), folder
        assert not (package / folder).is_symlink()


def lint(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(project / "pyproject.toml")],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
    )


def test_the_layers_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "KEPT" in result.stdout


def test_an_upward_import_fails_the_contract(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "src")
    victim = project / "keel" / "core" / "validation.py"
    victim.write_text(victim.read_text() + "\nfrom keel.client import Keel  # upward\n")
    result = lint(project)
    assert result.returncode != 0
    assert "keel.core is not allowed to import keel.client" in result.stdout
    assert "keel.core.validation -> keel.client" in result.stdout


def test_modules_stay_readable() -> None:
    sizes = {
        Path(folder, name): len((Path(folder) / name).read_text().splitlines())
        for folder, _, names in os.walk(ROOT / "keel", followlinks=True)
        for name in names
        if name.endswith(".py")
    }
    assert len(sizes) > 60
    too_big = {str(p): n for p, n in sizes.items() if n > 420}
    assert not too_big, too_big
