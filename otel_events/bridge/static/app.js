// The live page: the thread list, one thread followed over SSE, its connection state.
// Plain ES modules, no build step, nothing from a CDN. Nothing here runs inline or
// evaluates strings, so the page works under a strict Content-Security-Policy.
//
// Events are folded into the thread's state as they arrive (O(1) each); drawing waits
// for the next animation frame, so a burst of a thousand events costs one render.

import { ThreadState } from "./state.js";
import { ThreadList } from "./threads.js";
import { ThreadView } from "./view.js";

const TOKEN_KEY = "otel-events-token";
const EVENT_TYPES = ["thread.started", "turn.started", "turn.completed", "turn.failed",
  "item.started", "item.updated", "item.completed", "item.plan.delta", "progress.update",
  "token.count", "error", "stream.overflow", "request_user_input"];
// The first time running bars advance after the page starts (then see grow()).
const GROW_MS = 100;
const POLL_MS = 3000;

// What a reset means, in words, by the reason the bridge gives.
const RESET_REASONS = {
  cursor_expired: "the events since this page last saw the thread are older than the bridge keeps",
  cursor_ahead: "the page was further along than the bridge (it probably restarted)",
  cursor_unknown: "the bridge did not recognise the page's position",
  epoch_changed: "the bridge restarted or forgot the thread since the page last saw it",
  fell_behind: "the page fell too far behind the live stream",
  history_expired: "the start of this thread is older than the bridge keeps",
};

const $ = (id) => document.getElementById(id);
const traceUrl = document.querySelector('meta[name="otel-events-trace-url"]')?.content || "";

// The bridge token: taken from ?token= once, kept for this tab only, and removed from
// the address bar so it does not stay in history, bookmarks or a shared link.
const initial = new URL(location.href);
let token = initial.searchParams.get("token") || sessionStorage.getItem(TOKEN_KEY) || "";
if (initial.searchParams.has("token")) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  initial.searchParams.delete("token");
  history.replaceState(history.state, "", initial);
}

let selected = initial.searchParams.get("thread") || "";
let state = null;
let source = null;
let lastId = null;        // the last SSE id ("epoch:seq"), kept exactly as sent
let reconnectTimer = 0;
let reconnectDelay = 1000;
let frame = 0;
let firstRender = false;
let stats = { applied: 0, resets: 0 };

const view = new ThreadView($("thread"), { traceUrl });
view.onResize = () => schedule();
view.announce = (text) => { $("announce").textContent = text; };
const threads = new ThreadList({
  list: $("threads"), filter: $("filter"), status: $("status-filter"), counts: $("counts"),
  onSelect: (id, push) => select(id, push),
});

/** The producer's clock: ours, unless its events are stamped later than that. */
function now() {
  const latest = state ? state.latest : NaN;
  return Number.isFinite(latest) ? Math.max(Date.now(), latest) : Date.now();
}

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  performance.mark("otel-events:render-start");
  const t = now();
  // Exposed for checks (and the curious): how many events this page has applied.
  document.body.dataset.applied = String(stats.applied);
  view.render(t);
  if (state && state.turns.size) {
    // The list polls every few seconds; the followed thread's status is live.
    threads.patch(selected, { outcome: state.outcome, turn_count: state.turnCount }, t);
  }
  performance.measure("otel-events:render", "otel-events:render-start");
  if (!firstRender && state && state.turns.size) {
    firstRender = true;
    performance.mark("otel-events:first-render");
  }
}

// Running bars grow between events: a timer, only while something runs and the tab is
// visible, as often as that moves a bar by about two pixels (10 to 1 times a second).
function grow() {
  let delay = 1000;
  if (state && !document.hidden) {
    delay = view.tickDelay();
    if (delay) {
      const t = now();
      requestAnimationFrame(() => view.tick(t));
    } else {
      delay = 1000;
    }
  }
  setTimeout(grow, delay);
}
setTimeout(grow, GROW_MS);

// -- connection ---------------------------------------------------------------------

function setConnection(kind, text, detail) {
  const node = $("connection");
  node.dataset.state = kind;
  node.textContent = text;
  node.title = detail || text;
}

function showReset(reason) {
  const banner = $("reset-banner");
  const why = RESET_REASONS[reason] || `the bridge could not resume the stream (${reason})`;
  $("reset-text").textContent = `Reset: ${why}. The page now shows the thread as the ` +
    "bridge holds it; steps it no longer keeps are summarised or left out, and live " +
    "updates continue from here.";
  banner.hidden = false;
}

function streamUrl() {
  const q = new URLSearchParams();
  if (token) q.set("access_token", token);
  // The browser resends the last id as Last-Event-ID on its own reconnections; the
  // query carries it when the page opens a new EventSource itself.
  if (lastId != null) q.set("last_event_id", lastId);
  const qs = q.toString();
  return `v1/threads/${encodeURIComponent(selected)}/events${qs ? `?${qs}` : ""}`;
}

