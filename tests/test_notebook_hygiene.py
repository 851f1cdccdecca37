"""Notebook hygiene: what is committed is clean, runnable in Colab, seeded and listed.

Per-notebook tests are parametrised over the notebooks that exist; with none yet they
collect zero items, while the tests of the checker itself always run.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_cleaner():
    spec = importlib.util.spec_from_file_location(
        "clean_notebooks", ROOT / "scripts" / "clean_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cleaner = _load_cleaner()


def _notebooks(folder: str) -> list[Path]:
    return sorted(
        p for p in (ROOT / folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )


CHAPTER_NOTEBOOKS = _notebooks("notebooks")
ALL_NOTEBOOKS = CHAPTER_NOTEBOOKS + _notebooks("book")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def _toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root") and isinstance(value, str):
                    files.add(str(Path(value).with_suffix("")))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return files


# --- the checker itself -------------------------------------------------------------


def _dirty_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "myenv", "display_name": "My env", "language": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    plot = nbformat.v4.new_code_cell("plt.plot([1, 2])", execution_count=3)
    plot.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    plot.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
    ]
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)\n2", execution_count=4)
    checked.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="1\n"),
        nbformat.v4.new_output("stream", name="stderr", text="a warning\n"),
        nbformat.v4.new_output(
            "execute_result", data={"text/plain": "2", "text/html": "<b>2</b>"}, execution_count=4
        ),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), plot, checked]
    return nb


def test_checker_flags_a_dirty_notebook(tmp_path):
    path = tmp_path / "dirty.ipynb"
    nbformat.write(_dirty_notebook(), path)

    problems = cleaner.notebook_problems(_read(path))
    text = "\n".join(problems)
    assert "widgets" in text
    assert "kernelspec" in text
    assert any(p.startswith("cell 1 ") for p in problems)
    assert any(p.startswith("cell 2 ") for p in problems)
    assert cleaner.main(["--check", str(path)]) == 1
    assert "widgets" in _read(path).metadata, "--check must not write"


def test_cleaning_keeps_only_text_outputs_of_checked_cells(tmp_path):
    path = tmp_path / "dirty.ipynb"
    nbformat.write(_dirty_notebook(), path)

    assert cleaner.main([str(path)]) == 0
    nb = _read(path)
    assert cleaner.notebook_problems(nb) == []
    assert cleaner.main(["--check", str(path)]) == 0
    assert "widgets" not in nb.metadata
    assert nb.metadata.kernelspec == cleaner.KERNELSPEC
    plot, checked = _code_cells(nb)
    assert plot.outputs == [] and plot.execution_count is None
    assert "execution" not in plot.metadata
    assert checked.execution_count == 1, "nbval compares only cells with a count"
    assert [o.output_type for o in checked.outputs] == ["stream", "execute_result"]
    assert checked.outputs[0].name == "stdout" and checked.outputs[0].text == "1\n"
    assert dict(checked.outputs[1].data) == {"text/plain": "2"}
    nbformat.validate(nb)
    raw = path.read_text(encoding="utf-8")
    assert raw.endswith("}\n") and raw.startswith('{\n "cells"'), "nbformat layout, indent 1"


def test_checker_accepts_a_clean_notebook_and_does_not_rewrite_it(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(cleaner.KERNELSPEC)
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=1)
    checked.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    unrun = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)")
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), checked, unrun]
    path = tmp_path / "clean.ipynb"
    nbformat.write(nb, path)
    before = path.stat().st_mtime_ns, path.read_bytes()

    assert cleaner.notebook_problems(_read(path)) == []
    assert cleaner.main(["--check", str(path)]) == 0
    assert cleaner.clean_file(path) is False
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


# --- every committed notebook -------------------------------------------------------


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_notebook_is_clean(path):
    problems = cleaner.notebook_problems(_read(path))
    assert not problems, (
        f"{path.relative_to(ROOT)} is not clean (run python scripts/clean_notebooks.py):\n  "
        + "\n  ".join(problems)
    )


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=_ids(ALL_NOTEBOOKS))
def test_kernelspec_is_python3(path):
    assert _read(path).metadata.get("kernelspec", {}).get("name") == "python3"


_COLAB_GUARD = re.compile(r"""["']google\.colab["']\s+in\s+sys\.modules|import\s+google\.colab""")
_PIP_INSTALL = re.compile(r"^(?P<indent>\s*)[!%]?\s*(?:python3?\s+-m\s+)?pip3?\s+install\b(?P<args>.*)$", re.M)
_FORBIDDEN = {"torch", "torchvision", "timm"}


def _installed_names(args: str) -> set[str]:
    names = set()
    try:
        tokens = shlex.split(args, comments=True)
    except ValueError:  # unbalanced quotes, e.g. a Python expression after the magic
        tokens = args.split()
    for token in tokens:
        if token.startswith("-"):
            continue
        name = re.split(r"[\[<>=!~@; ]", token, maxsplit=1)[0].strip().lower()
        names.add(name)
    return names


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=_ids(CHAPTER_NOTEBOOKS))
def test_first_code_cell_installs_only_in_colab(path):
    cells = _code_cells(_read(path))
    assert cells, "notebook has no code cell"
    source = cells[0].source
    assert _COLAB_GUARD.search(source), (
        "the first code cell must install the package only in Colab "
        '(`if "google.colab" in sys.modules:` or a try/except around `import google.colab`)'
    )
    installs = list(_PIP_INSTALL.finditer(source))
    assert installs, "the first code cell must pip-install chapter6_utils (in Colab)"
    for match in installs:
        assert match.group("indent"), (
            f"`{match.group(0).strip()}` runs everywhere; indent it under the Colab check"
        )
        clash = _installed_names(match.group("args")) & _FORBIDDEN
        assert not clash, f"must not reinstall {sorted(clash)}: Colab already has them"


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=_ids(CHAPTER_NOTEBOOKS))
def test_colab_install_points_at_the_repository(path):
    """Any GitHub URL in the install cell is the one repository URL of _config.yml."""
    source = _code_cells(_read(path))[0].source
    urls = re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", source)
    expected = _repository_url()
    for url in urls:
        assert url.removesuffix(".git") == expected, (
            f"install cell uses {url}; _config.yml's repository.url is {expected}"
        )


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=_ids(CHAPTER_NOTEBOOKS))
def test_notebook_is_in_the_toc(path):
    doc = str(path.relative_to(ROOT).with_suffix(""))
    assert doc in _toc_files(), f"{doc} is missing from _toc.yml"


