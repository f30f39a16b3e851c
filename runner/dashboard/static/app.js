// The runner dashboard page: polls /api/state once a second and draws it. No library, no build step.
"use strict";

const POLL_MS = 1000;
const openFailures = new Set();  // ids whose traceback the user opened (kept across redraws)
let failuresShown = false;  // until the first list is drawn, the newest failure opens by itself

function byId(id) { return document.getElementById(id); }

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (numeric) td.className = "n";
}

function fillTable(body, rows, columns) {
  body.replaceChildren();
  for (const item of rows) {
    const row = body.insertRow();
    for (const [value, numeric] of columns(item)) cell(row, value, numeric);
  }
}

function showStatus(status) {
  const jobs = status.jobs;
  byId("broker").textContent = "broker " + status.broker.address + " · " + status.clients + " clients";
  byId("workers-count").textContent = status.workers.length;
  for (const key of ["pending", "running", "done", "failed", "dead"]) byId(key).textContent = jobs[key];
  const workers = [...status.workers].sort((a, b) => String(a.id).localeCompare(String(b.id)));
  fillTable(byId("workers"), workers, (w) => [
    [w.id], [w.host], [w.pid, true], [(w.queues || []).join(", ")],
    [Object.entries(w.slots || {}).map(([pool, n]) => pool + " " + n).join(", ")],
    [w.running, true], [w.recycled || 0, true],
  ]);
  const queues = Object.entries(status.queues || {}).sort();
  fillTable(byId("queues"), queues.length ? queues : [["(none waiting)", 0]], ([name, pending]) => [[name], [pending, true]]);
}

function showFailures(failures) {
  const box = byId("failures");
  box.replaceChildren();
  if (!failures.length) {
    const none = document.createElement("p");
    none.className = "quiet";
    none.textContent = "none";
    box.append(none);
    return;
  }
  if (!failuresShown) openFailures.add(failures[0].id);
  failuresShown = true;
  for (const failure of failures) {
    const details = document.createElement("details");
    details.open = openFailures.has(failure.id);
    details.addEventListener("toggle", () => {
      if (details.open) openFailures.add(failure.id); else openFailures.delete(failure.id);
    });
    const summary = document.createElement("summary");
    const type = document.createElement("span");
    type.className = "type";
    type.textContent = failure.type || "Error";
    summary.append(type, ": " + failure.message + " — " + failure.task + " (" + failure.id + ", " + failure.state +
                   ", queue " + failure.queue + ", worker " + (failure.worker || "-") + ", " +
                   failure.attempts + " attempts)");
    const trace = document.createElement("pre");
    trace.textContent = failure.traceback || "(no traceback)";
    details.append(summary, trace);
    box.append(details);
  }
}

function drawChart(history, maxSpan) {
  // The last minute at first, growing by whole minutes up to the history's span.
  const oldest = history.length ? history[0].age : 0;
  const span = Math.min(maxSpan, Math.max(60, Math.ceil(oldest / 60) * 60));
  const canvas = byId("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width, height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const left = 48, right = 8, top = 8, bottom = 22;
  const plotW = width - left - right, plotH = height - top - bottom;
  let peak = 1;
  for (const s of history) peak = Math.max(peak, s.completed, s.failed);
  peak = niceCeiling(peak);
  const x = (age) => left + plotW * (1 - age / span);
  const y = (rate) => top + plotH * (1 - rate / peak);
  const style = getComputedStyle(document.documentElement);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = style.getPropertyValue("--quiet");
  g.strokeStyle = style.getPropertyValue("--line");
  g.lineWidth = 1;
  for (let i = 0; i <= 5; i++) {
    const rate = peak * i / 5;
    g.beginPath(); g.moveTo(left, y(rate)); g.lineTo(width - right, y(rate)); g.stroke();
    g.fillText(formatRate(rate), 4, y(rate) + 4);
  }
  const tick = span > 60 ? 60 : 10;
  for (let age = 0; age <= span; age += tick) {
    const label = age === 0 ? "now" : tick === 60 ? "-" + age / 60 + " min" : "-" + age + " s";
    g.fillText(label, x(age) - 14, height - 6);
  }
  for (const [key, color] of [["completed", "--done"], ["failed", "--fail"]]) {
    g.strokeStyle = style.getPropertyValue(color);
    g.lineWidth = 2;
    g.beginPath();
    history.filter((s) => s.age <= span).forEach((s, i) => (i ? g.lineTo : g.moveTo).call(g, x(s.age), y(s[key])));
    g.stroke();
  }
}

function niceCeiling(value) {
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function formatRate(rate) { return rate >= 10 ? rate.toFixed(0) : rate.toFixed(1); }

async function refresh() {
  try {
    const answer = await fetch("api/state", { cache: "no-store" });
    const state = await answer.json();
    if (state.status) showStatus(state.status);
    showFailures(state.failures);
    drawChart(state.history, state.history_seconds);
    byId("error").hidden = !state.error;
    byId("error").textContent = state.error ? "broker unreachable: " + state.error : "";
    byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    byId("error").hidden = false;
    byId("error").textContent = "dashboard unreachable: " + error;
  }
}

refresh();
setInterval(refresh, POLL_MS);
