/* Records, once a page has loaded, how many images it has, how many failed to decode, how many script errors
   happened and how many formulas MathJax rendered or failed on: the site test reads these from a headless browser. */
window.__cs336Errors = 0;
window.addEventListener("error", function () { window.__cs336Errors += 1; });
window.addEventListener("load", function () {
  function record() {
    var imgs = Array.prototype.slice.call(document.querySelectorAll("article img"));
    var b = document.body;
    b.setAttribute("data-images", imgs.length);
    b.setAttribute("data-broken-images", imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length);
    b.setAttribute("data-errors", window.__cs336Errors);
    b.setAttribute("data-math", document.querySelectorAll(".MathJax_CHTML, .MathJax, .MathJax_Display").length);
    b.setAttribute("data-math-errors", document.querySelectorAll(".MathJax_Error, [data-mjx-error]").length +
      (document.body.innerText.match(/Math Processing Error/g) || []).length);
    b.setAttribute("data-loaded", "yes");
  }
  if (window.MathJax && MathJax.Hub) MathJax.Hub.Queue(record); else record();
});
