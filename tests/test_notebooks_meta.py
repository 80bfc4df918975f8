"""Notebooks and profiles agree: one tagged parameters cell, knobs only (every setting in the spec), and a
notebook opened by hand has exactly the defaults of params/quick.yaml, so it trains what `make reproduce` trains."""

import re
from pathlib import Path

import jupytext
import pytest
import yaml

from cryonb import CryoNBError
from cryonb.paths import repo_root
from cryonb.runner import RUNNER_PARAMETERS, check_profile, list_notebooks, notebook_defaults
from cryonb.spec import list_profiles, load_profile

NOTEBOOKS = list_notebooks()
#: what a notebook's parameters cell must say for the runner's own parameters when opened by hand
HAND_DEFAULTS = {"profile": "quick", "results_dir": "results/quick", "work_dir": "runs/quick", "spec": None}


def default_mismatches(notebooks: list[Path], profile: str = "quick") -> list[str]:
    """Every difference between the notebooks' parameters cells and the profile's ``notebooks:`` knobs."""
    knobs = load_profile(profile).notebooks
    problems = []
    for path in notebooks:
        defaults = notebook_defaults(path)
        for name, value in HAND_DEFAULTS.items():
            if defaults.get(name, "<missing>") != value:
                problems.append(f"{path.stem}: {name} = {defaults.get(name, '<missing>')!r}, expected {value!r}")
        own = {k: v for k, v in defaults.items() if k not in RUNNER_PARAMETERS}
        listed = knobs.get(path.stem, {})
        for name in sorted(set(own) | set(listed)):
            if name not in listed:
                problems.append(f"{path.stem}: parameter {name} is not in params/{profile}.yaml notebooks.{path.stem}")
            elif name not in own:
                problems.append(f"{path.stem}: params/{profile}.yaml sets {name}, which the notebook does not declare")
            elif own[name] != listed[name]:
                problems.append(f"{path.stem}: {name} = {own[name]!r} in the notebook, {listed[name]!r} in params/{profile}.yaml")
    return problems


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_check.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupytext_header_with_kernelspec(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n"), f"{path.name}: no jupytext header"
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_declaring_runner_parameters(path: Path) -> None:
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters' (papermill injects at the top when none is)"
    missing = set(RUNNER_PARAMETERS) - set(notebook_defaults(path))
    assert not missing, f"{path.name}: parameters cell lacks {missing}"


def test_notebook_defaults_are_the_quick_profile() -> None:
    assert default_mismatches(NOTEBOOKS) == []


def test_a_planted_default_difference_is_found(tmp_path: Path) -> None:
    source = next(p for p in NOTEBOOKS if p.stem == "06_gradcam")
    planted = tmp_path / source.name
    planted.write_text(source.read_text().replace("n_volumes = 40", "n_volumes = 41", 1))
    assert default_mismatches([planted]) == ["06_gradcam: n_volumes = 41 in the notebook, 40 in params/quick.yaml"]
    extra = tmp_path / "07_cosnet_oneshot.py"
    extra.write_text(next(p for p in NOTEBOOKS if p.stem == extra.stem).read_text().replace('spec = None', 'spec = None\nlr = 0.1', 1))
    assert default_mismatches([extra]) == ["07_cosnet_oneshot: parameter lr is not in params/quick.yaml notebooks.07_cosnet_oneshot"]


def _spec_keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _spec_keys(v)}
    return set()


@pytest.mark.parametrize("profile", ["quick", "paper", "smoke"])
def test_profile_is_valid_and_knobs_are_not_settings(profile: str) -> None:
    assert profile in list_profiles()
    loaded = load_profile(profile)
    check_profile(loaded)
    settings = _spec_keys(loaded.raw_spec) - {"cssl", "cosnet"}
    for path in NOTEBOOKS:
        clash = (set(notebook_defaults(path)) - set(RUNNER_PARAMETERS)) & settings
        assert not clash, f"{path.stem}: {sorted(clash)} are spec settings; read them from run.spec instead"


