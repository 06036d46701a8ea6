// thinwire dashboard: reads the server-sent event stream (/api/stream) of every run's
// events.jsonl and draws one uPlot chart per figure, one series per run (and node or link).
"use strict";

const CHARTS = [
  ["loss", "Training loss"],
  ["accuracy", "Test accuracy (%)"],
  ["bytes", "Wire bytes, cumulative (MB)"],
  ["bandwidth", "Bandwidth per link, measured (kB/s)"],
  ["network", "Machine network, OS counters (kB/s)"],
  ["uploads", "Uploads sent (fraction of opportunities)"],
  ["comm", "Communication time (s): simulated vs measured"],
  ["steptime", "Step / round time (ms)"],
  ["cpu", "CPU (% of one core)"],
  ["memory", "Memory RSS (MB)"],
  ["gpu", "GPU utilization (%)"],
  ["gpumem", "GPU memory (MB)"],
];
const EMPTY = {
  gpu: "no GPU reported (absent on CPU-only machines)",
  gpumem: "no GPU reported (absent on CPU-only machines)",
  comm: "no communication time reported yet",
};
const RANGES = {accuracy: [0, 100], uploads: [0, 1.05]};  // fixed y ranges; others fit
// one color per run (or node) on every chart; its series within a chart differ by dash
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const DASHES = [[], [8, 4], [2, 3], [12, 3, 3, 3], [1, 6]];
const colorOf = new Map();  // run or run/node -> color, in order of appearance
const LIVE_S = 15;  // a run with no event for longer and no `end` is shown as stopped

const runs = {};    // name -> {t0, last, lastT, ended, peers, offset}
const charts = {};  // id -> {el, plot, names, series: Map(name -> {x: [], y: []})}
let connected = false, source = null, dirty = true;

function num(v) { return typeof v === "number" && isFinite(v); }

function setupCharts() {
  const box = document.getElementById("charts");
  for (const [id, title] of CHARTS) {
    const el = document.createElement("div");
    el.className = "chart";
    el.id = "chart-" + id;
    el.dataset.points = "0";
    el.innerHTML = `<h3>${title}</h3><div class="plot"><div class="empty">` +
      `${EMPTY[id] || "no data yet"}</div></div>`;
    box.appendChild(el);
    charts[id] = {el, plot: null, names: [], series: new Map()};
  }
}

function put(id, who, label, x, v, scale = 1) {
  if (!num(v)) return;
  const series = charts[id].series, name = who + label;
  if (!colorOf.has(who)) colorOf.set(who, COLORS[colorOf.size % COLORS.length]);
  if (!series.has(name)) series.set(name, {x: [], y: [], who});
  const s = series.get(name);
  s.x.push(x);
  s.y.push(v * scale);
  dirty = true;
}

function fraction(sent, skipped) {
  return num(sent) && num(skipped) && sent + skipped > 0 ? sent / (sent + skipped) : null;
}

// one event -> points on the charts; `who` names the run, and the node when it says one
function extract(ev, run) {
  const who = ev.node ? `${ev.run || run}/${ev.node}` : run;
  const x = Math.round((ev.t - runs[run].t0) * 1000) / 1000;
  if (ev.type === "step" || ev.type === "round") {
    put("loss", who, "", x, ev.train_loss);
    put("accuracy", who, "", x, ev.test_accuracy, 100);
    put("bytes", who, " up", x, ev.bytes_up_wire, 1e-6);
    put("bytes", who, " down", x, ev.bytes_down_wire, 1e-6);
    put("uploads", who, "", x, fraction(ev.uploads, ev.skipped));
    put("comm", who, " simulated", x, ev.comm_time_s_sim);
    put("comm", who, " measured", x, ev.comm_time_s);
  } else if (ev.type === "epoch") {
    put("accuracy", who, "", x, ev.test_accuracy, 100);
  } else if (ev.type === "resources") {
    put("cpu", who, "", x, ev.cpu_percent);
    put("memory", who, "", x, ev.rss_bytes, 1e-6);
    put("gpu", who, "", x, ev.gpu_utilization);
    put("gpumem", who, "", x, ev.gpu_memory_bytes ?? ev.gpu_memory_allocated_bytes, 1e-6);
    put("steptime", who, "", x, ev.step_time_s, 1e3);
    for (const [link, bps] of Object.entries(ev.link_bps || {}))
      put("bandwidth", who, " " + link.replace(">", "→"), x, bps, 1e-3);
    put("network", who, " sent", x, ev.net_sent_bps, 1e-3);
    put("network", who, " received", x, ev.net_recv_bps, 1e-3);
  }
}

