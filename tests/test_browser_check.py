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
