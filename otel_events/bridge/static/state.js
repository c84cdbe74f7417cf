// One thread's state, folded from its events (the same fold as the bridge's
// snapshot.py, with the same field names), plus what the view needs to redraw only what
// changed: dirty items and turns, and the items added since the last frame.
//
// Every event costs O(1) (map lookups, a top three of the slowest steps), so a turn of
// thousands of items never makes one event slower than the first.

import { outcomeOf, parseTime } from "./format.js";

// Content fields of an item, shown in its details (snapshot.CONTENT_FIELDS).
export const CONTENT_FIELDS = ["command", "exit_code", "server", "tool", "query", "message",
  "text", "output", "aggregated_output", "result", "arguments", "changes", "items"];
// The page keeps at most this many turns and items per turn (the bridge keeps fewer).
export const MAX_TURNS = 50;
export const MAX_ITEMS = 5000;
// How many of a turn's slowest ended items are marked: up to 3, never more than half
// of its ended items (in a turn of two steps, "slowest" means one), and none that took
// less than a tenth of the slowest (a 1 ms step is not slow beside two 1 s ones).
const SLOWEST = 3;
const SLOW_SHARE = 0.1;

export class Item {
  constructor(id, type, turn) {
    this.id = id;
    this.type = type || "";
    this.turn = turn;
    this.description = null;
    this.name = null;
    this.parentId = null;   // the view nests the item under it, if it is in the turn
    this.status = "in_progress";
    this.start = NaN;       // epoch ms
    this.end = NaN;
    this.durationMs = null;
    this.error = null;
    this.progress = null;
    this.progressMessage = null;
    this.traceId = null;
    this.spanId = null;
    this.usage = null;
    this.content = {};
    this.truncated = [];
    this.contentDropped = false;
    this.slow = false;      // one of its turn's slowest steps
    this.timed = false;     // counted among its turn's ended items with a duration
    this.version = 0;       // bumped on every change: the view redraws when it differs
  }
  get outcome() { return outcomeOf(this.status, this.error); }
  get running() { return this.status === "in_progress"; }
}

export class Turn {
  constructor(id, thread) {
    this.id = id;
    this.thread = thread;
    this.status = "running";
    this.start = NaN;
    this.end = NaN;
    this.durationMs = null;
    this.usage = null;
    this.error = null;
    this.traceId = null;
    this.spanId = null;
    this.items = new Map();
    this.itemsDropped = 0;
    this.failedItems = 0;
    this.running = new Set();   // items in progress
    this.lastEnd = NaN;         // latest end (or start) of any item
    this.t0 = NaN;              // the axis origin: bars are placed relative to it
    this.added = [];            // items not drawn yet, in arrival order
    this.dirty = new Set();     // items to redraw
    this.relayout = false;      // every bar must be placed again (t0 moved)
    this.slowest = [];          // up to SLOWEST ended items, longest first
    this.timed = 0;             // ended items with a duration
    this.version = 0;
  }
  get outcome() { return this.status === "running" ? "running" : outcomeOf(this.status, this.error); }
  /** Where the axis ends: the turn's end, its items' latest end, or `now` if running. */
  axisEnd(now) {
    let end = this.end;
    if (!Number.isFinite(end) && Number.isFinite(this.durationMs) && Number.isFinite(this.start)) {
      end = this.start + this.durationMs;
    }
    if (this.status === "running") end = Math.max(Number.isFinite(end) ? end : -Infinity, now);
    if (Number.isFinite(this.lastEnd)) end = Number.isFinite(end) ? Math.max(end, this.lastEnd) : this.lastEnd;
    return end;
  }
  /** The time running bars grow to: now, or the turn's end once it is over. */
  runningEdge(now) {
    return this.status === "running" ? now : this.axisEnd(now);
  }
  touch() { this.version += 1; this.thread.dirtyTurns.add(this); }
  touchItem(item) {
    item.version += 1;
    this.dirty.add(item);
    this.touch();
  }
  see(time) {
    // A time earlier than the axis origin moves it: every bar must be placed again.
    if (!Number.isFinite(time)) return;
    if (!Number.isFinite(this.t0) || time < this.t0) {
      if (Number.isFinite(this.t0)) this.relayout = true;
      this.t0 = time;
    }
    if (!Number.isFinite(this.lastEnd) || time > this.lastEnd) this.lastEnd = time;
  }
  rankSlow(item) {
    // Keep the SLOWEST longest ended items: O(SLOWEST) per ended item.
    const timed = Number.isFinite(item.durationMs) && !item.running;
    if (timed && !item.timed) { item.timed = true; this.timed += 1; }
    const list = this.slowest.filter((other) => other !== item);
    if (timed) {
      list.push(item);
      list.sort((a, b) => b.durationMs - a.durationMs);
    }
    this.slowest = list.slice(0, SLOWEST);
    const top = this.slowest.length ? this.slowest[0].durationMs : 0;
    const marked = new Set(this.slowest.slice(0, Math.floor(this.timed / 2))
      .filter((other) => other.durationMs >= SLOW_SHARE * top));
    for (const other of [...list, item]) {
      const slow = marked.has(other);
      if (other.slow !== slow) { other.slow = slow; this.touchItem(other); }
    }
  }
}

