// raylm's dashboard: polls `/`, `/metrics` and `/dashboard/events` every 2 s (nodes every
// 15 s), draws rates from the differences of counters, and streams the chat box's answer.
// Every text from the server goes in with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const NODES_MS = 15000;
const POINTS = 150; // 5 minutes at one point per poll
const INFERENCE = new Set(["chat", "completions", "generate", "batch_generate"]);

// ---- the key: from the URL fragment (never sent to a server), else this tab's storage
let key = sessionStorage.getItem("raylm-key") || "";
if (location.hash.startsWith("#key=")) {
  key = decodeURIComponent(location.hash.slice(5));
  sessionStorage.setItem("raylm-key", key);
  history.replaceState(null, "", location.pathname);
}
const $ = (id) => document.getElementById(id);

class NeedKey extends Error {}

async function get(path) {
  const r = await fetch(path, { headers: key ? { Authorization: "Bearer " + key } : {} });
  if (r.status === 401 || r.status === 403) throw new NeedKey(path);
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return path === "/metrics" ? r.text() : r.json();
}

$("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("raylm-key", key);
  $("keyform").hidden = true;
  tick();
});

// ---- Prometheus text
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const p of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    out.push({ name: m[1], labels, value: parseFloat(m[3]) });
  }
  return out;
}
const pick = (ms, name, keep = () => true) => ms.filter((m) => m.name === name && keep(m.labels));
const seriesKey = (m) => m.name + JSON.stringify(Object.entries(m.labels).sort());

// Each series' increase between two readings of a counter: only series in both (a gateway
// worker left out of one scrape counts nothing, not a drop and a spike), and a series that
// went down restarted from 0 (an engine, a worker).
function increases(now, before, name, keep = () => true) {
  const was = new Map(pick(before, name, keep).map((m) => [seriesKey(m), m.value]));
  const out = [];
  for (const m of pick(now, name, keep)) {
    const b = was.get(seriesKey(m));
    if (b !== undefined) out.push({ labels: m.labels, d: m.value >= b ? m.value - b : m.value });
  }
  return out;
}
const increase = (now, before, name, keep) =>
  increases(now, before, name, keep).reduce((a, x) => a + x.d, 0);
function increaseBy(now, before, name, label) {
  const out = {};
  for (const x of increases(now, before, name)) out[x.labels[label]] = (out[x.labels[label]] || 0) + x.d;
  return out;
}

// A quantile of the observations between two readings of a histogram (as Prometheus'
// histogram_quantile: linear inside the bucket it falls in); null with none.
function quantile(q, now, before) {
  const cum = {};
  for (const x of increases(now, before, "raylm_time_to_first_token_seconds_bucket")) {
    cum[x.labels.le] = (cum[x.labels.le] || 0) + x.d;
  }
  const les = Object.keys(cum).sort((a, b) => parseFloat(a) - parseFloat(b));
  const n = cum["+Inf"] || 0;
  if (n <= 0) return null;
  let prevLe = 0, prevCount = 0;
  for (const le of les) {
    const upper = le === "+Inf" ? prevLe : parseFloat(le);
    if (cum[le] >= q * n) {
      const inBucket = cum[le] - prevCount;
      const frac = inBucket > 0 ? (q * n - prevCount) / inBucket : 1;
      return (prevLe + (upper - prevLe) * frac) * 1000;
    }
    prevLe = upper;
    prevCount = cum[le];
  }
  return prevLe * 1000;
}

