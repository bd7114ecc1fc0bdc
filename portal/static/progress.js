// Follows a connect job on its status page: polls the page's JSON and updates the steps and
// the progress bar; when the job has ended, reloads the page to show the result.
(function () {
  "use strict";
  var box = document.getElementById("connection-status");
  if (!box || box.dataset.final === "true") { return; }
  var url = box.dataset.statusUrl;
  var marks = { done: "\u2713", running: "\u2026", failed: "\u2717", todo: "\u25cb" };
  var texts = { pending: "Waiting for a worker to start the connect job\u2026",
                connecting: "Connecting\u2026" };
  // A connect going on from the pages an interrupted one committed (state.resuming).
  var resumingTexts = {
    pending: "Waiting for a worker to resume the connect job from where it stopped\u2026",
    connecting: "Resuming: the connect goes on from its last committed page\u2026" };
  function number(n) { return n === null || n === undefined ? "?" : n.toLocaleString("en"); }

  function show(state) {
    if (state.final) { window.location.reload(); return true; }
    document.getElementById("status-text").textContent = (state.resuming && resumingTexts[state.status]) ||
      texts[state.status] || state.status;
    state.steps.forEach(function (step) {
      var item = document.querySelector('#steps [data-step="' + step.step + '"]');
      if (item) {
        item.className = "step step-" + step.state;
        item.querySelector(".mark").textContent = marks[step.state];
      }
    });
    var progress = state.progress || {};
    var pbox = document.getElementById("progress-box");
    pbox.hidden = !progress.entity;
    if (progress.entity) {
      document.getElementById("progress-entity").textContent = progress.entity;
      document.getElementById("progress-done").textContent = number(progress.done || 0);
      document.getElementById("progress-total").textContent = number(progress.total);
      var bar = document.getElementById("progress");
      if (progress.total) {
        bar.max = progress.total;
        bar.value = progress.done || 0;
      } else {
        bar.removeAttribute("value");  // indeterminate: the total is not known
      }
    }
    return false;
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (state) {
        if (!state || !show(state)) { window.setTimeout(poll, 1000); }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  window.setTimeout(poll, 500);
})();