function observe(run, ev) {
  const r = runs[run];
  if (r.t0 === null) r.t0 = ev.t;
  r.lastT = Math.max(r.lastT || 0, ev.t);
  if (ev.type === "end") r.ended = true;
  if (ev.peers && typeof ev.peers === "object") Object.assign(r.peers, ev.peers);
  if (ev.type === "peer" && ev.peer) r.peers[ev.peer] = ev.state || "?";
  for (const k of ["step", "round", "train_loss", "test_accuracy", "bytes_up_wire",
                   "bytes_down_wire", "uploads", "skipped", "cpu_percent", "rss_bytes"])
    if (ev[k] !== undefined && ev[k] !== null && ev.type !== "epoch") r.last[k] = ev[k];
  if (ev.type === "epoch" && num(ev.test_accuracy)) r.last.test_accuracy = ev.test_accuracy;
  extract(ev, run);
}

function newRun(name) {
  runs[name] = {t0: null, last: {}, lastT: null, ended: false, peers: {}, offset: 0};
}

function forget(name) {  // the file was started anew: drop what the page holds of it
  for (const c of Object.values(charts))
    for (const [key, s] of [...c.series])
      if (s.who === name || s.who.startsWith(name + "/")) c.series.delete(key);
  newRun(name);
}

function onEvents(msg) {
  if (!runs[msg.run]) newRun(msg.run);
  if (msg.reset) forget(msg.run);
  if (msg.start !== runs[msg.run].offset) return;  // a repeat after a reconnect
  for (const ev of msg.events) observe(msg.run, ev);
  runs[msg.run].offset = msg.next;
}

function onRuns(list) {
  for (const r of list) if (!runs[r.name]) newRun(r.name);
  dirty = true;
}

