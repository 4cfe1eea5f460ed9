// MathJax for pymdownx.arithmatex (generic mode): \( ... \) inline, \[ ... \] display. MathJax itself is the
// local copy in assets/vendor/mathjax (docs/_hooks.py) with SVG output (no font files to load from file://).
// Every page is a full load (no `navigation.instant`), so MathJax typesets each page once, on start-up.
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true},
  svg: {fontCache: "global"},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
};
