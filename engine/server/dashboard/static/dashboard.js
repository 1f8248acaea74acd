// The dashboard's only script: refreshes a page's <main> in place every few seconds
// (pages that ask for it with data-refresh), and asks before aborting a rollout.
// The server renders (and escapes) everything; this swaps in its fresh HTML.
"use strict";
(function () {
  function busy() {
    const el = document.activeElement;
    return el && el !== document.body && el.closest("form") !== null && el.tagName !== "BUTTON";
  }
  async function refresh(main) {
    if (document.hidden || busy()) return;
    try {
      const r = await fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}});
      if (!r.ok || r.redirected) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("main");
      if (fresh) main.replaceChildren(...fresh.childNodes);
    } catch (e) {
      // the server may be restarting: try again at the next tick
    }
  }
  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    if (button && button.dataset.action === "abort" &&
        !window.confirm("Abort this rollout? Nothing more is handed out; it cannot be resumed.")) {
      event.preventDefault();
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    const main = document.getElementById("main");
    const seconds = main ? Number(main.dataset.refresh || 0) : 0;
    if (seconds > 0) setInterval(function () { refresh(main); }, seconds * 1000);
  });
})();
