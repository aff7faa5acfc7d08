#!/usr/bin/env bash
# Build every lecture deck (slides/NN_topic.md) into self-contained HTML, offline.
#
#   scripts/build_slides.sh            HTML decks   -> slides/dist/NN_topic.html
#   scripts/build_slides.sh --pdf      also PDFs    -> slides/dist/NN_topic.pdf (needs Chromium)
#   OUT=some/dir scripts/build_slides.sh   build into another folder (the site build uses this)
#
# Needs node >= 18 and npm. The first run installs the pinned Marp CLI from
# slides/package-lock.json (`npm ci`); later runs are offline. MathJax is rendered to SVG
# at build time and emoji are left as text (slides/marp.config.js), so the HTML loads
# nothing from the network. For PDFs set CHROME_PATH if Chromium is not /usr/bin/chromium.
# Exits non-zero if any deck fails to build.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
slides_dir="$repo_root/slides"
out_dir="${OUT:-$slides_dir/dist}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

pdf=0
for arg in "$@"; do
  case "$arg" in
    --pdf) pdf=1 ;;
    *) echo "usage: $0 [--pdf]" >&2; exit 2 ;;
  esac
done

cd "$slides_dir"
if [ ! -x node_modules/.bin/marp ]; then
  echo "build_slides: installing Marp CLI from package-lock.json (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

shopt -s nullglob
decks=([0-9][0-9]_*.md)
if [ "${#decks[@]}" -eq 0 ]; then
  echo "build_slides: no decks found in $slides_dir" >&2
  exit 1
fi

marp=(node_modules/.bin/marp --config-file marp.config.js --no-stdin --input-dir .)
# --input-dir converts every Markdown file under slides/ (node_modules is skipped) in one
# node process; Marp exits non-zero if a deck fails to convert.
"${marp[@]}" --output "$out_dir"
if [ "$pdf" -eq 1 ]; then
  # PDFs one deck at a time: a browser-driven batch over the whole folder can stall.
  for deck in "${decks[@]}"; do
    CHROME_PATH="${CHROME_PATH:-/usr/bin/chromium}" node_modules/.bin/marp \
      --config-file marp.config.js --no-stdin --pdf --allow-local-files \
      "$deck" -o "$out_dir/${deck%.md}.pdf"
  done
fi
built=("$out_dir"/[0-9][0-9]_*.html)
if [ "${#built[@]}" -ne "${#decks[@]}" ]; then
  echo "build_slides: expected ${#decks[@]} HTML decks, found ${#built[@]}" >&2
  exit 1
fi

# Offline and rendered: every deck has MathJax SVG and no unrendered $$, and nothing is
# loaded from the network (no CDN scripts, styles, fonts or emoji images; plain hyperlinks
# to web pages are fine).
for html in "${built[@]}"; do
  if grep -q '\$\$' "$html"; then
    echo "build_slides: unrendered display math in $html" >&2; exit 1
  fi
  if grep -Eq 'src="(https?:)?//|<link[^>]*href="(https?:)?//|@import url\(["'"'"']?https?:|twemoji' "$html"; then
    echo "build_slides: $html loads something from the network" >&2; exit 1
  fi
  if grep -q '[$]' "$(basename "${html%.html}").md" && ! grep -q 'jax="SVG"' "$html"; then
    echo "build_slides: math in ${html##*/} was not rendered to SVG" >&2; exit 1
  fi
done

# Decks link notebooks as ../notebooks/NN_topic.ipynb (relative to slides/, as on GitHub).
# From slides/dist/ that is one level deeper.
if [ "$out_dir" = "$slides_dir/dist" ]; then
  sed -i 's#href="\.\./\(notebooks\|homework\)/#href="../../\1/#g; s#href="\.\./syllabus\.md"#href="../../syllabus.md"#g' \
    "$out_dir"/[0-9][0-9]_*.html
fi
echo "build_slides: ${#decks[@]} decks -> $out_dir"
