"""The course site: pages made from executed notebooks (unit tests), and the built site in headless Chromium.

The browser test builds the site from the committed ``results/quick/`` (nothing is executed), serves it on
127.0.0.1 and loads every page; it skips with the reason when Chromium or the ``book`` extra is missing.
"""

import json
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

from cryonb import CryoNBError
from cryonb.book import (
    HIDE_TAG,
    SOLUTION_TAG,
    WIDGET_MIME,
    claims_table,
    page_notebook,
    readme_section,
)
from cryonb.colab import BADGE_IMAGE
from cryonb.paths import repo_root

PROFILE = "quick"
RESULTS = repo_root() / "results" / PROFILE


def _source(tmp_path: Path) -> Path:
    text = """# %% [markdown]
# # 99 · A tiny notebook
#
# [![Open In Colab](BADGE)](LINK)

# %% tags=["parameters"]
profile = "quick"

# %%
print(1 + 1)

# %% [markdown]
# ## Try it yourself
# 1. Add one.

# %% tags=["solution", "hide-cell"]
# Solution 1
print(2 + 1)

# %% [markdown]
# ## Further reading
""".replace("BADGE", BADGE_IMAGE).replace("LINK", "https://colab.research.google.com/x")
    path = tmp_path / "99_tiny.py"
    path.write_text(text)
    return path


def _executed_without_solution(source: Path, tmp_path: Path) -> Path:
    """What an older run wrote: the notebook before its answer key existed, with outputs and a widget view."""
    nb = jupytext.read(source)
    nb.cells = [c for c in nb.cells if SOLUTION_TAG not in c.metadata.get("tags", [])]
    code = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("print"))
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n"),
                    nbformat.v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "x"}, "text/plain": "VBox()"})]
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
        cell.execution_count = count
    nb.metadata["widgets"] = {"state": {}}
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_page_puts_in_the_answer_key_folded_after_the_exercises(tmp_path: Path) -> None:
    source = _source(tmp_path)
    page, unexecuted = page_notebook(_executed_without_solution(source, tmp_path), source, PROFILE)
    sources = [c.source.splitlines()[0] for c in page.cells]
    assert unexecuted == 1
    assert sources.index("# Solution 1") == sources.index("## Try it yourself") + 1
    solution = next(c for c in page.cells if c.source.startswith("# Solution 1"))
    assert HIDE_TAG in solution.metadata["tags"] and solution.outputs == []


def test_page_keeps_outputs_drops_widget_views_and_uses_the_local_badge(tmp_path: Path) -> None:
    source = _source(tmp_path)
    page, _ = page_notebook(_executed_without_solution(source, tmp_path), source, PROFILE)
    ran = next(c for c in page.cells if c.cell_type == "code" and c.source.startswith("print(1"))
    assert [o.get("text") for o in ran.outputs] == ["2\n"]
    assert "widgets" not in page.metadata
    text = "\n".join(c.source for c in page.cells if c.cell_type == "markdown")
    assert BADGE_IMAGE not in text and "../_static/colab-badge.svg" in text
    assert any("executed" in c.source for c in page.cells if c.cell_type == "markdown"), "no note on the unexecuted cell"


def test_readme_and_report_sections_are_found(tmp_path: Path) -> None:
    assert "Laptop path" in readme_section("Workshop guide") and "90-minute" in readme_section("Workshop guide")
    with pytest.raises(CryoNBError, match="no section '## Nothing'"):
        readme_section("Nothing")
    table = claims_table(RESULTS / "REPORT.md")
    assert table.startswith("Claims:") and "| verdict" in table.replace(" ", "").replace("|verdict", "| verdict")
    (tmp_path / "REPORT.md").write_text("# a report without claims\n")
    with pytest.raises(CryoNBError, match="no section"):
        claims_table(tmp_path / "REPORT.md")


# --- the browser test -------------------------------------------------------------------------------------------

def _skip_reason() -> str | None:
    from cryonb.sitecheck import find_chromium

    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme", "websocket") if not _importable(m)]
    if missing:
        return f"the book extra is not installed (missing {missing}): pip install -e '.[book]'"
    if find_chromium() is None:
        return "no Chromium on PATH (apt-get install chromium; .ci/run installs it when it can)"
    return None


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


browser = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    from cryonb.book import build_site

    result = build_site(PROFILE, tmp_path_factory.mktemp("book") / "site")
    print(f"\nsite built in {result.seconds:.1f} s: {len(result.pages)} pages")
    return result


@browser
@pytest.mark.book
def test_site_has_every_page(site) -> None:
    names = {p.relative_to(site.out_dir).as_posix() for p in site.pages}
    notebooks = {f"notebooks/{p.stem}.html" for p in RESULTS.glob("[0-9][0-9]_*.ipynb") if ".partial" not in p.name and ".failed" not in p.name}
    assert notebooks and notebooks <= names
    assert {"index.html", "report.html", "workshop.html", "run.html"} <= names
    index = (site.out_dir / "index.html").read_text()
    assert "verdict" in index and "colab.research.google.com/github/" in index


@browser
@pytest.mark.book
def test_every_page_loads_cleanly_in_chromium(site, tmp_path: Path) -> None:
    from cryonb.sitecheck import check_book, output_figures

    notebooks = sorted(RESULTS.glob("[0-9][0-9]_*.ipynb"))
    figures = {p.stem: output_figures(p) for p in notebooks}
    assert notebooks and all(n > 0 for n in figures.values()), f"an executed notebook holds no figure: {figures}"
    start = time.perf_counter()
    reports = check_book(site.out_dir, site.pages, RESULTS, tmp_path)  # `make test-book` writes results/<profile>/
    print(f"\n{len(reports)} pages checked in Chromium in {time.perf_counter() - start:.1f} s")
    problems = {r.url: r.problems for r in reports if r.problems}
    assert not problems, json.dumps(problems, indent=1)
    shown = {Path(r.url).stem: r.figures for r in reports if "/notebooks/" in r.url}
    assert all(shown[stem] >= n for stem, n in figures.items()), (shown, figures)
    for png in ("landing.png", "notebook-01_simulation.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 400_000, f"{png}: not a small PNG ({len(data)} bytes)"


@browser
@pytest.mark.book
def test_the_checker_finds_planted_faults(tmp_path: Path) -> None:
    from cryonb.sitecheck import check_site

    (tmp_path / "good.html").write_text('<html><head><link rel="icon" href="data:,"></head><body><p id="here">ok</p>'
                                        '<a href="bad.html">x</a><a href="#here">h</a></body></html>')
    (tmp_path / "bad.html").write_text('<html><head><link rel="icon" href="data:,"></head><body><img src="missing.png">'
                                       '<a href="nowhere.html">x</a><a href="good.html#absent">y</a>'
                                       '<script>undefined_function()</script>'
                                       '<script src="https://cdn.example.org/lib.js"></script></body></html>')
    good, bad = check_site(tmp_path, [tmp_path / "good.html", tmp_path / "bad.html"], {tmp_path / "bad.html": 1})
    assert good.problems == []
    found = "\n".join(bad.problems)
    for fault in ("missing image", "broken internal link", "broken anchor", "JavaScript exception", "request outside the site",
                  "0 figures shown"):
        assert fault in found, f"{fault!r} not reported in:\n{found}"


def test_book_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from cryonb.book import build_site

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CryoNBError, match=r"notes.txt.*not written by `cryonb book`"):
        build_site(PROFILE, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
