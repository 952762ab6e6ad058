// nextbest consoles: a little keyboard help and no resubmission after a decision.
(function () {
  "use strict";
  // A decision is shown in answer to a POST: give the address bar the customer's page, so that
  // reloading shows the decision in the history instead of making another decision.
  var replace = document.getElementById("replace-url");
  if (replace && window.history && window.history.replaceState) {
    window.history.replaceState(null, "", replace.dataset.url);
  }
  // "/" focuses the customer search, as in many web apps (not while typing in a field).
  document.addEventListener("keydown", function (event) {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT" || target.isContentEditable)) return;
    var search = document.querySelector("[data-slash-focus]");
    if (search) { event.preventDefault(); search.focus(); search.select(); }
  });
})();
