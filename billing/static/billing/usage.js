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
  // A canvas is out of CSS's reach: where the system is dark (app.css), the labels and grid take
  // the page's own colours; Chart.js's grey would be too faint to read there.
  if (window.matchMedia("(prefers-color-scheme: dark)").matches) {
    const page = getComputedStyle(document.documentElement);
    window.Chart.defaults.color = page.getPropertyValue("--muted").trim();
    window.Chart.defaults.borderColor = page.getPropertyValue("--border").trim();
  }
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
