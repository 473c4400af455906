"""The install path: environment.yml (conda users) lists exactly pyproject's dependencies."""

from __future__ import annotations

import tomllib
import yaml

from tests.conftest import REPO


def _pip_entries() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs one pip: section"
    return list(pip[0]["pip"])


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    assert set(_pip_entries()) == wanted


def test_torch_pins_are_exact() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch==2.14.1" in project["dependencies"]
    assert "torchvision==0.29.1" in project["dependencies"]
    assert "torch==2.14.1" in (REPO / "Makefile").read_text()


def test_console_script_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["wsi-patchgd"] == "wsi_patchgd.cli:main"
