"""Sphinx configuration for the course website.

The site is built from the repository root (``sphinx-build -c site . site/_build/html``,
see ``scripts/build_site.sh``), so that README.md, syllabus.md, the lecture notebooks
and the homework keep their repository paths and the relative links between them
resolve exactly as they do on GitHub.

Offline by construction:
- notebooks are rendered with their committed outputs (``nb_execution_mode = "off"``);
- MathJax is served from a local copy (``mathjax_path``), copied from the slides'
  npm dependencies by the build script, never from a CDN;
- no ipywidgets JavaScript is requested (``nb_ipywidgets_js = {}``).

Links that cannot resolve to a page of this site are handled by ``CourseLinks``:
- a link to a slide deck source ``slides/NN_topic.md`` points to the built HTML deck
  (``slides/NN_topic.html``, copied into the site by the build script);
- a link to a lecture notebook or homework file that does not exist yet becomes plain
  text and is reported on the console (notebooks are written by several people; a
  missing one must not break the build);
- a link to a folder, or to an existing Markdown/notebook file that is not rendered here
  (e.g. ``homework/*/student.ipynb``), becomes plain text.
Every other broken link is a build error.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

SITE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SITE_DIR.parent

project = "Decoding GPT"
author = "Michael Ivanitskiy, Samy Wu Fung"
copyright = "2026, the Decoding GPT authors"

root_doc = "site/index"
extensions = ["myst_nb"]

# Only these repository files become pages; everything else is ignored (and the big
# directories are pruned so Sphinx never walks them).
include_patterns = [
    "site/*.md",
    "*.md",
    "notebooks/*.ipynb",
    "homework/*.md",
    "homework/*/README.md",
    "homework/*/solution.ipynb",
]
exclude_patterns = [
    ".venv",
    ".git",
    "**/node_modules",
    "**/.ipynb_checkpoints",
    "site/_build",
    "slides",
    "decoding_gpt",
    "tests",
    "benchmarks",
    "runs",
    "build",
    "dist",
]

# --- MyST / myst-nb ---------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the committed outputs; never run a kernel here
nb_ipywidgets_js = {}  # no widget JavaScript from a CDN
nb_merge_streams = True
# Notebooks are written by several people; heading-level jumps inside them are a
# style matter, not a broken site.
suppress_warnings = ["myst.header"]

# --- HTML ---------------------------------------------------------------------------
html_title = "Decoding GPT (MATH 598B)"
html_theme = "sphinx_book_theme"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_static_path = ["_static", "_build/vendor"]
html_extra_path = ["_extra", "_build/extra"]
html_last_updated_fmt = None
html_copy_source = False
# MathJax 3 (SVG output, fonts built in) from a local file, relative to _static.
mathjax_path = "mathjax/tex-svg.js"
if not (SITE_DIR / "_build" / "vendor" / mathjax_path).exists():
    raise RuntimeError(
        "site/_build/vendor/mathjax/tex-svg.js is missing: build the site with "
        "scripts/build_site.sh, which vendors MathJax and the slide decks first"
    )

SLIDE_RE = re.compile(r"^slides/(\d\d_[a-z0-9_]+)(?:\.md)?$")
OPTIONAL_PREFIXES = ("notebooks/", "homework/")


def _repo_path(docname: str, target: str) -> str:
    """Path of ``target`` (a link written in ``docname``) relative to the repository root."""
    base = (REPO_ROOT / docname).parent
    resolved = (base / target).resolve()
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return target


class CourseLinks(SphinxPostTransform):
    """Point slide-deck links at the built decks; soften links to unwritten notebooks.

    Runs before MyST's own resolver (priority 9), which would warn about both.
    """

    default_priority = 5

    def run(self, **kwargs) -> None:
        env = self.env
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst":
                continue
            refdoc = node.get("refdoc", env.docname)
            target = node["reftarget"]
            if node.get("refdomain") == "doc":
                if target in env.all_docs:
                    continue
                # A Markdown/notebook file that exists but is not one of the site's pages.
                path, exists = target, True
            else:
                path = _repo_path(refdoc, target.split("#")[0])
                exists = (REPO_ROOT / path).exists()
            slide = SLIDE_RE.match(path.removesuffix(".md"))
            if slide:
                uri = self.app.builder.get_relative_uri(refdoc, f"slides/{slide.group(1)}")
                ref = nodes.reference("", "", internal=False, refuri=uri)
                ref += node[0].deepcopy()
                node.replace_self(ref)
            elif not exists and path.startswith(OPTIONAL_PREFIXES):
                logger.info(f"[course-links] {refdoc}: {path} does not exist yet (plain text)")
                node.replace_self(node[0].deepcopy())
            elif exists:
                # A folder, or a file the site does not render (e.g. a student notebook).
                logger.info(f"[course-links] {refdoc}: {path} has no page on the site (plain text)")
                node.replace_self(node[0].deepcopy())


def setup(app: Sphinx) -> dict:
    app.add_post_transform(CourseLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
