"""Sphinx extension: Markdown links may point at any anchor a page defines.

The notebooks must read as plain Markdown in JupyterLab and Colab, so they mark a link
target with an HTML anchor, ``<a id="nb02-ruler-share"></a>``, and cite a work with a
link to its entry on the references page, ``[Bach et al., 2015](../book/references.md#bach2015pixel)``
(the conventions are in ``book/CONVENTIONS.md``). MyST resolves ``[text](page#id)`` only
against the heading slugs of ``page`` and warns about anything else, so on its own it
would reject both. This transform adds to every page's slug table

* each ``id`` of an ``<a>`` element in the page's raw HTML,
* each explicit target, such as MyST's ``(label)=``, under its name,
* each citation of a ``{bibliography}`` (with ``bibtex_cite_id: "{key}"`` its id is the
  BibTeX key).

MyST then resolves these links like heading links, and a link to an id that no page
defines still fails the ``-W`` build.
"""

from __future__ import annotations

import re

from docutils import nodes
from docutils.transforms import Transform

_ANCHOR = re.compile(r"""<a\s[^>]*?\bid\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


class RegisterAnchors(Transform):
    """Put the page's anchors into MyST's slug table before links are resolved."""

    # MyST resolves same-page links (``[text](#id)``) at priority 879.
    default_priority = 878

    def apply(self, **kwargs) -> None:
        document = self.document
        env = getattr(document.settings, "env", None)
        if env is None:
            return
        slugs = getattr(document, "myst_slugs", None)
        if slugs is None:
            slugs = {}
            document.myst_slugs = slugs
        env.metadata[env.docname]["myst_slugs"] = slugs

        def add(anchor: str, node_id: str, line: int | None) -> None:
            slugs.setdefault(anchor, (line or 0, node_id, anchor))

        for raw in document.findall(nodes.raw):
            if "html" in raw.get("format", "").split():
                for anchor in _ANCHOR.findall(raw.astext()):
                    add(anchor, anchor, raw.line)
        for name, explicit in document.nametypes.items():
            node_id = document.nameids.get(name)
            if explicit and node_id:
                add(name, node_id, document.ids[node_id].line)
        # A bibliography's entries are not in the tree until references are resolved,
        # but their ids are already registered with the document.
        for node_id, node in document.ids.items():
            if isinstance(node, nodes.citation):
                add(node_id, node_id, node.line)


def setup(app):
    app.add_transform(RegisterAnchors)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
