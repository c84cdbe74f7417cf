// The live progress page: one thread's turns and items, folded from its SSE stream.
// No build step, no dependency. Content is only ever set with textContent (never as
// HTML), since event fields come from agents.
"use strict";

const params = new URLSearchParams(location.search);
const traceTemplate = document.querySelector('meta[name="otel-events-trace-url"]').content;
let token = params.get("token") || sessionStorage.getItem("otel-events-token") || "";
let selected = params.get("thread") || "";
let source = null;
let lastId = null;          // seq of the last real event: synthetic frames have no id
let reconnectTimer = null;
let state = emptyState();
let dirty = false;

const EVENT_TYPES = ["thread.started", "turn.started", "turn.completed", "turn.failed",
  "item.started", "item.updated", "item.completed", "progress.update", "token.count",
  "error", "stream.overflow"];

function emptyState() {
  return { seq: 0, turns: new Map(), loose: newTurn(""), running: null, count: 0,
           lastError: null };
}
function newTurn(id) {
  return { turn_id: id, status: "running", items: new Map(), usage: null, error: null,
           trace_id: null, started_at: null, completed_at: null, duration_ms: null };
}

// -- folding (mirrors otel_events/snapshot.py) ----------------------------------------

function turnFor(id) {
  if (id == null) return state.running;
  let turn = state.turns.get(id);
  if (!turn) turn = startTurn(id, null);
  return turn;
}
function startTurn(id, ev) {
  state.count += 1;
  const turn = newTurn(id || `turn_${state.count}`);
  if (ev) { turn.started_at = ev.timestamp || null; turn.trace_id = ev.trace_id || null; }
  state.turns.set(turn.turn_id, turn);
  state.running = turn;
  return turn;
}
function msBetween(a, b) {
  if (!a || !b) return null;
  const d = Date.parse(b) - Date.parse(a);
  return Number.isFinite(d) ? d : null;
}
function apply(ev) {
  state.seq = ev.seq || state.seq;
  switch (ev.type) {
    case "turn.started": startTurn(ev.turn_id, ev); break;
    case "turn.completed": case "turn.failed": {
      const turn = turnFor(ev.turn_id) || startTurn(null, null);
      if (turn.status !== "running") break;
      turn.status = ev.type === "turn.failed" ? "failed" : "completed";
      turn.completed_at = ev.timestamp || null;
      turn.duration_ms = ev.duration_ms ?? msBetween(turn.started_at, turn.completed_at);
      if (ev.usage) turn.usage = ev.usage;
      if (ev.error) turn.error = ev.error;
      turn.trace_id = turn.trace_id || ev.trace_id || null;
      if (state.running === turn) state.running = null;
      break;
    }
    case "item.started": case "item.updated": case "item.completed": {
      const it = ev.item || {};
      const turn = turnFor(ev.turn_id) || state.loose;
      let item = turn.items.get(it.id);
      if (!item) {
        item = { id: it.id, type: it.type, status: "in_progress", description: null,
                 started_at: null, duration_ms: null, error: null, progress: null };
        turn.items.set(it.id, item);
      }
      if (it.description != null) item.description = it.description;
      if (it.type) item.type = it.type;
      item.started_at = it.started_at || item.started_at ||
        (ev.type === "item.completed" ? null : ev.timestamp || null);
      if (ev.type === "item.completed") {
        item.status = it.status || "completed";
        item.duration_ms = it.duration_ms ??
          msBetween(item.started_at, it.completed_at || ev.timestamp);
      } else if (it.status) {
        item.status = it.status;
      }
      if (it.error) item.error = it.error;
      break;
    }
    case "progress.update": {
      const turn = turnFor(ev.turn_id) || state.loose;
      const item = turn.items.get(ev.item_id);
      if (item) item.progress = ev.fraction;
      break;
    }
    case "token.count": {
      const turn = turnFor(ev.turn_id);
      if (turn) turn.usage = ev.usage;
      break;
    }
    case "error": state.lastError = ev.message; break;
  }
}
function fromSnapshot(snap) {
  state = emptyState();
  state.seq = snap.seq || snap.last_seq || 0;
  state.count = snap.turn_count || 0;
  state.lastError = snap.last_error;
  for (const t of snap.turns || []) {
    const turn = Object.assign(newTurn(t.turn_id), t, { items: new Map() });
    for (const it of t.items || []) turn.items.set(it.id, Object.assign({}, it));
    state.turns.set(turn.turn_id, turn);
    if (t.turn_id === snap.running_turn) state.running = turn;
  }
  for (const it of snap.items || []) state.loose.items.set(it.id, Object.assign({}, it));
}

// -- rendering ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value != null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child != null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
function fmtMs(ms) {
  if (ms == null) return "";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}
