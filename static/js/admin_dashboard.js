// Draws the cost dashboard's two stacked bar charts with the vendored Chart.js.
// Data comes from a json_script element: no inline script, as the CSP (script-src 'self') demands.
(function () {
  "use strict";
  var PALETTE = ["#417690", "#e07a5f", "#3d405b", "#81b29a", "#f2cc8f", "#6d597a", "#b56576", "#355070",
                 "#eaac8b", "#52796f", "#9a8c98", "#c9ada7"];

  function datasets(series) {
    return series.map(function (s, i) {
      return {
        label: s.label,
        // Money arrives as decimal strings; the chart only needs numbers to draw.
        data: s.data.map(function (v) { return parseFloat(v); }),
        backgroundColor: PALETTE[i % PALETTE.length],
        stack: "spend"
      };
    });
  }

  function draw(canvasId, labels, series, yLabel) {
    var canvas = document.getElementById(canvasId);
    if (!canvas || typeof window.Chart === "undefined") { return; }
    return new window.Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: datasets(series) },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: yLabel } } },
        plugins: { legend: { position: "bottom" } }
      }
    });
  }

  // Typing a date means a custom range: select it, so the dates are not ignored on submit.
  function customOnDateChange() {
    var custom = document.querySelector('.dashboard-filters input[name="range"][value="custom"]');
    document.querySelectorAll('.dashboard-filters input[type="date"]').forEach(function (input) {
      input.addEventListener("change", function () { if (custom) { custom.checked = true; } });
    });
  }

  function init() {
    customOnDateChange();
    var node = document.getElementById("dashboard-chart-data");
    if (!node) { return; }
    var data = JSON.parse(node.textContent);
    draw("chart-by-model", data.labels, data.by_model, data.currency_label);
    draw("chart-by-provider", data.labels, data.by_provider, data.currency_label);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
