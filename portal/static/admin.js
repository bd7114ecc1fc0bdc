// Follows the job working on the org's connection (Sync All, Run Now, a scheduled run, Update
// Client Metadata): polls progress.json and moves the bar; when the job ends, reloads the page
// so that its tab shows the result. The page works without it (it reloads itself instead).
(function () {
  "use strict";
  var box = document.getElementById("run-progress");
  if (!box) { return; }
  var url = box.dataset.url;
  var wasBusy = box.dataset.state === "running" || box.dataset.state === "queued";
  function number(n) { return n === null || n === undefined ? "?" : n.toLocaleString("en"); }

  function show(state) {
    var busy = state.state === "running" || state.state === "queued";
    if (!busy) {
      if (wasBusy) { window.location.reload(); }
      return;
    }
    wasBusy = true;
    box.hidden = false;
    var text = document.getElementById("run-text");
    var bar = document.getElementById("run-bar");
    if (state.state === "queued") {
      text.textContent = "A " + state.kind + " job is " +
        (state.job_status === "started" ? "starting" : "waiting for a worker") +
        (state.resuming ? " to resume from where the last one stopped" : "") + "\u2026";
      bar.removeAttribute("value");
      return;
    }
    var p = state.progress || {};
    text.textContent = "Run " + state.run + " (" + state.kind + ", " + state.trigger +
      ") is " + (state.resuming ? "resuming from where the last one stopped" : "running") +
      ": " + (p.step || "starting") + " " + (p.entity || "") + " " +
      number(p.done || 0) + (p.total ? " of " + number(p.total) : "") + " records";
    if (state.percent !== null && state.percent !== undefined) {
      bar.max = 100;
      bar.value = state.percent;
    } else {
      bar.removeAttribute("value");  // indeterminate: no total known
    }
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store",
                 credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (state) { if (state) { show(state); } window.setTimeout(poll, 1000); })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  // Sync All posts and comes back here: poll at once, and keep polling, so that a run
  // started by the schedule or another admin appears too.
  window.setTimeout(poll, wasBusy ? 300 : 1500);
})();