export class ThreadState {
  constructor(threadId) {
    this.threadId = threadId;
    this.seq = 0;
    this.turns = new Map();     // in start order
    this.loose = new Turn("", this);
    this.loose.status = "completed";
    this.current = null;        // the running turn
    this.turnCount = 0;
    this.turnsDropped = 0;
    this.lastError = null;
    this.startedAt = NaN;
    this.updatedAt = NaN;
    this.latest = NaN;          // the latest event time seen (clock of the producer)
    this.dirtyTurns = new Set();
    this.structure = true;      // turns added or removed: the view re-lists them
    this.applied = 0;
  }

  get outcome() {
    if (this.current) return "running";
    let last = null;
    for (const turn of this.turns.values()) last = turn;
    return last ? last.outcome : "idle";
  }

  usage() {
    const total = { input_tokens: 0, cached_input_tokens: 0, output_tokens: 0 };
    for (const turn of this.turns.values()) {
      if (!turn.usage) continue;
      for (const key of Object.keys(total)) total[key] += turn.usage[key] || 0;
    }
    return total;
  }

  /** Fold one event; `received` (epoch ms) stands in for a missing timestamp. */
  apply(ev, received) {
    this.applied += 1;
    if (Number.isFinite(ev.seq)) this.seq = ev.seq;
    let time = parseTime(ev.timestamp);
    if (Number.isFinite(time)) {
      if (!Number.isFinite(this.startedAt)) this.startedAt = time;
      this.updatedAt = time;
      if (!(time <= this.latest)) this.latest = time;
    } else {
      time = received;  // a Codex stream without timestamps: when the page saw it
    }
    switch (ev.type) {
      case "turn.started": this.startTurn(ev.turn_id, ev, time); break;
      case "turn.completed": case "turn.failed": this.endTurn(ev, time); break;
      case "item.started": case "item.updated": case "item.completed":
        if (ev.item && typeof ev.item === "object" && ev.item.id != null) this.item(ev, time);
        break;
      case "progress.update": {
        const turn = this.turnFor(ev.turn_id) || this.loose;
        const item = turn.items.get(String(ev.item_id));
        if (item) {
          item.progress = Number.isFinite(ev.fraction) ? ev.fraction : item.progress;
          item.progressMessage = typeof ev.message === "string" ? ev.message : item.progressMessage;
          turn.touchItem(item);
        }
        break;
      }
      case "token.count": {
        const turn = this.turnFor(ev.turn_id);
        if (turn && ev.usage) { turn.usage = usageOf(ev.usage); turn.touch(); }
        break;
      }
      case "error":
        this.lastError = typeof ev.message === "string" ? ev.message : "error";
        this.structure = true;
        break;
      default: break;
    }
  }

  turnFor(id) {
    if (id == null) return this.current;
    return this.turns.get(String(id)) || this.startTurn(id, null, NaN);
  }