// ---- charts: one uPlot each; rebuilt when its series change (a replica added)
const charts = {};
function chart(id, title, unit) {
  if (!charts[id]) {
    const box = document.createElement("div");
    box.className = "chart";
    box.id = "chart-" + id;
    const h = document.createElement("h3");
    h.textContent = title;
    box.append(h);
    $("charts").append(box);
    charts[id] = { box, title, unit, names: [], xs: [], ys: {}, plot: null };
  }
  return charts[id];
}
function push(c, t, values) {
  const names = Object.keys(values).sort();
  for (const n of names) if (!(n in c.ys)) c.ys[n] = c.xs.map(() => null);
  c.xs.push(t);
  for (const n of Object.keys(c.ys)) c.ys[n].push(n in values ? values[n] : null);
  if (c.xs.length > POINTS) {
    c.xs.shift();
    for (const n of Object.keys(c.ys)) c.ys[n].shift();
  }
  const all = Object.keys(c.ys).sort();
  const data = [c.xs, ...all.map((n) => c.ys[n])];
  if (!c.plot || all.join("|") !== c.names.join("|")) {
    if (c.plot) c.plot.destroy();
    c.names = all;
    const palette = ["#2b7bb9", "#e0731f", "#1f8f4e", "#c0392b", "#7d4fb0", "#8c6d31"];
    c.plot = new uPlot({
      width: Math.max(380, c.box.clientWidth - 10), height: 180,
      scales: { x: { time: true } },
      axes: [{}, { label: c.unit, size: 60 }],
      series: [{}, ...all.map((n, i) => ({ label: n, stroke: palette[i % palette.length], width: 2, spanGaps: false }))],
    }, data, c.box);
  } else {
    c.plot.setData(data);
  }
  c.box.dataset.points = String(c.xs.length);
  c.box.dataset.last = JSON.stringify(values);
}

let before = null; // the last /metrics reading and its time
function drawMetrics(ms, t) {
  if (before) {
    const dt = t - before.t;
    const inference = (l) => INFERENCE.has(l.route);
    const rps = increase(ms, before.ms, "raylm_requests_total", inference) / dt;
    push(chart("rps", "Requests/s", "req/s"), t, { "requests/s": rps });
    const errors = {};
    const failed = (l) => inference(l) && !l.status.startsWith("2");
    for (const x of increases(ms, before.ms, "raylm_requests_total", failed)) {
      errors[x.labels.status] = (errors[x.labels.status] || 0) + x.d / dt;
    }
    push(chart("errors", "Errors by status /s", "/s"), t, errors);
    push(chart("ttft", "TTFT (ms)", "ms"), t, { p50: quantile(0.5, ms, before.ms), p99: quantile(0.99, ms, before.ms) });
    // From the engines' own count: a stream without usage is counted too.
    const tokens = increase(ms, before.ms, "raylm_engine_generation_tokens_total");
    push(chart("tokens", "Output tokens/s", "tok/s"), t, { "tokens/s": tokens / dt });
    const kv = {};
    for (const m of pick(ms, "raylm_engine_kv_cache_usage")) kv[m.labels.replica] = m.value * 100;
    push(chart("kv", "KV-cache usage per replica (%)", "%"), t, kv);
    const hits = increaseBy(ms, before.ms, "raylm_engine_prefix_cache_hits_total", "replica");
    const queries = increaseBy(ms, before.ms, "raylm_engine_prefix_cache_queries_total", "replica");
    const hitRate = {};
    for (const r of Object.keys(queries)) hitRate[r] = queries[r] > 0 ? ((hits[r] || 0) / queries[r]) * 100 : null;
    push(chart("hits", "Prefix-cache hit rate per replica (%)", "%"), t, hitRate);
  }
  before = { ms, t };
}

// ---- tables
function cell(tr, text, cls) {
  const td = document.createElement("td");
  if (cls) {
    td.className = cls;
    const span = document.createElement("span");
    span.textContent = text;
    span.className = "state-" + text;
    td.append(span);
  } else {
    td.textContent = text;
  }
  tr.append(td);
}
function drawRoot(root) {
  $("meta").textContent = `v${root.version} · worker ${root.worker + 1}/${root.workers} · up ${Math.round(root.uptime_s)} s`;
  const ready = root.models.every((m) => m.ready_replicas > 0);
  const all = root.models.every((m) => m.ready_replicas === m.replicas);
  const pill = $("status");
  pill.textContent = root.draining ? "draining" : !ready ? "unavailable" : all ? "ready" : "degraded";
  pill.className = "pill " + (root.draining || !ready ? "down" : all ? "ok" : "degraded");
  const body = $("replicas").tBodies[0];
  body.replaceChildren();
  for (const r of root.replicas) {
    const tr = document.createElement("tr");
    tr.dataset.replica = r.replica_id;
    tr.dataset.state = r.state;
    cell(tr, r.model);
    cell(tr, r.replica_id);
    cell(tr, r.state, "state");
    cell(tr, (r.nodes && r.nodes.length ? r.nodes : [r.node]).join(", "));
    cell(tr, String(r.in_flight));
    cell(tr, String(r.restarts));
    cell(tr, r.detail);
    body.append(tr);
  }
  const select = $("model");
  const models = root.models.map((m) => m.model);
  if ([...select.options].map((o) => o.value).join() !== models.join()) {
    select.replaceChildren(...models.map((m) => new Option(m, m)));
  }
}