def _mappings(node: yaml.Node, seen: set[int]) -> list[yaml.MappingNode]:
    """Every mapping node once (an alias is the same node object, so it is not a second copy)."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    found = [node] if isinstance(node, yaml.MappingNode) else []
    children = [v for kv in node.value for v in kv] if isinstance(node, yaml.MappingNode) else node.value if isinstance(node, yaml.SequenceNode) else []
    for child in children:
        found += _mappings(child, seen)
    return found


def repeated_settings(text: str) -> list[str]:
    """Keys given twice in one mapping, and blocks of two or more settings written out twice (not as an alias)."""
    problems, blocks = [], {}
    for mapping in _mappings(yaml.compose(text), set()):
        keys = [k.value for k, _ in mapping.value]
        problems += [f"key {k!r} twice in one mapping (line {mapping.start_mark.line + 1})" for k in sorted({k for k in keys if keys.count(k) > 1})]
        if len(keys) >= 2 and all(isinstance(v, yaml.ScalarNode) for _, v in mapping.value):
            content = tuple(sorted((k.value, v.value) for k, v in mapping.value))
            if content in blocks:
                problems.append(f"the block at line {mapping.start_mark.line + 1} repeats line {blocks[content]}")
            blocks.setdefault(content, mapping.start_mark.line + 1)
    return problems


@pytest.mark.parametrize("profile", ["quick", "paper", "smoke"])
def test_no_setting_appears_twice(profile: str) -> None:
    assert repeated_settings((repo_root() / "params" / f"{profile}.yaml").read_text()) == []


def test_repeated_settings_are_found() -> None:
    assert repeated_settings("a: {lr: 1, lr: 2}") == ["key 'lr' twice in one mapping (line 1)"]
    assert repeated_settings("a: {lr: 1, epochs: 2}\nb: {epochs: 2, lr: 1}\n") == ["the block at line 2 repeats line 1"]
    assert repeated_settings("a: &t {lr: 1, epochs: 2}\nb: *t\n") == []  # an anchor is written once


def test_unknown_notebook_section_or_knob_is_an_error(tmp_path: Path) -> None:
    loaded = load_profile("smoke")
    with pytest.raises(CryoNBError, match=r"notebooks\.99_nothing: no such notebook"):
        check_profile(type(loaded)(**{**loaded.__dict__, "notebooks": {"99_nothing": {"x": 1}}}))
    with pytest.raises(CryoNBError, match=r"notebooks\.07_cosnet_oneshot: \['lr'\] are not parameters of 07_cosnet_oneshot"):
        check_profile(type(loaded)(**{**loaded.__dict__, "notebooks": {"07_cosnet_oneshot": {"lr": 1}}}))


def test_profile_names_cannot_leave_params() -> None:
    for name in ("../params/smoke", "/etc/passwd", "smoke/../quick", ""):
        with pytest.raises(CryoNBError, match="expected a name of letters, digits"):
            load_profile(name)


def test_no_committed_ipynb_sources() -> None:
    assert not list((repo_root() / "notebooks").glob("*.ipynb")) or (repo_root() / ".gitignore").read_text().count("notebooks/*.ipynb")


def exercises_and_solutions(path: Path) -> tuple[list[int], list[int]]:
    """The numbered exercises of a notebook's *Try it yourself* cell, and the numbers of the answer-key cells
    (tagged ``solution``, starting ``# Solution N``) between it and the next markdown cell."""
    cells = jupytext.read(path).cells
    at = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Try it yourself" in c.source)
    exercises = [int(m) for m in re.findall(r"^(\d+)\. ", cells[at].source.split("## Try it yourself", 1)[1], flags=re.M)]
    solutions = []
    for cell in cells[at + 1:]:
        if cell.cell_type == "markdown":
            break
        assert "solution" in cell.metadata.get("tags", []) and "hide-cell" in cell.metadata.get("tags", []), \
            f"{path.name}: a cell after 'Try it yourself' is not tagged solution + hide-cell:\n{cell.source[:200]}"
        match = re.match(r"# Solution (\d+)", cell.source)
        assert match, f"{path.name}: an answer key does not start with '# Solution N':\n{cell.source[:200]}"
        solutions.append(int(match.group(1)))
    return exercises, solutions


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_an_answer_key(path: Path) -> None:
    exercises, solutions = exercises_and_solutions(path)
    assert exercises, f"{path.name}: no numbered exercise under 'Try it yourself'"
    assert solutions == exercises, f"{path.name}: exercises {exercises}, answer keys {solutions}"


def test_a_missing_answer_key_is_found(tmp_path: Path) -> None:
    source = next(p for p in NOTEBOOKS if p.stem == "05_significance")
    planted = tmp_path / source.name
    planted.write_text(source.read_text().replace("# Solution 3", "# Solution 4", 1))
    assert exercises_and_solutions(planted) == ([1, 2, 3], [1, 2, 4])
