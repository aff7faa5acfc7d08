#!/usr/bin/env bash
# Build the course website into site/_build/html, offline, with warnings as errors.
#
#   scripts/build_site.sh
#
# Renders README.md, syllabus.md, notebooks/*.ipynb (committed outputs, never executed),
# homework READMEs and solutions, and the slide decks (built HTML, copied in). Needs the
# course venv with the docs extra (pip install -e ".[docs]") and node/npm for the decks.
# Open site/_build/html/index.html. Set PYTHON to use another interpreter.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! "$PYTHON" -c "import sphinx, myst_nb, sphinx_book_theme" 2>/dev/null; then
  echo "build_site: Sphinx, myst-nb or sphinx-book-theme is missing from $PYTHON;" >&2
  echo "            install them with: $PYTHON -m pip install -e ".[docs]"" >&2
  exit 1
fi

build=site/_build
rm -rf "$build/html" "$build/extra" "$build/vendor"
mkdir -p "$build/extra" "$build/vendor/mathjax"

# 1. Slide decks, built into the site's extra files (served at slides/NN_topic.html).
OUT="$build/extra/slides" scripts/build_slides.sh
# From the site, a deck's link to a notebook or Markdown file that the site renders should
# open the rendered page (.html), not the raw file. Targets not written yet stay as they are.
for target in $(grep -oh 'href="\.\./[^"#]*\.\(md\|ipynb\)"' "$build"/extra/slides/*.html \
                | sed 's#^href="\.\./##; s#"$##' | sort -u); do
  if [ -f "$target" ]; then
    sed -i "s#href=\"\.\./$target\"#href=\"../${target%.*}.html\"#g" "$build"/extra/slides/*.html
  fi
done

# 2. MathJax 3 (SVG output, fonts inside the one file) from the slides' pinned npm packages,
#    so no page of the site asks a CDN for anything.
cp slides/node_modules/mathjax-full/es5/tex-svg.js "$build/vendor/mathjax/tex-svg.js"

# 3. Sphinx, from the repository root so every relative link keeps its meaning.
"$PYTHON" -m sphinx -W --keep-going -b html -q -c site . "$build/html"
shopt -s nullglob
pages=("$build"/html/notebooks/*.html)
echo "build_site: ${#pages[@]} lecture notebooks rendered; open $build/html/index.html"
