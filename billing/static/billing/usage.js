// The usage page's daily chart. Data comes from the json_script block (no inline script: the
// Content-Security-Policy allows scripts from 'self' only).
(function () {
  "use strict";
  const source = document.getElementById("usage-chart-data");
  const canvas = document.getElementById("usage-chart");
  if (!source || !canvas || typeof window.Chart === "undefined") {
    return;
  }
  const data = JSON.parse(source.textContent);
  new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [{
        label: canvas.getAttribute("aria-label"),
        // Amounts arrive as exact decimal strings; a float is fine for drawing bars.
        data: data.spent.map(Number),
      }],
    },
    options: {
      animation: false,
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, ticks: { callback: (v) => "$" + v } } },
    },
  });
})();
