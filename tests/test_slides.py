"""Static checks of the lecture slide decks (``slides/NN_topic.md``, built with Marp).

Cheap checks on the Markdown sources and the Marp configuration. The build itself
(``scripts/build_slides.sh``, run in CI) checks the rendered HTML: math turned into SVG and
nothing loaded from the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from course_plan import LECTURES

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "slides"

MIN_SLIDES, MAX_SLIDES = 8, 15
FENCE_RE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)


def split_deck(text: str) -> tuple[dict, list[str]]:
    """Front matter (parsed YAML) and the list of slides of a Marp deck.

    Marp front matter is the first ``---`` block; slides are separated by lines that are
    exactly ``---`` (outside fenced code).
    """
    match = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    if match is None:
        raise ValueError("deck does not start with a '---' front-matter block")
    front = yaml.safe_load(match.group(1))
    body = FENCE_RE.sub(lambda m: re.sub(r"(?m)^---$", "- - -", m.group(0)), text[match.end() :])
    slides = [s for s in re.split(r"(?m)^---[ \t]*$", body) if s.strip()]
    return front, slides


def _deck(stem: str) -> str:
    return (SLIDES / f"{stem}.md").read_text(encoding="utf-8")


def test_one_deck_per_lecture() -> None:
    decks = sorted(p.stem for p in SLIDES.glob("[0-9][0-9]_*.md"))
    assert decks == LECTURES


@pytest.mark.parametrize("stem", LECTURES)
def test_front_matter(stem: str) -> None:
    front, _ = split_deck(_deck(stem))
    assert front.get("marp") is True, "front matter needs `marp: true`"
    assert front.get("math") == "mathjax", "math must be enabled (MathJax, rendered to SVG)"
    assert front.get("theme") == "decoding-gpt"
    assert str(front.get("title", "")).startswith(stem[:2] + " · ")


@pytest.mark.parametrize("stem", LECTURES)
def test_deck_links_its_notebook_and_has_substance(stem: str) -> None:
    text = _deck(stem)
    assert f"](../notebooks/{stem}.ipynb)" in text, f"{stem}.md must link its notebook"
    _, slides = split_deck(text)
    assert MIN_SLIDES <= len(slides) <= MAX_SLIDES, f"{stem}: {len(slides)} slides"
    titled = [s for s in slides if re.search(r"(?m)^#{1,2} \S", s)]
    assert len(titled) == len(slides), f"{stem}: every slide needs a # or ## title"


@pytest.mark.parametrize("stem", LECTURES)
def test_math_delimiters_balanced(stem: str) -> None:
    _, slides = split_deck(_deck(stem))
    for number, slide in enumerate(slides, start=1):
        text = FENCE_RE.sub("", slide)
        text = re.sub(r"`[^`\n]*`", "", text)
        assert text.count("$$") % 2 == 0, f"{stem} slide {number}: unbalanced $$"
        inline = text.replace("$$", "").replace(r"\$", "")
        assert inline.count("$") % 2 == 0, f"{stem} slide {number}: unbalanced $"


# Formulas the brief requires, and statements that guard against known bugs of earlier
# course materials (an anti-causal mask; a logit lens without the final LayerNorm; the
# stationary distribution from right eigenvectors).
REQUIRED_SNIPPETS = {
    "06_attention_heads": [
        r"\mathrm{softmax}\!\left(\frac{X W_Q\,W_K^\top X^\top}{\sqrt{d_{\text{head}}}} + M\right)",
        r"0, & j \le i \\ -\infty, & j > i",
    ],
    "08_the_transformer": [r"\frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} + \beta"],
    "10_residual_stream": [r"\mathrm{LN}_f\bigl(x^{(\ell)}\bigr)\, W_U"],
    "05_language_modelling": [r"\pi^\top M = \pi^\top", "**left** eigenvector"],
    "15_sparse_autoencoders": [r"\bigl\| x - \hat x \bigr\|_2^2", r"\lambda \underbrace"],
    "17_rlhf_and_dpo": [r"\mathcal{L}_{\text{DPO}}(\theta) = -\,\mathbb{E}", r"\log \sigma\!"],
}


@pytest.mark.parametrize("stem", sorted(REQUIRED_SNIPPETS))
def test_key_formulas_present(stem: str) -> None:
    text = _deck(stem)
    missing = [s for s in REQUIRED_SNIPPETS[stem] if s not in text]
    assert not missing, f"{stem}.md lacks {missing}"


def test_mask_is_causal_not_anti_causal() -> None:
    """The mask that was once stated as '0 for i <= j' (which lets tokens see the future)."""
    text = _deck("06_attention_heads")
    assert not re.search(r"0,\s*&\s*i \\le j", text)


def test_split_deck_counts_slides() -> None:
    deck = "---\nmarp: true\n---\n# A\n\n---\n\n## B\n```\n---\n```\n---\n## C\n"
    front, slides = split_deck(deck)
    assert front == {"marp": True}
    assert [s.strip().splitlines()[0] for s in slides] == ["# A", "## B", "## C"]
    with pytest.raises(ValueError, match="front-matter"):
        split_deck("# no front matter\n")


def test_theme_and_package_pins() -> None:
    theme = (SLIDES / "theme" / "decoding-gpt.css").read_text(encoding="utf-8")
    assert re.search(r"@theme\s+decoding-gpt\b", theme)
    assert "@import url(" not in theme, "the theme must not fetch web fonts"
    package = json.loads((SLIDES / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((SLIDES / "package-lock.json").read_text(encoding="utf-8"))
    pinned = package["devDependencies"]["@marp-team/marp-cli"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin Marp CLI to an exact version"
    assert lock["packages"]["node_modules/@marp-team/marp-cli"]["version"] == pinned


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the Marp config and build checks need it")
    return node


def test_marp_config_is_offline() -> None:
    node = _node()
    out = subprocess.run(
        [node, "-e", "console.log(JSON.stringify(require('./marp.config.js')))"],
        cwd=SLIDES,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    config = json.loads(out.stdout)
    assert config["options"]["emoji"] == {"shortcode": False, "unicode": False}
    assert config["options"]["math"] == "mathjax"
    assert config["html"] is False