let lastEvent = 0;
let boot = null;
function drawEvents(feed) {
  const list = $("events");
  if (boot !== feed.boot) {
    // A gateway that restarted numbers its events from 1 again: read its feed from the start.
    const first = boot === null;
    boot = feed.boot;
    if (!first) {
      list.replaceChildren();
      lastEvent = 0;
      return;
    }
  }
  for (const e of feed.events) {
    lastEvent = Math.max(lastEvent, e.seq);
    const li = document.createElement("li");
    li.dataset.kind = e.kind;
    li.dataset.replica = e.replica;
    const when = new Date(e.time * 1000).toLocaleTimeString();
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = e.kind;
    li.append(`${when} `, kind, ` ${e.replica}: ${e.message}`);
    list.prepend(li);
  }
}

const GiB = 2 ** 30;
function drawNodes(answer) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of answer.nodes) {
    const tr = document.createElement("tr");
    tr.dataset.node = n.ip;
    const gpus = n.gpus.length
      ? n.gpus.map((g) => `${g.name} ${Math.round(g.memory_total_bytes / GiB)} GiB`).join(", ")
      : `${n.cpus} CPUs`;
    const v = n.versions;
    cell(tr, n.ip + (n.alive ? "" : " (dead)"));
    cell(tr, n.role);
    cell(tr, gpus);
    cell(tr, `${(n.memory_bytes / GiB).toFixed(1)} GiB`);
    cell(tr, `${(n.disk_free_bytes / GiB).toFixed(1)} GiB`);
    cell(tr, v ? `Ray ${v.ray} · ${v.vllm_dist} ${v.vllm} · torch ${v.torch} · Python ${v.python_full}` + (v.driver ? ` · driver ${v.driver}` : "") : n.error);
    body.append(tr);
  }
  $("nodes-error").textContent = answer.error || "";
}

// ---- polling
function needKey() {
  $("status").textContent = "key needed";
  $("status").className = "pill down";
  $("keyform").hidden = false;
}
async function tick() {
  // Each feed drawn on its own: one that fails (a slow /metrics) leaves the others live.
  const [root, text, feed] = await Promise.allSettled([get("/"), get("/metrics"), get(`/dashboard/events?since=${lastEvent}`)]);
  const failed = [root, text, feed].filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failed.some((e) => e instanceof NeedKey)) return needKey();
  if (root.status === "fulfilled") drawRoot(root.value);
  if (text.status === "fulfilled") drawMetrics(parseMetrics(text.value), Date.now() / 1000);
  if (feed.status === "fulfilled") drawEvents(feed.value);
  if (root.status === "rejected") {
    $("status").textContent = "gateway unreachable";
    $("status").className = "pill down";
  }
}
async function nodes() {
  try {
    drawNodes(await get("/dashboard/nodes"));
  } catch (e) {
    $("nodes-error").textContent =
      e instanceof NeedKey ? "The nodes need the admin key: open the dashboard with it." : String(e);
  }
}
tick();
nodes();
setInterval(tick, POLL_MS);
setInterval(nodes, NODES_MS);

// ---- the chat box: a streamed chat completion, its deltas appended as they come
$("chat").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("answer");
  out.textContent = "";
  out.dataset.done = "false";
  const body = {
    model: $("model").value,
    messages: [{ role: "user", content: $("prompt").value }],
    stream: true,
    max_tokens: 64,
  };
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body) });
    if (!r.ok) {
      out.textContent = `${r.status}: ${(await r.json()).error?.message ?? ""}`;
      return;
    }
    const reader = r.body.getReader();
    const text = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += text.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, at).trim();
        buf = buf.slice(at + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) out.textContent += `\n[error: ${chunk.error.message}]`;
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          out.textContent += delta;
          out.dataset.chunks = String(Number(out.dataset.chunks || 0) + 1);
        }
      }
    }
  } catch (e) {
    out.textContent += `\n[${e}]`;
  } finally {
    out.dataset.done = "true";
  }
});
