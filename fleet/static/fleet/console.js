// Console behaviour that htmx attributes do not cover: row selection, copy buttons, charts.
// Runs on page load and on every fragment htmx swaps in (htmx.onLoad).
(function () {
  "use strict";

  function initSelection(root) {
    root.querySelectorAll("[data-select-all]").forEach(function (all) {
      var form = all.closest("form");
      var boxes = function () { return form.querySelectorAll("input[name=device_ids]"); };
      var label = form.querySelector("[data-selected-count]");
      var update = function () {
        var n = Array.prototype.filter.call(boxes(), function (b) { return b.checked; }).length;
        if (label) { label.textContent = n + " selected"; }
      };
      all.addEventListener("change", function () {
        boxes().forEach(function (b) { b.checked = all.checked; });
        update();
      });
      form.addEventListener("change", update);
      update();
    });
  }

  function initCopy(root) {
    root.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = button.getAttribute("data-copy");
        if (navigator.clipboard) { navigator.clipboard.writeText(text); }
        button.textContent = "Copied";
      });
    });
  }

  var CHARTS = {
    latency: { series: [["p50", "#2458d6"], ["p95", "#c0392b"]], unit: " ms" },
    confidence: { series: [["confidence", "#1e8449"]], unit: "" },
    errors: { series: [["error_rate", "#c0392b"]], unit: " %" },
    resources: { series: [["cpu", "#2458d6"], ["mem", "#8e44ad"], ["disk", "#b9770e"]], unit: " %" },
    temperature: { series: [["temp", "#c0392b"]], unit: " °C" },
    buffer: { series: [["buffer_depth", "#2458d6"], ["dropped", "#c0392b"]], unit: "" },
    // A rollout's gate evaluations: a gate's value against its (dashed) threshold; cohort against control.
    gate: { series: [["value", "#2458d6"], ["threshold", "#c0392b", [6, 4]]], unit: "", points: true },
    compare: { series: [["cohort", "#2458d6"], ["control", "#7f8c8d"]], unit: null, points: true }
  };

  // data-key="a.b" picks a part of the json_script block (one block can feed several charts).
  function pick(data, key) {
    if (!key) { return data; }
    return key.split(".").reduce(function (part, name) { return part ? part[name] : undefined; }, data);
  }

  function initCharts(root) {
    if (typeof uPlot === "undefined") { return; }
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.dataset.drawn) { return; }
      var source = document.getElementById(el.dataset.source);
      var spec = CHARTS[el.dataset.chart];
      if (!source || !spec) { return; }
      var data = pick(JSON.parse(source.textContent), el.dataset.key);
      if (!data || !data.t) { return; }
      var unit = spec.unit === null ? (data.unit || "") : spec.unit;
      var series = [{}];
      var columns = [data.t];
      spec.series.forEach(function (s) {
        series.push({ label: s[0], stroke: s[1], width: 1.5, spanGaps: false, dash: s[2],
                      points: { show: !!spec.points },
                      value: function (u, v) { return v == null ? "—" : v + unit; } });
        columns.push(data[s[0]]);
      });
      var width = Math.max(260, el.clientWidth || 360);
      new uPlot({ width: width, height: 180, series: series, scales: { x: { time: true } },
                  axes: [{}, { size: 50 }], legend: { live: true } }, columns, el);
      el.dataset.drawn = "1";
    });
  }

  // Live rates from monotonic counters: each poll swaps in the new total; the rate is the change since
  // the previous poll of this page, so the server keeps no history for it.
  var lastSeen = {};
  function initRates(root) {
    root.querySelectorAll("[data-rate-of]").forEach(function (el) {
      var name = el.getAttribute("data-rate-of");
      var value = parseFloat(el.getAttribute("data-value"));
      var now = Date.now() / 1000;
      var before = lastSeen[name];
      lastSeen[name] = { value: value, at: now };
      var out = document.querySelector('[data-rate-for="' + name + '"]');
      if (out && before && now > before.at && value >= before.value) {
        out.textContent = "(" + ((value - before.value) / (now - before.at)).toFixed(1) + " per second now)";
      }
    });
  }

  function init(root) {
    initSelection(root);
    initCopy(root);
    initCharts(root);
    initRates(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    if (window.htmx) { window.htmx.onLoad(function (el) { if (el !== document.body) { init(el); } }); }
  });
})();
