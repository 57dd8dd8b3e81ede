// Scout's status panel and glucose chart. The status comes from /status.json every 30 s
// (first from the page itself); the chart from /chart.json, drawn with the vendored uPlot.
// Everything the server sends is put on the page as text, never as HTML.
"use strict";

(function () {
  var data = JSON.parse(document.getElementById("page-data").textContent);
  var panel = document.getElementById("status-panel");

  function clock(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function node(tag, className, text) {
    var element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function line(label, value, id) {
    var row = node("div", "status-row");
    if (id) row.id = id;
    row.appendChild(node("span", "status-label", label));
    row.appendChild(typeof value === "string" ? node("span", "status-value", value) : value);
    return row;
  }

  function readingLine(reading) {
    if (reading.pending) return node("span", "status-value", reading.pending);
    if (reading.problem) return node("span", "status-value status-problem", reading.problem);
    var box = node("span", "status-value reading reading-" + reading.range);
    box.appendChild(node("strong", "reading-value", reading.value + (reading.limit ? "" : " " + reading.units)));
    if (reading.arrow) box.appendChild(node("span", "reading-arrow", " " + reading.arrow));
    if (reading.trend) box.appendChild(node("span", "", " " + reading.trend));
    var age = reading.ageMinutes === 0 ? "less than a minute old" : reading.ageMinutes + " minute" + (reading.ageMinutes === 1 ? "" : "s") + " old";
    box.appendChild(node("span", "reading-age", ", " + age + " (" + clock(reading.at) + ")"));
    box.appendChild(node("span", "reading-judgement", ": " + reading.judgement));
    if (reading.clock) box.appendChild(node("span", "reading-clock", ". " + reading.clock));
    return box;
  }

  function renderStatus(status) {
    panel.textContent = "";
    var head = node("p", "status-headline " + (status.watching ? "is-watching" : "not-watching"));
    head.id = "status-headline";
    var icon = node("i", "material-icons", status.watching ? "visibility" : (status.pausedUntil ? "pause_circle" : "visibility_off"));
    icon.setAttribute("aria-hidden", "true");
    head.appendChild(icon);
    head.appendChild(node("span", "", status.headline));
    panel.appendChild(head);
    if (status.reasons.length) {
      var reasons = node("ul", "status-reasons");
      reasons.id = "status-reasons";
      status.reasons.forEach(function (reason) {
        var text = reason.text + (reason.at ? " " + clock(reason.at) : "") + (reason.note ? ": " + reason.note : "");
        reasons.appendChild(node("li", "", text));
      });
      panel.appendChild(reasons);
    }
    panel.appendChild(line("Last check", status.lastCheck ? clock(status.lastCheck) : "not yet: Scout checks every minute", "status-last-check"));
    panel.appendChild(line("Latest reading", readingLine(status.reading), "status-reading"));
    if (status.alert) {
      var alertBox = node("div", "status-alert alert-" + status.alert.state);
      alertBox.id = "status-alert";
      alertBox.appendChild(node("strong", "", status.alert.headline));
      var steps = node("ol", "alert-steps");
      status.alert.steps.forEach(function (step) { steps.appendChild(node("li", "", clock(step.at) + " " + step.text)); });
      alertBox.appendChild(steps);
      panel.appendChild(alertBox);
    }
    panel.appendChild(line("Next check", clock(status.nextCheck), "status-next-check"));
    panel.setAttribute("data-updated", String(status.now));
  }

  function refreshStatus() {
    fetch(data.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error(response.status === 401 ? "Your session ended: reload the page to sign in." : "Scout's server answered " + response.status + ".");
        return response.json();
      })
      .then(function (status) {
        renderStatus(status);
        // the chart again only when it would change: a new reading, a call or text (each chart
        // reads the alert log of its hours, and Scout's store bills every read)
        if (status.chartMark !== chartMark) {
          chartMark = status.chartMark;
          loadChart(currentHours || 6);
        }
      })
      .catch(function (error) {
        var stale = document.getElementById("status-stale") || panel.appendChild(node("p", "status-problem"));
        stale.id = "status-stale";
        stale.textContent = "The status could not be refreshed: " + error.message + " It may be out of date.";
      });
  }

  var chartMark = null;
  renderStatus(data.status);
  if (data.status.reading.pending) refreshStatus();  // the page never waits for Nightscout; this does (and draws the chart)
  else chartMark = data.status.chartMark;
  setInterval(refreshStatus, data.statusEverySeconds * 1000);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refreshStatus(); });

  // --- the chart ---------------------------------------------------------------------
  var chartBox = document.getElementById("chart");
  var detail = document.getElementById("marker-detail");
  var problem = document.getElementById("chart-problem");
  var events = document.getElementById("chart-events");
  var plot = null;
  var current = null;
  var currentHours = 0;
  var MARK = { call: "C", ack: "1", text: "T", "all-clear": "\u2713", notice: "i" };

  function bandsHook(u) {
    var ctx = u.ctx, left = u.bbox.left, width = u.bbox.width, top = u.bbox.top, bottom = top + u.bbox.height;
    var yLow = u.valToPos(current.low, "y", true), yHigh = u.valToPos(current.high, "y", true);
    ctx.save();
    ctx.fillStyle = "rgba(183, 28, 28, 0.10)";
    ctx.fillRect(left, yLow, width, bottom - yLow);
    ctx.fillStyle = "rgba(46, 125, 50, 0.10)";
    ctx.fillRect(left, yHigh, width, yLow - yHigh);
    ctx.fillStyle = "rgba(230, 81, 0, 0.10)";
    ctx.fillRect(left, top, width, yHigh - top);
    var yUrgent = u.valToPos(current.urgentLow, "y", true);
    ctx.strokeStyle = "#b71c1c";
    ctx.setLineDash([6, 4]);
    ctx.beginPath(); ctx.moveTo(left, yUrgent); ctx.lineTo(left + width, yUrgent); ctx.stroke();
    ctx.restore();
  }

  function showDetail(marker) {
    detail.textContent = clock(marker.at) + ": " + marker.text;
  }

  function placeMarkers(u) {
    chartBox.querySelectorAll(".chart-marker").forEach(function (old) { old.remove(); });
    var over = u.over;
    current.markers.forEach(function (marker, index) {
      var x = u.valToPos(marker.at, "x");
      if (x < 0 || x > u.bbox.width / devicePixelRatio + 1) return;
      var button = node("button", "chart-marker marker-" + marker.kind, MARK[marker.kind] || "i");
      button.type = "button";
      button.style.left = x + "px";
      button.style.top = (index % 2 ? 22 : 2) + "px";
      button.setAttribute("aria-label", clock(marker.at) + ": " + marker.text);
      button.title = clock(marker.at) + ": " + marker.text;
      ["mouseenter", "focus", "click"].forEach(function (type) { button.addEventListener(type, function () { showDetail(marker); }); });
      over.appendChild(button);
    });
  }

  function listEvents(chart) {
    events.textContent = "";
    if (!chart.markers.length) events.appendChild(node("li", "", "No calls or texts in this period."));
    chart.markers.slice().reverse().forEach(function (marker) {
      var item = node("li", "event-" + marker.kind);
      item.appendChild(node("span", "marker-key marker-" + marker.kind, MARK[marker.kind] || "i")).setAttribute("aria-hidden", "true");
      item.appendChild(node("span", "", " " + clock(marker.at) + " " + marker.text));
      events.appendChild(item);
    });
  }

  function draw(chart) {
    current = chart;
    problem.textContent = chart.problem;
    problem.classList.toggle("hide", !chart.problem);
    listEvents(chart);
    var xs = chart.points.map(function (p) { return p[0]; });
    var ys = chart.points.map(function (p) { return p[1]; });
    var values = ys.concat([chart.low, chart.high, chart.urgentLow]);
    var pad = chart.units === "mmol/L" ? 1 : 20;
    var options = {
      width: Math.max(280, chartBox.clientWidth), height: 240,
      scales: { x: { time: true, range: [chart.since, chart.now] },
                y: { range: [Math.max(0, Math.min.apply(null, values) - pad), Math.max.apply(null, values) + pad] } },
      axes: [{ stroke: "#424242", grid: { stroke: "#e0e0e0" } },
             { stroke: "#424242", grid: { stroke: "#e0e0e0" }, size: 44 }],
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      series: [{}, { label: "Glucose (" + chart.units + ")", stroke: "#1a237e", width: 2,
                     points: { show: true, size: 4, fill: "#1a237e" } }],
      hooks: { drawClear: [bandsHook], draw: [placeMarkers] },
    };
    if (plot) plot.destroy();
    plot = new uPlot(options, [xs, ys], chartBox);
    document.getElementById("chart-summary").textContent = ("Glucose over the last " + chart.hours + " hours in " + chart.units +
      (ys.length ? ", latest " + ys[ys.length - 1] : ", no readings") + ", with " + chart.markers.length + " alert markers (listed below the chart).");
    chartBox.setAttribute("data-points", String(ys.length));
  }

  function loadChart(hours) {
    currentHours = hours;
    document.querySelectorAll(".range-button").forEach(function (button) {
      button.setAttribute("aria-pressed", String(Number(button.getAttribute("data-hours")) === hours));
    });
    fetch(data.chartUrl + "?hours=" + hours, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.json(); })
      .then(draw)
      .catch(function () {
        problem.textContent = "The chart could not be loaded. Reload the page to try again.";
        problem.classList.remove("hide");
      });
  }

  document.querySelectorAll(".range-button").forEach(function (button) {
    button.addEventListener("click", function () { loadChart(Number(button.getAttribute("data-hours"))); });
  });
  window.addEventListener("resize", function () { if (plot && current) plot.setSize({ width: Math.max(280, chartBox.clientWidth), height: 240 }); });
  if (chartMark !== null) loadChart(6);
})();
