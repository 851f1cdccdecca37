"""The book as a product: version floors, licences, the conda environment, the Pages workflow,
the book's configuration (offline MathJax, no widget manager, pinned theme), static twins of
the explorers, and the readers' downloads. Reads files only; no browser (test_browser_check.py
has the checks that need one)."""
from __future__ import annotations

import importlib.util
import re
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))  # make_downloads imports headless_chromium beside it
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


floors = _script("floors")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


# --- floors ---------------------------------------------------------------------------

def test_floor_pins_turn_lower_bounds_into_pins():
    reqs = ["timm>=1.0.16", "jupyter-book>=1.0.4,<2", "Foo_Bar[x] >= 2.0 ; python_version>'3'", "numpy>=1.24"]
    assert floors.floor_pins(reqs) == ["timm==1.0.16", "jupyter-book==1.0.4", "foo-bar==2.0", "numpy==1.24"]
    assert floors.floor_pins(reqs, skip={"timm", "numpy"}) == ["jupyter-book==1.0.4", "foo-bar==2.0"]
    with pytest.raises(ValueError, match="no lower bound"):
        floors.floor_pins(["captum"])
    with pytest.raises(ValueError, match="no lower bound"):
        floors.floor_pins(["captum<1"])


def test_every_declared_dependency_has_a_floor_and_the_known_false_ones_are_gone(capsys):
    # the runtime dependencies and every extra: floors.py must pin each one
    assert floors.main(["--extras", "test,book,dev"]) == 0
    pins = dict(line.split("==") for line in capsys.readouterr().out.split())
    assert "chapter6-utils" not in pins  # "dev" refers back to the project itself
    assert set(pins) >= {"torch", "torchvision", "timm", "ipywidgets", "pytest", "jupyter-book", "jupyterlab"}

    def version(v):
        return tuple(int(x) for x in v.split("."))

    # timm.layers.Attention (attention.py) exists from timm 1.0.16; ipywidgets 7.6.0-7.6.3 import
    # ipython_genutils without declaring it; Figure.get_supxlabel (tests) is matplotlib 3.8;
    # the tests hand nbformat Paths and let it make cell ids.
    assert version(pins["timm"]) >= (1, 0, 16)
    assert version(pins["ipywidgets"]) >= (7, 6, 4)
    assert version(pins["matplotlib"]) >= (3, 8)
    assert version(pins["nbformat"]) >= (5, 1, 3)  # 5.0.x cannot read a Path; 5.1.0-5.1.2 fail on Python 3.11
    # Colab's torch 2.11 / torchvision 0.26 must stay inside the ranges (never reinstalled there)
    assert version(pins["torch"]) <= (2, 11) and version(pins["torchvision"]) <= (0, 26)


def test_floors_script_is_wired():
    text = (ROOT / "scripts" / "test_floors.sh").read_text(encoding="utf-8")
    assert "scripts/floors.py" in text and "--import-check" in text and "pytest" in text
    assert ".venv-floors" in (ROOT / ".gitignore").read_text(encoding="utf-8")


# --- licence ---------------------------------------------------------------------------

def test_licence_is_an_spdx_expression_with_both_texts():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    files = project["license-files"]
    assert {"LICENSE", "LICENSE-CC-BY-4.0.txt"} <= set(files)
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    cc = (ROOT / "LICENSE-CC-BY-4.0.txt").read_text(encoding="utf-8")
    assert cc.startswith("Creative Commons Attribution 4.0 International") and "Section 1" in cc
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", setuptools).group(1).split("."))
    assert floor >= (77, 0, 1), "license = 'SPDX' and license-files need setuptools 77"


def test_prose_licence_is_stated_where_readers_look():
    assert "CC BY 4.0" in (ROOT / "README.md").read_text(encoding="utf-8")
    footer = CONFIG["html"]["extra_footer"]
    assert "MIT" in footer and "CC BY 4.0" in footer
    card = nbformat.read(ROOT / "book" / "model_card.ipynb", as_version=4)
    assert any("CC BY 4.0" in c.source for c in card.cells if c.cell_type == "markdown")


# --- the book's configuration -------------------------------------------------------------

def test_book_serves_its_own_mathjax_and_no_widget_manager():
    assert "sphinx-mathjax-offline" in CONFIG["sphinx"]["extra_extensions"]
    assert CONFIG["sphinx"]["config"]["nb_ipywidgets_js"] == {}, "myst-nb would load require.js from a CDN"
    book = PYPROJECT["project"]["optional-dependencies"]["book"]
    assert any(r.startswith("sphinx-mathjax-offline") for r in book)


def test_theme_is_pinned():
    book = PYPROJECT["project"]["optional-dependencies"]["book"]
    for name in ("sphinx-book-theme", "pydata-sphinx-theme"):
        (req,) = [r for r in book if r.startswith(name + "=")]
        assert re.fullmatch(rf"{name}==[\d.]+", req), f"{req}: the book's look depends on it; pin it"


