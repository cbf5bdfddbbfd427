// Keeps a dashboard page live: on each change of the queue (server-sent events from
// /ui/live) the page's <main> is fetched again and swapped in. Without this script every
// page still reads; with it nothing is reloaded by hand.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var state = document.getElementById("live-state");
  if (!main || !main.dataset.live || !window.EventSource) return;
  var busy = false, again = false, source = null;
  function say(text) { if (state) state.textContent = text; }
  function follow() {
    var logs = main.querySelectorAll("pre.follow");
    for (var i = 0; i < logs.length; i++) logs[i].scrollTop = logs[i].scrollHeight;
  }
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          main.innerHTML = fresh.innerHTML;
          main.dataset.follow = fresh.dataset.follow || "";
          document.title = doc.title;
          follow();
        }
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  function connect() {
    source = new EventSource("/ui/live");
    source.addEventListener("open", function () { say(" · live"); });
    source.addEventListener("change", refresh);
    // Ticks matter only to a page that follows a running job (its log grows without events).
    source.addEventListener("tick", function () { if (main.dataset.follow) refresh(); });
    source.addEventListener("error", function () {
      // A closed source (a 429 when the server's long-poll budget is full) is not retried
      // by the browser itself: wait and connect again.
      say(" · reconnecting");
      if (source.readyState === 2) { setTimeout(connect, 10000); }
    });
  }
  window.addEventListener("pagehide", function () { if (source) source.close(); });
  follow();
  connect();
})();