function align(list) {
  const xs = [...new Set(list.flatMap(s => s.x))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const data = [xs];
  for (const s of list) {
    const ys = new Array(xs.length).fill(null);
    s.x.forEach((x, j) => { ys[at.get(x)] = s.y[j]; });
    data.push(ys);
  }
  return data;
}

// tick labels with as many decimals as the tick spacing needs (uPlot passes it as incr)
function ticks(u, vals, axis, space, incr) {
  const decimals = Math.min(Math.max(0, -Math.floor(Math.log10(incr || 1))), 8);
  return vals.map(v => v === null ? "" : Math.abs(v) >= 1e4 && incr >= 1e3
    ? (v / 1e3).toFixed(0) + "k" : v.toFixed(decimals));
}

function plotOptions(id, el, names, list) {
  const dashOf = new Map();  // series index within its run or node
  const style = (n, i) => {
    const who = list[i].who, k = dashOf.get(who) || 0;
    dashOf.set(who, k + 1);
    return {label: n, stroke: colorOf.get(who), dash: DASHES[k % DASHES.length], width: 1.5,
            spanGaps: true, points: {show: false}};
  };
  const y = RANGES[id] ? {range: RANGES[id]} : {};
  return {
    width: Math.max(el.clientWidth - 16, 300), height: 220,
    scales: {x: {time: false}, y},
    axes: [{label: "s", labelSize: 14}, {size: 60, values: ticks}],
    series: [{label: "s"}].concat(names.map(style)),
    legend: {live: true},
  };
}

function drawChart(id, c) {
  const names = [...c.series.keys()].sort();
  if (!names.length) return;
  const list = names.map(n => c.series.get(n)), data = align(list);
  const box = c.el.querySelector(".plot");
  if (c.plot && names.join("\n") === c.names.join("\n")) {
    c.plot.setData(data);
  } else {
    if (c.plot) c.plot.destroy();
    box.innerHTML = "";
    c.plot = new uPlot(plotOptions(id, c.el, names, list), data, box);
    c.names = names;
  }
  c.el.dataset.points = String(names.reduce((n, k) => n + c.series.get(k).x.length, 0));
  c.el.dataset.series = String(names.length);
}

function runState(r) {
  if (r.ended) return "finished";
  return r.lastT && Date.now() / 1000 - r.lastT < LIVE_S ? "live" : "stopped";
}

function fmt(v, digits = 3, scale = 1) {
  return num(v) ? (v * scale).toFixed(digits) : "–";
}

function peerCounts(r) {
  const states = Object.values(r.peers);
  if (!states.length) return "–";
  const alive = states.filter(s => s === "alive" || s === "active").length;
  return `${alive} alive, ${states.length - alive} gone`;
}

function drawTable() {
  const body = document.querySelector("#runs tbody");
  const names = Object.keys(runs).sort();
  if (!names.length) return;
  body.innerHTML = "";
  for (const name of names) {
    const r = runs[name], l = r.last, state = runState(r);
    const row = document.createElement("tr");
    const cells = [name, state, l.step ?? l.round ?? "–", fmt(l.train_loss, 4),
                   fmt(l.test_accuracy, 2, 100), fmt(l.bytes_up_wire, 3, 1e-6),
                   fmt(l.bytes_down_wire, 3, 1e-6), fmt(fraction(l.uploads, l.skipped), 3),
                   fmt(l.cpu_percent, 0), fmt(l.rss_bytes, 0, 1e-6), peerCounts(r)];
    for (const [i, text] of cells.entries()) {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (i === 1) td.className = "state-" + state;
      row.appendChild(td);
    }
    body.appendChild(row);
  }
}

function drawPeers() {
  const box = document.getElementById("peers");
  const names = Object.keys(runs).filter(n => Object.keys(runs[n].peers).length).sort();
  if (!names.length) return;
  box.className = "";
  box.innerHTML = "";
  for (const name of names) {
    const r = runs[name], line = document.createElement("div");
    line.className = "run";
    line.textContent = name + ": ";
    for (const [peer, state] of Object.entries(r.peers).sort()) {
      const shown = r.ended && (state === "alive" || state === "active") ? "finished" : state;
      const chip = document.createElement("span");
      chip.className = "peer " + shown;
      chip.textContent = `${peer} ${shown}`;
      line.appendChild(chip);
    }
    box.appendChild(line);
  }
}

function render() {
  drawTable();
  drawPeers();
  if (dirty) {
    dirty = false;
    for (const [id, c] of Object.entries(charts)) drawChart(id, c);
  }
  document.getElementById("clock").textContent = new Date().toLocaleTimeString();
}

function setConnection(text, cls) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.className = "badge " + (cls || "");
}

function connect() {
  const offsets = {};
  for (const [name, r] of Object.entries(runs)) offsets[name] = r.offset;
  source = new EventSource("/api/stream?offsets=" + encodeURIComponent(JSON.stringify(offsets)));
  source.addEventListener("open", () => { connected = true; setConnection("live", "live"); });
  source.addEventListener("runs", e => onRuns(JSON.parse(e.data)));
  source.addEventListener("events", e => onEvents(JSON.parse(e.data)));
  source.addEventListener("error", () => {
    connected = false;
    source.close();
    setConnection("server gone: showing the last data, retrying…", "down");
    setTimeout(connect, 3000);
  });
}

// for tests and the curious: what the charts hold
window.thinwire = {
  state: () => ({
    connected,
    runs: Object.fromEntries(Object.entries(runs).map(([n, r]) => [n, runState(r)])),
    charts: Object.fromEntries(Object.entries(charts).map(([id, c]) => [id,
      Object.fromEntries([...c.series].map(([n, s]) => [n, s.x.length]))])),
  }),
};

setupCharts();
connect();
setInterval(render, 1000);
window.addEventListener("resize", () => {
  for (const c of Object.values(charts))
    if (c.plot) c.plot.setSize({width: Math.max(c.el.clientWidth - 16, 300), height: 220});
});
