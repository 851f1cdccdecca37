"""The browser check itself: on a tiny hand-made site it must flag a missing image, a
notebook page without its figures and a broken in-book link, and pass a good site.
Needs Chromium (scripts/setup.sh installs it); skipped, visibly, without it."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("browser_check", ROOT / "scripts" / "browser_check.py")
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)

# a valid 1x1 PNG
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201c3a3e6b60000000049454e44ae426082")


def _site(tmp_path, *, figure="fig.png", link="nb.html#fig", produced=1):
    html = tmp_path / "_build" / "html"
    (html / "notebooks").mkdir(parents=True)
    (tmp_path / "_build" / "jupyter_execute" / "notebooks").mkdir(parents=True)
    (html / "fig.png").write_bytes(PNG)
    (html / "index.html").write_text(f'<html><body><main><a href="notebooks/{link}">x</a></main></body></html>')
    (html / "notebooks" / "nb.html").write_text(
        f'<html><body><article><div id="fig" class="cell_output"><img src="../{figure}"></div>'
        "</article></body></html>")
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [
        {"output_type": "display_data", "data": {"image/png": "..."}}]}] * produced
    (tmp_path / "_build" / "jupyter_execute" / "notebooks" / "nb.ipynb").write_text(json.dumps({"cells": cells}))
    return html


def test_counts_the_figures_the_notebook_produced(tmp_path):
    html = _site(tmp_path, produced=3)
    assert bc.executed_figures(html, html / "notebooks" / "nb.html") == 3
    assert bc.executed_figures(html, html / "index.html") is None
    assert [p.name for p in bc.html_pages(html)] == ["index.html", "nb.html"]


chromium = pytest.mark.skipif(bc.find_chromium() is None, reason="no Chromium installed (scripts/setup.sh)")


@chromium
def test_good_site_passes_and_is_photographed(tmp_path, capsys):
    html = _site(tmp_path)
    shots = tmp_path / "shots"
    assert bc.check(html, shots, page_timeout=300, binary=bc.find_chromium()) == 0
    assert (shots / "notebooks__nb.png").stat().st_size > 1000
    assert (shots / "notebooks__nb-figure.png").exists()
    assert "1 figures shown / 1 produced" in capsys.readouterr().out


@chromium
@pytest.mark.parametrize("site, problem", [
    (dict(figure="missing.png"), "image did not load"),
    (dict(produced=2), "1 figures shown, 2 produced"),
    (dict(link="nb.html#nowhere"), "missing anchor nb.html#nowhere"),
    (dict(link="gone.html"), "link to missing file"),
])
def test_broken_sites_fail(tmp_path, capsys, site, problem):
    html = _site(tmp_path, **site)
    assert bc.check(html, tmp_path / "shots", page_timeout=300, binary=bc.find_chromium()) == 1
    assert problem in capsys.readouterr().out


# --- maths, other hosts, widgets, theme ---------------------------------------------------

def _vendored_mathjax() -> Path | None:
    """MathJax as the book serves it: the copy inside the sphinx-mathjax-offline extension."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax"
    return path if (path / "tex-chtml.js").exists() else None


FORMULAS = (r'<p>The score <span class="math notranslate nohighlight">\(S_c(\mathbf{x})\)</span> is split:</p>'
            r'<div class="math notranslate nohighlight">\[\sum_i R_i = f(\mathbf{x})\]</div>')


def _page_site(tmp_path, body, head=""):
    html = tmp_path / "_build" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text(f"<html><head>{head}</head><body><main>{body}</main></body></html>")
    return html


def _problems(html, tmp_path, capsys):
    status = bc.check(html, tmp_path / "shots", page_timeout=300, binary=bc.find_chromium())
    return status, capsys.readouterr().out


@chromium
@pytest.mark.skipif(_vendored_mathjax() is None, reason="sphinx-mathjax-offline not installed (extra 'book')")
def test_formulas_rendered_by_the_local_mathjax_pass_and_are_photographed(tmp_path, capsys):
    html = _page_site(tmp_path, FORMULAS, head='<script defer src="_static/mathjax/tex-chtml.js"></script>')
    (html / "_static").mkdir()
    (html / "_static" / "mathjax").symlink_to(_vendored_mathjax(), target_is_directory=True)
    status, out = _problems(html, tmp_path, capsys)
    assert status == 0, out
    assert "2/2 formulas rendered" in out
    assert (tmp_path / "shots" / "index-maths.png").stat().st_size > 1000


