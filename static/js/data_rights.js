// "Your data" page: follows an export's progress through the status API and shows the download
// link when it is ready. The erasure receipt reloads itself until the erasure is done.
// A static file (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";

  var POLL_MS = 1500;

  function followExport(section) {
    var url = section.getAttribute("data-status-url");
    var status = section.getAttribute("data-status");
    if (!url || status === "ready" || status === "failed") {
      return;
    }
    var label = section.querySelector("[data-role=status-label]");
    var bar = section.querySelector("[data-role=progress]");
    var download = section.querySelector("[data-role=download]");
    var link = section.querySelector("[data-role=download-link]");

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("status " + response.status);
          }
          return response.json();
        })
        .then(function (body) {
          if (bar) {
            bar.value = body.progress || 0;
            bar.textContent = (body.progress || 0) + "%";
          }
          if (label) {
            label.textContent = label.getAttribute("data-label-" + body.status) || body.status;
          }
          if (body.status === "ready" && body.download_url) {
            link.href = body.download_url;
            download.hidden = false;
            return;
          }
          if (body.status !== "failed") {
            window.setTimeout(poll, POLL_MS);
          }
        })
        .catch(function () {
          window.setTimeout(poll, POLL_MS * 4);
        });
    }
    window.setTimeout(poll, POLL_MS);
  }

  function followErasure(marker) {
    if (marker.getAttribute("data-done") === "false") {
      window.setTimeout(function () { window.location.reload(); }, POLL_MS * 2);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.getElementById("data-export");
    if (section) {
      followExport(section);
    }
    var marker = document.querySelector("[data-role=erasure-status]");
    if (marker) {
      followErasure(marker);
    }
  });
})();