  startTurn(id, ev, time) {
    this.turnCount += 1;
    const turn = new Turn(id != null ? String(id) : `turn_${this.turnCount}`, this);
    if (ev) {
      turn.start = time;
      turn.see(time);
      turn.traceId = ev.trace_id || null;
      turn.spanId = ev.span_id || null;
    }
    this.turns.delete(turn.id);
    this.turns.set(turn.id, turn);
    while (this.turns.size > MAX_TURNS) {
      const first = this.turns.keys().next().value;
      if (this.turns.get(first) === this.current) this.current = null;
      this.turns.delete(first);
      this.turnsDropped += 1;
    }
    this.current = turn;
    this.structure = true;
    turn.touch();
    return turn;
  }

  endTurn(ev, time) {
    const turn = this.turnFor(ev.turn_id) || this.startTurn(null, null, NaN);
    if (turn.status !== "running") return;
    turn.status = ev.type === "turn.failed" ? "failed" : "completed";
    turn.end = time;
    turn.see(time);
    if (Number.isFinite(ev.duration_ms)) turn.durationMs = ev.duration_ms;
    else if (Number.isFinite(turn.start)) turn.durationMs = time - turn.start;
    if (ev.usage) turn.usage = usageOf(ev.usage);
    if (ev.error) turn.error = errorOf(ev.error);
    turn.traceId = turn.traceId || ev.trace_id || null;
    if (this.current === turn) this.current = null;
    turn.touch();
    // Bars still running stop growing at the turn's end: redraw them once.
    for (const item of turn.running) turn.touchItem(item);
  }

  item(ev, time) {
    const it = ev.item;
    const turn = this.turnFor(ev.turn_id) || this.loose;
    const ending = ev.type === "item.completed";
    const id = String(it.id);
    let item = turn.items.get(id);
    if (!item) {
      if (turn.items.size >= MAX_ITEMS) { turn.itemsDropped += 1; turn.touch(); return; }
      item = new Item(id, it.type, turn);
      turn.items.set(id, item);
      turn.added.push(item);
      turn.running.add(item);
    }
    const wasFailed = item.status === "failed";
    if (typeof it.type === "string" && it.type) item.type = it.type;
    for (const [field, key] of [["description", "description"], ["name", "name"]]) {
      if (typeof it[field] === "string") item[key] = it[field];
    }
    if (it.parent_id != null && item.parentId == null) item.parentId = String(it.parent_id);
    const started = parseTime(it.started_at);
    if (Number.isFinite(started)) item.start = started;
    else if (!Number.isFinite(item.start) && !ending) item.start = time;
    if (ending) {
      item.status = typeof it.status === "string" && it.status ? it.status : "completed";
      const completed = parseTime(it.completed_at);
      item.end = Number.isFinite(completed) ? completed : time;
      item.durationMs = Number.isFinite(it.duration_ms) ? it.duration_ms
        : Number.isFinite(item.start) ? item.end - item.start : null;
      if (!Number.isFinite(item.start) && Number.isFinite(item.durationMs)) {
        item.start = item.end - item.durationMs;
      }
      if (Number.isFinite(item.start) && Number.isFinite(item.durationMs)) {
        item.end = item.start + item.durationMs;  // the producer's duration is exact
      }
      turn.running.delete(item);
    } else if (typeof it.status === "string" && it.status) {
      item.status = it.status;
      if (item.status === "in_progress") turn.running.add(item);
    }
    if (it.error && typeof it.error === "object") item.error = errorOf(it.error);
    else if (ending && item.status === "failed" && typeof it.message === "string" && !item.error) {
      item.error = { message: it.message, type: null };
    }
    if (ev.trace_id) item.traceId = ev.trace_id;
    if (ev.span_id) item.spanId = ev.span_id;
    if (it.usage && typeof it.usage === "object") item.usage = it.usage;
    takeContent(item, it, false);
    turn.see(item.start);
    turn.see(item.end);
    if (item.status === "failed" && !wasFailed) turn.failedItems += 1;
    if (ending) turn.rankSlow(item);
    turn.touchItem(item);
  }