_SEED = re.compile(r"manual_seed\s*\(|seed_everything\s*\(|\bseed\s*\(")


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=_ids(CHAPTER_NOTEBOOKS))
def test_notebook_sets_a_seed(path):
    code = "\n".join(c.source for c in _code_cells(_read(path)))
    assert _SEED.search(code), (
        "seed the notebook (chapter6_utils.seed_everything(...) or torch.manual_seed(...))"
    )


def test_toc_files_exist():
    for doc in _toc_files():
        assert any((ROOT / f"{doc}{ext}").exists() for ext in (".md", ".ipynb")), (
            f"_toc.yml lists {doc}, which does not exist"
        )


# --- Colab badges (scripts/colab_badges.py) -----------------------------------------


def _load_badges():
    spec = importlib.util.spec_from_file_location("colab_badges", ROOT / "scripts" / "colab_badges.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


badges = _load_badges()


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=_ids(CHAPTER_NOTEBOOKS))
def test_notebook_has_its_colab_badge(path):
    problems = badges.notebook_badge_problems(path)
    assert not problems, (
        f"{path.relative_to(ROOT)}: " + "; ".join(problems) + " (run python scripts/colab_badges.py)"
    )
    cell = _read(path).cells[0]
    rel = path.relative_to(ROOT).as_posix()
    assert cell.source.endswith(f"/blob/main/{rel})") and _repository_url().split("github.com/")[1] in cell.source


def test_readme_lists_every_notebook_with_a_badge():
    assert badges.readme_problems() == []
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in CHAPTER_NOTEBOOKS:
        assert badges.colab_url(path.relative_to(ROOT).as_posix()) in readme


def test_badge_script_is_idempotent_and_follows_the_config(tmp_path):
    (tmp_path / "notebooks").mkdir()
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    (tmp_path / "_config.yml").write_text(
        config.replace(_repository_url(), "https://github.com/someone/fork"), encoding="utf-8"
    )
    (tmp_path / "README.md").write_text(f"# x\n\n{badges.README_START}\nold\n{badges.README_END}\n", encoding="utf-8")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 09 · New"), nbformat.v4.new_code_cell("1")])
    path = tmp_path / "notebooks" / "09_new.ipynb"
    nbformat.write(nb, path)

    assert badges.main(["--root", str(tmp_path), "--check"]) == 1
    assert badges.notebook_badge_problems(path, tmp_path) == ["no Colab badge cell (tag 'colab-badge')"]
    assert badges.main(["--root", str(tmp_path)]) == 0
    first = path.read_bytes(), (tmp_path / "README.md").read_bytes()
    assert badges.main(["--root", str(tmp_path)]) == 0  # a rerun changes nothing
    assert (path.read_bytes(), (tmp_path / "README.md").read_bytes()) == first
    assert badges.main(["--root", str(tmp_path), "--check"]) == 0

    cells = _read(path).cells
    assert len(cells) == 3 and cells[1].source == "# 09 · New"
    assert "github/someone/fork/blob/main/notebooks/09_new.ipynb" in cells[0].source
    assert "remove-cell" in cells[0].metadata.tags  # the book shows its own launch button instead
    assert "someone/fork" in (tmp_path / "README.md").read_text(encoding="utf-8")

    # a moved or edited badge is put back, once
    cells[0].source = "[![Open In Colab](x)](https://colab.research.google.com/github/old/repo)"
    nb = _read(path)
    nb.cells = [nb.cells[1], cells[0], nb.cells[2]]
    nbformat.write(nb, path)
    problems = badges.notebook_badge_problems(path, tmp_path)
    assert any("not the first cell" in p for p in problems) and any("stale" in p for p in problems)
    badges.main(["--root", str(tmp_path)])
    assert [c.cell_type for c in _read(path).cells] == ["markdown", "markdown", "code"]
    assert badges.notebook_badge_problems(path, tmp_path) == []
