// Marp CLI configuration shared by every deck in this folder.
// Everything here is chosen so that the built HTML works offline:
//  - math: MathJax (marp-core's default) renders to inline SVG at build time, no CDN;
//  - emoji: both shortcode and unicode emoji are left as text, so no Twemoji CDN images;
//  - html: raw HTML in Markdown is not allowed (decks stay plain Markdown).
module.exports = {
  themeSet: ['./theme'],
  html: false,
  allowLocalFiles: true,
  options: {
    math: 'mathjax',
    emoji: { shortcode: false, unicode: false },
    minifyCSS: true,
  },
}
