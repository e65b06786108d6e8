// MathJax 3 configuration for the dsim book.
// book.toml loads this file BEFORE chapters/vendor/mathjax/tex-svg.js (additional-js order):
// MathJax reads window.MathJax when tex-svg.js starts.
//
// Delimiters, as they appear in the rendered HTML:
//   inline   \( ... \)      (write \\( ... \\) in markdown)
//   display  \[ ... \]  and  $$ ... $$   (put display math in <div class="math"> ... </div>)
// A single $ is NOT a delimiter (prices, shell snippets stay text).
window.MathJax = {
  tex: {
    inlineMath: [['\\(', '\\)']],
    displayMath: [['\\[', '\\]'], ['$$', '$$']],
    processEscapes: true,
  },
  svg: {
    fontCache: 'global',
  },
  loader: {
    // Extensions that tex-svg.js autoloads (\boldsymbol, \cancel, ...) are vendored next to
    // it; mdBook copies chapters/vendor/ to <book>/vendor/. path_to_root is set by mdBook.
    paths: {
      mathjax: (typeof path_to_root === 'string' ? path_to_root : '') + 'vendor/mathjax',
    },
  },
  options: {
    // Never typeset inside code.
    skipHtmlTags: ['script', 'noscript', 'style', 'textarea', 'pre', 'code', 'annotation', 'annotation-xml'],
  },
};