function statusLabel(status) {
  return status === "failed" ? "✗ failed" : status === "in_progress" ? "running…"
    : status === "running" ? "running…" : status === "completed" ? "✓ completed" : status;
}
function elapsed(start) {
  const t = Date.parse(start || "");
  return Number.isFinite(t) ? Math.max(0, Date.now() - t) : null;
}
function usageText(u) {
  if (!u) return "";
  return `tokens: ${u.input_tokens || 0} in (${u.cached_input_tokens || 0} cached), ` +
    `${u.output_tokens || 0} out`;
}
function renderItem(item) {
  const running = item.status === "in_progress";
  const duration = running ? elapsed(item.started_at) : item.duration_ms;
  const li = el("li", { class: "item", "data-item-id": item.id, "data-status": item.status },
    el("span", { class: "type" }, item.type || ""),
    el("span", { class: "description" }, item.description || item.id),
    el("span", { class: "status", "data-status": item.status }, statusLabel(item.status)),
    el("span", { class: "duration" }, duration == null ? "" : ` ${fmtMs(duration)}`),
    running && item.progress != null
      ? el("progress", { max: "1", value: String(item.progress) }) : null);
  if (item.error && item.error.message) {
    li.append(el("div", { class: "error" }, item.error.message));
  }
  return li;
}
function renderTurn(turn) {
  const duration = turn.status === "running" ? elapsed(turn.started_at) : turn.duration_ms;
  const head = el("div", { class: "turn-head" },
    el("h3", {}, turn.turn_id),
    el("span", { class: "status", "data-status": turn.status }, statusLabel(turn.status)),
    el("span", { class: "duration" }, fmtMs(duration)),
    el("span", { class: "usage" }, usageText(turn.usage)));
  if (turn.trace_id) {
    head.append(el("a", { class: "trace", target: "_blank", rel: "noopener",
      href: traceTemplate.replace("{trace_id}", encodeURIComponent(turn.trace_id)) },
      "view trace"));
  }
  const section = el("section", { class: "turn", "data-turn-id": turn.turn_id,
                                   "data-status": turn.status }, head);
  if (turn.error && turn.error.message) section.append(el("div", { class: "error" },
    turn.error.message));
  section.append(el("ol", { class: "items" }, ...[...turn.items.values()].map(renderItem)));
  return section;
}
function render() {
  dirty = false;
  const root = document.getElementById("thread");
  if (!selected) return;
  const turns = [...state.turns.values()];
  if (state.loose.items.size) turns.unshift(Object.assign(newTurn("(no turn)"),
    { status: "completed", items: state.loose.items }));
  root.replaceChildren(
    el("h2", {}, selected),
    state.lastError ? el("p", { class: "error" }, state.lastError) : null,
    turns.length ? null : el("p", { class: "hint" }, "No turn yet."),
    ...turns.reverse().map(renderTurn));
}
function changed() {
  if (!dirty) { dirty = true; requestAnimationFrame(render); }
}
setInterval(() => { if (state.running) changed(); }, 500);

// -- connection -----------------------------------------------------------------------

function setConnection(s, text) {
  const node = document.getElementById("connection");
  node.dataset.state = s;
  node.textContent = text;
}
function streamUrl() {
  const q = new URLSearchParams();
  if (token) q.set("access_token", token);
  if (lastId != null) q.set("last_event_id", lastId);
  const qs = q.toString();
  return `v1/threads/${encodeURIComponent(selected)}/events${qs ? "?" + qs : ""}`;
}
function connect() {
  if (source) source.close();
  clearTimeout(reconnectTimer);
  setConnection("connecting", "connecting…");
  // The browser resends the last id as Last-Event-ID on its own reconnections; the
  // query carries it when this page opens a new EventSource itself.
  source = new EventSource(streamUrl());
  source.onopen = () => setConnection("live", "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      setConnection("reconnecting", "reconnecting…");
      reconnectTimer = setTimeout(connect, 1000);
    } else {
      setConnection("reconnecting", "reconnecting…");
    }
  };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (msg) => {
      if (msg.lastEventId) lastId = msg.lastEventId;  // "epoch:seq", kept as sent
      apply(JSON.parse(msg.data));
      // Exposed for checks (and curious users): how many events this page applied.
      document.body.dataset.applied = String(Number(document.body.dataset.applied || 0) + 1);
      changed();
    });
  }
  source.addEventListener("reset", (msg) => {
    const body = JSON.parse(msg.data);
    fromSnapshot(body.snapshot);
    // A reset describes the state up to its position; the stream goes on from there.
    lastId = msg.lastEventId || `${body.epoch}:${body.seq}`;
    document.body.dataset.resets = String(Number(document.body.dataset.resets || 0) + 1);
    document.body.dataset.lastReset = body.reason;
    changed();
  });
}
function select(threadId) {
  selected = threadId;
  lastId = null;
  state = emptyState();
  const url = new URL(location.href);
  url.searchParams.set("thread", threadId);
  history.replaceState(null, "", url);
  connect();
  changed();
  refreshThreads();
}

async function refreshThreads() {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let body;
  try {
    const response = await fetch("v1/threads", { headers });
    if (response.status === 401) {
      document.getElementById("token-form").hidden = false;
      return;
    }
    body = await response.json();
  } catch (err) {
    return;
  }
  const list = document.getElementById("threads");
  list.replaceChildren(...body.threads.map((t) => {
    const li = el("li", { "data-thread-id": t.thread_id,
      "aria-current": t.thread_id === selected ? "true" : null },
      t.thread_id, el("span", { class: "status", "data-status": t.status },
        statusLabel(t.status)));
    li.onclick = () => select(t.thread_id);
    return li;
  }));
  if (!selected && body.threads.length) select(body.threads[body.threads.length - 1].thread_id);
}

document.getElementById("token-form").onsubmit = (e) => {
  e.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("otel-events-token", token);
  document.getElementById("token-form").hidden = true;
  refreshThreads();
  if (selected) connect();
};
if (token) sessionStorage.setItem("otel-events-token", token);
if (selected) connect();
refreshThreads();
setInterval(refreshThreads, 3000);
