// Times arrive from the server in UTC (datetime attribute and data-epoch); show them in
// the reader's own time zone. data-format="time" shows the time of day only.
"use strict";

(function () {
  document.querySelectorAll("time[data-epoch]").forEach(function (node) {
    var when = new Date(Number(node.getAttribute("data-epoch")) * 1000);
    var options = node.getAttribute("data-format") === "time"
      ? { timeStyle: "short" } : { dateStyle: "medium", timeStyle: "short" };
    node.textContent = when.toLocaleString([], options);
    node.title = node.getAttribute("datetime");
  });
})();
