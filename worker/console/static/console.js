// Live updates: an element with data-live="URL" is refreshed from URL (an HTML fragment
// rendered by the server) every few seconds while the page is visible. Nothing else.
(function () {
  "use strict";
  var EVERY_MS = 3000;
  function refresh(element) {
    if (document.hidden) { return; }
    if (element.contains(document.activeElement) && document.activeElement !== document.body) { return; }
    fetch(element.getAttribute("data-live"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null && html !== element.getAttribute("data-last")) {
          // Keep what the reader opened (a job's body) open across the update.
          var open = Array.prototype.map.call(element.querySelectorAll("details"), function (d) { return d.open; });
          element.innerHTML = html;
          element.setAttribute("data-last", html);
          Array.prototype.forEach.call(element.querySelectorAll("details"), function (d, i) {
            if (open[i]) { d.open = true; }
          });
        }
        element.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next round tries again */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-live]");
    Array.prototype.forEach.call(live, function (element) {
      setInterval(function () { refresh(element); }, EVERY_MS);
    });
  });
})();
