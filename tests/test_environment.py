"""pyproject.toml and environment.yml pin the same packages at the same versions."""

import re
import tomllib

import yaml

from cryonb.paths import repo_root


def _name(spec: str) -> str:
    return re.split(r"[=<>!~\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_specs() -> dict[str, str]:
    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]
    # the extras every conda user gets: tests, and the course site (`make book`, its browser test)
    specs = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["book"]
    return {_name(s): s.replace(" ", "") for s in specs}


def _conda_specs() -> dict[str, str]:
    env = yaml.safe_load((repo_root() / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(s): s.replace(" ", "") for s in pip if not s.startswith("-e")}


def test_same_packages_in_both_lists() -> None:
    assert set(_pyproject_specs()) == set(_conda_specs())


def test_same_pins_in_both_lists() -> None:
    conda = _conda_specs()
    for name, spec in _pyproject_specs().items():
        if name == "torch":  # pyproject admits a user-chosen CUDA build; conda pins the CPU default
            assert conda[name] == "torch==2.13.0" and ">=2.13.0" in spec
            continue
        assert "==" in spec, f"{name} is not pinned in pyproject.toml"
        assert conda[name] == spec, f"{name}: pyproject {spec} vs environment.yml {conda[name]}"