_EXPLORER = re.compile(r"\bwidgets\.\w+_explorer\(")
_GRID = re.compile(r"\bwidgets\.\w+_grid\(")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_explorers_have_a_static_twin_and_no_output_in_the_book(path):
    """In the book an explorer is a dead slider: its cell is tagged remove-output and a code cell
    next to it (before or after, markdown between is fine) draws the static grid."""
    cells = nbformat.read(path, as_version=4).cells
    code = [c for c in cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        if not _EXPLORER.search(cell.source):
            continue
        assert "remove-output" in cell.metadata.get("tags", []), (
            f"explorer cell {cell.get('id')} needs the tag remove-output (the book shows its static grid)")
        neighbours = code[max(0, i - 2):i] + code[i + 1:i + 3]
        assert any(_GRID.search(c.source) for c in neighbours), (
            f"explorer cell {cell.get('id')} has no static grid (widgets.*_grid) beside it")


# --- environment.yml -------------------------------------------------------------------

def test_environment_has_jupyterlab_and_cpu_torch():
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    env = yaml.safe_load(text)
    deps = env["dependencies"]
    assert any(isinstance(d, str) and d.startswith("jupyterlab") for d in deps)
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    assert any(line.startswith("--extra-index-url") and line.rstrip("/").endswith("/whl/cpu") for line in pip)
    assert any(line.startswith("torch") for line in pip) and any(line.startswith("-e .") for line in pip)
    assert "CUDA" in text  # the comment that says how to get it instead


# --- the Pages workflow ---------------------------------------------------------------------

WORKFLOW = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text(encoding="utf-8"))
TRIGGERS = WORKFLOW.get("on", WORKFLOW.get(True))  # YAML 1.1 reads a bare `on` as True


def test_workflow_actions_are_pinned_to_commits():
    text = (ROOT / ".github" / "workflows" / "pages.yml").read_text(encoding="utf-8")
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}", action), f"{action}: pin a commit SHA"
        assert re.search(r"#\s*v\d", comment), f"{action}: name the release in a comment"


def test_workflow_least_privilege_pull_requests_and_deploy_from_main_only():
    assert "pull_request" in TRIGGERS and TRIGGERS["push"]["branches"] == ["main"]
    assert WORKFLOW["permissions"] == {}, "grant nothing at the top; each job asks"
    jobs = WORKFLOW["jobs"]
    for name, job in jobs.items():
        perms = job.get("permissions", {})
        if name == "deploy":
            assert perms == {"pages": "write", "id-token": "write"}
            assert "main" in job["if"] and "pull_request" in job["if"]
        else:
            assert perms == {"contents": "read"}, f"{name}: {perms}"
    assert "main" in jobs["build"]["if"]
    steps = [s for job in jobs.values() for s in job["steps"]]
    assert all(s["with"].get("persist-credentials") is False for s in steps if "actions/checkout" in s.get("uses", ""))
    assert all(s["with"].get("cache") == "pip" for s in steps if "actions/setup-python" in s.get("uses", ""))
    assert any("bash .ci/run" in s.get("run", "") for s in jobs["test"]["steps"])
    assert jobs["test"]["env"]["CHAPTER6_OFFLINE"] == "1"
    assert any("test_floors.sh" in s.get("run", "") for s in jobs["floors"]["steps"])
    assert WORKFLOW["env"]["CHROMIUM"] == "google-chrome"


# --- downloads ---------------------------------------------------------------------------

def test_downloads_zip_holds_every_notebook_and_is_reproducible(tmp_path):
    downloads = _script("make_downloads")
    docs = downloads.toc_documents()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    assert docs[0] == toc["root"] and docs[1:] == [c["file"] for c in toc["chapters"]]
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    names = downloads.make_zip(first)
    downloads.make_zip(second)
    assert first.read_bytes() == second.read_bytes(), "the same sources must give the same zip"
    expected = [f"notebooks/{p.name}" for p in NOTEBOOKS]
    assert set(expected) <= set(names) and {"README.txt", "LICENSE", "LICENSE-CC-BY-4.0.txt"} <= set(names)
    with zipfile.ZipFile(first) as archive:
        nb = nbformat.reads(archive.read(f"chapter6-notebooks/{expected[0]}").decode(), as_version=4)
        readme = archive.read("chapter6-notebooks/README.txt").decode()
        assert nb.cells and readme.count(CONFIG["repository"]["url"]) >= 1


def test_intro_links_both_downloads():
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    downloads = _script("make_downloads")
    for name in (downloads.ZIP_NAME, downloads.PDF_NAME):
        assert f'href="../downloads/{name}"' in intro