  /** Replace the whole state with a reset's snapshot (GET /v1/threads/{id}). */
  static fromSnapshot(threadId, snap) {
    const state = new ThreadState(threadId);
    snap = snap || {};
    state.seq = snap.last_seq || 0;
    state.turnCount = snap.turn_count || 0;
    state.turnsDropped = snap.turns_dropped || 0;
    state.lastError = snap.last_error || null;
    state.startedAt = parseTime(snap.started_at);
    state.updatedAt = parseTime(snap.updated_at);
    state.latest = state.updatedAt;
    for (const t of Array.isArray(snap.turns) ? snap.turns : []) {
      const turn = new Turn(String(t.turn_id), state);
      turn.status = t.status || "running";
      turn.start = parseTime(t.started_at);
      turn.end = parseTime(t.completed_at);
      turn.durationMs = Number.isFinite(t.duration_ms) ? t.duration_ms : null;
      turn.usage = t.usage ? usageOf(t.usage) : null;
      turn.error = t.error ? errorOf(t.error) : null;
      turn.traceId = t.trace_id || null;
      turn.spanId = t.span_id || null;
      turn.itemsDropped = t.items_dropped || 0;
      turn.failedItems = t.failed_items || 0;
      turn.see(turn.start);
      turn.see(turn.end);
      for (const it of Array.isArray(t.items) ? t.items : []) snapshotItem(turn, it);
      state.turns.set(turn.id, turn);
      if (t.turn_id === snap.running_turn) state.current = turn;
      turn.touch();
    }
    for (const it of Array.isArray(snap.items) ? snap.items : []) snapshotItem(state.loose, it);
    state.loose.touch();
    return state;
  }
}

function snapshotItem(turn, it) {
  const item = new Item(String(it.id), it.type, turn);
  item.description = it.description ?? null;
  item.name = it.name ?? null;
  item.status = it.status || "in_progress";
  item.start = parseTime(it.started_at);
  item.end = parseTime(it.completed_at);
  item.durationMs = Number.isFinite(it.duration_ms) ? it.duration_ms : null;
  if (Number.isFinite(item.start) && Number.isFinite(item.durationMs)) {
    item.end = item.start + item.durationMs;
  }
  item.error = it.error ? errorOf(it.error) : null;
  item.progress = Number.isFinite(it.progress) ? it.progress : null;
  item.progressMessage = it.progress_message ?? null;
  item.traceId = it.trace_id || null;
  item.spanId = it.span_id || null;
  item.usage = it.usage || null;
  item.truncated = Array.isArray(it.truncated) ? it.truncated.slice() : [];
  item.contentDropped = Boolean(it.content_dropped);
  takeContent(item, it, true);
  turn.items.set(item.id, item);
  turn.added.push(item);
  if (it.parent_id != null) item.parentId = String(it.parent_id);
  if (item.running) turn.running.add(item);
  turn.see(item.start);
  turn.see(item.end);
  if (!item.running) turn.rankSlow(item);
  turn.dirty.add(item);
}

function takeContent(item, it, fromSnapshot) {
  for (const field of CONTENT_FIELDS) {
    if (it[field] === undefined || it[field] === null) continue;
    item.content[field] = it[field];
    // A live event carries the whole value: what the bridge had cut is whole again.
    if (!fromSnapshot && item.truncated.includes(field)) {
      item.truncated = item.truncated.filter((name) => name !== field);
    }
  }
  if (!fromSnapshot && Object.keys(item.content).length) item.contentDropped = false;
}

function usageOf(u) {
  const out = {};
  for (const key of ["input_tokens", "cached_input_tokens", "output_tokens",
    "cache_write_input_tokens", "reasoning_output_tokens"]) {
    if (Number.isFinite(u[key])) out[key] = u[key];
  }
  return out;
}

function errorOf(e) {
  return { message: typeof e.message === "string" ? e.message : String(e.message ?? ""),
           type: typeof e.type === "string" ? e.type : null };
}