@chromium
def test_formulas_without_mathjax_fail(tmp_path, capsys):
    status, out = _problems(_page_site(tmp_path, FORMULAS), tmp_path, capsys)
    assert status == 1
    assert "2 of 2 formulas not rendered (no MathJax on the page), first: '\\\\(S_c" in out
    assert "raw TeX visible" not in out  # a formula of the source is reported once, as not rendered


@chromium
def test_tex_outside_a_formula_fails(tmp_path, capsys):
    status, out = _problems(_page_site(tmp_path, r"<p>the map \frac{a}{b} of $$x$$</p><pre>\frac ok in code</pre>"),
                            tmp_path, capsys)
    assert status == 1 and out.count("raw TeX visible") == 1 and "ok in code" not in out


@chromium
def test_a_script_from_another_host_fails(tmp_path, capsys):
    html = _page_site(tmp_path, "<p>text</p>", head='<script src="https://cdn.invalid/mathjax/tex.js"></script>')
    status, out = _problems(html, tmp_path, capsys)
    assert status == 1
    assert "names a script or style sheet on another host: https://cdn.invalid/mathjax/tex.js" in out
    assert "loads script from another host: https://cdn.invalid/mathjax/tex.js" in out


@chromium
def test_a_widget_view_fails(tmp_path, capsys):
    view = '<script type="application/vnd.jupyter.widget-view+json">{"model_id": "x"}</script>'
    status, out = _problems(_page_site(tmp_path, f'<div class="cell_output">{view}</div>'), tmp_path, capsys)
    assert status == 1 and "1 Jupyter widget view(s) on the page: a dead widget" in out


THEME = """
<div class="bd-sidebar-primary" id="pst-primary-sidebar" style="width:250px;height:400px">nav
  <button class="btn search-button-field">Search</button></div>
{extra}
<button class="sidebar-toggle primary-toggle" title="Toggle primary sidebar" onclick="{onclick}">=</button>
"""


@chromium
@pytest.mark.parametrize("extra, onclick, problem", [
    ("", "document.getElementById('pst-primary-sidebar').style.display = "
         "document.getElementById('pst-primary-sidebar').style.display ? '' : 'none'", None),
    ("", "", "clicking 'Toggle primary sidebar' did not hide the sidebar"),
    ('<header><input type="search" name="q"></header>',
     "document.getElementById('pst-primary-sidebar').style.display = "
     "document.getElementById('pst-primary-sidebar').style.display ? '' : 'none'", "2 search fields shown"),
])
def test_theme_toggle_and_search_fields(tmp_path, capsys, extra, onclick, problem):
    html = tmp_path / "_build" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text(f"<html><body>{THEME.format(extra=extra, onclick=onclick)}"
                                     "<article><p>text</p></article></body></html>")
    status, out = _problems(html, tmp_path, capsys)
    if problem is None:
        assert status == 0 and "1 search field(s), sidebar toggle hides" in out, out
    else:
        assert status == 1 and problem in out, out


def test_problem_rules_without_a_browser():
    assert bc.external_tags('<script src="https://x.org/a.js"></script><link rel="stylesheet" href="//y.org/b.css">'
                            '<link rel="icon" href="https://x.org/i.png"><script src="_static/a.js"></script>') == [
        "https://x.org/a.js", "//y.org/b.css"]
    assert bc.external_requests([("Script", "file:///a.js"), ("Font", "https://f.org/x.woff"),
                                 ("Image", "data:image/png;base64,")]) == [("Font", "https://f.org/x.woff")]
    maths = dict(formulas=3, rendered=3, unrendered=[], errors=[], visibleTex=[], widgets=0, mathjax=True)
    assert bc.maths_problems("p.html", maths) == []
    assert bc.maths_problems("p.html", {**maths, "errors": ["Missing argument for \\frac"]}) == [
        "p.html: TeX error in a formula: Missing argument for \\frac"]
    theme = dict(searchFields=1, sidebar=True, toggle=True, sidebarShownBefore=True, sidebarShownAfter=False)
    assert bc.theme_problems("p.html", theme) == []
    assert bc.theme_problems("p.html", {**theme, "toggle": False}) == [
        "p.html: a primary sidebar but no visible 'Toggle primary sidebar' button"]
