// durable-jobs dashboard: the only script. It refreshes the part of a page marked
// data-refresh in place (the overview), and asks before submitting a form marked
// data-confirm. Pages work without it.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (live) {
    var secs = parseInt(live.getAttribute("data-refresh"), 10);
    if (secs > 0) {
      setInterval(function () {
        if (document.hidden) { return; }
        fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
          .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
          .then(function (text) {
            var doc = new DOMParser().parseFromString(text, "text/html");
            var fresh = doc.querySelector("[data-refresh]");
            if (fresh) { live.innerHTML = fresh.innerHTML; }
          })
          .catch(function () { /* keep what is shown; the next tick tries again */ });
      }, secs * 1000);
    }
  }
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
})();