function connect() {
  if (source) source.close();
  clearTimeout(reconnectTimer);
  if (!selected) return;
  setConnection("connecting", "connecting…");
  const es = new EventSource(streamUrl());
  source = es;
  es.onopen = () => {
    if (source !== es) return;
    reconnectDelay = 1000;
    setConnection("live", "live", "Connected: events appear as the agent reports them.");
    view.setWaiting(!state || state.applied === 0);
    schedule();
  };
  es.onerror = (e) => {
    // An agent's own "error" event arrives as a message named "error", which
    // EventSource also hands to onerror: that is content, not a connection problem.
    if (source !== es || e instanceof MessageEvent) return;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an HTTP error, e.g. 401 or 503): retry ourselves, slower
      // each time, and check whether a token is what is missing.
      setConnection("reconnecting", "reconnecting…",
        `The connection failed; trying again in ${Math.round(reconnectDelay / 1000)} s.`);
      reconnectTimer = setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 30_000);
      refreshThreads();
    } else {
      setConnection("reconnecting", "reconnecting…",
        "The connection dropped; the browser is reconnecting and will resume where it was.");
    }
  };
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (msg) => {
      if (source !== es) return;
      if (msg.lastEventId) lastId = msg.lastEventId;
      let event;
      try { event = JSON.parse(msg.data); } catch { return; }
      if (!event || typeof event !== "object") return;
      if (!state) state = new ThreadState(selected);
      state.apply(event, Date.now());
      stats.applied += 1;
      if (view.state !== state) view.show(state);
      view.setWaiting(false);
      schedule();
    });
  }
  es.addEventListener("reset", (msg) => {
    if (source !== es) return;
    let body;
    try { body = JSON.parse(msg.data); } catch { return; }
    state = ThreadState.fromSnapshot(selected, body.snapshot);
    // A reset stands for the state up to its position; the stream goes on from there.
    lastId = msg.lastEventId || `${body.epoch}:${body.seq}`;
    stats.resets += 1;
    document.body.dataset.resets = String(stats.resets);
    document.body.dataset.lastReset = String(body.reason);
    view.show(state);
    view.setWaiting(false);
    showReset(String(body.reason));
    setConnection("live", "live · reset", "Reset: the page now shows the bridge's state.");
    schedule();
  });
}

function select(id, push) {
  if (!id) return;
  if (id === selected && source) return;
  selected = id;
  lastId = null;
  state = new ThreadState(id);
  firstRender = false;
  $("reset-banner").hidden = true;
  view.show(state);
  threads.select(id);
  document.title = `${id} · otel-events`;
  // The selected thread is in the address, so the link can be shared.
  const url = new URL(location.href);
  url.searchParams.set("thread", id);
  url.searchParams.delete("token");
  if (push) history.pushState({ thread: id }, "", url);
  else history.replaceState({ thread: id }, "", url);
  document.body.dataset.nav = "closed";
  connect();
  schedule();
}

window.addEventListener("popstate", () => {
  const id = new URL(location.href).searchParams.get("thread");
  if (id && id !== selected) select(id, false);
});

// -- thread list --------------------------------------------------------------------

let polling = false;
async function refreshThreads() {
  if (polling) return;
  polling = true;
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch("v1/threads", { headers, cache: "no-store" });
    if (response.status === 401) {
      $("token-form").hidden = false;
      setConnection("unauthorized", "token needed", "The bridge needs its token.");
      return;
    }
    if (!response.ok) return;
    const body = await response.json();
    const list = Array.isArray(body.threads) ? body.threads : [];
    threads.update(list, Date.now());
    if (!selected && list.length) {
      // Nothing chosen: follow the newest thread.
      const newest = threads.order[0];
      if (newest) select(newest.id, false);
    }
    if (!selected) {
      $("thread").replaceChildren();
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.textContent = "No thread yet. Send events to this bridge (see docs/bridge.md) " +
        "and they appear here.";
      $("thread").append(hint);
    }
  } catch {
    // The bridge is unreachable: the stream's state says so; the next poll retries.
  } finally {
    polling = false;
  }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-form").hidden = true;
  refreshThreads();
  if (selected) connect();
});
$("reset-dismiss").addEventListener("click", () => { $("reset-banner").hidden = true; });
$("nav-toggle").addEventListener("click", () => {
  const open = document.body.dataset.nav !== "open";
  document.body.dataset.nav = open ? "open" : "closed";
  $("nav-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("filter").focus();
});
document.addEventListener("keydown", (e) => {
  // "/" jumps to the filter, as in many tools.
  if (e.key === "/" && !e.target.closest?.("input, textarea, select")) {
    e.preventDefault();
    document.body.dataset.nav = "open";
    $("filter").focus();
  }
});
document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshThreads(); });

if (selected) select(selected, false);
else document.body.dataset.nav = "open";
refreshThreads();
setInterval(() => { if (!document.hidden) refreshThreads(); }, POLL_MS);
