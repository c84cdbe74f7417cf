// One thread on screen: its turns, newest first, each a waterfall of its items on the
// turn's time axis.
//
// Redrawing is incremental: a frame touches the turns and items that changed since the
// last one (ThreadState marks them) and places new rows in O(depth). Bars are calc()s of
// CSS variables: --s and --d on each bar (its start and duration, ms after the turn's
// origin) over --span on the waterfall. A running turn's axis keeps some room ahead of
// now and is stretched in steps, so between steps only the running bars change (their
// own --now): custom properties inherit, and touching one on the waterfall at every tick
// would restyle all its rows.

import { h, setAttr, setText, setVar } from "./dom.js";
import {
  fmtClock, fmtInt, fmtMs, fmtTick, fmtUsage, niceStep, outcomeLabel, outcomeMark,
} from "./format.js";
import { renderDetails } from "./details.js";

// Turns drawn open at first: the newest few (older ones open on demand).
const OPEN_TURNS = 3;
// Pixels a tick label needs, so labels never crowd each other.
const TICK_PX = 84;

export class ThreadView {
  constructor(root, { traceUrl }) {
    this.root = root;
    this.traceUrl = traceUrl;
    this.state = null;
    this.turnViews = new Map();
    this.open = new Map();        // turn id -> open, as the person chose
    this.trackWidth = 0;
    this.waiting = false;
    this.announce = () => {};     // tells screen readers of turn ends and failures
    // The track's width places tick labels and the slow steps' notes. Read from resize
    // observations of the axes (never a layout read while drawing); rows being added
    // change heights only, which this ignores.
    this.observer = new ResizeObserver((entries) => {
      for (const entry of entries) {
        const width = entry.contentRect.width;
        if (width > 0 && Math.abs(width - this.trackWidth) >= 0.5) {
          this.trackWidth = width;
          for (const view of this.turnViews.values()) view.axisKey = "";
          this.onResize?.();
        }
      }
    });
  }

  /** Draw `state` from scratch (another thread, or a reset). */
  show(state) {
    this.state = state;
    this.observer.disconnect();
    this.turnViews = new Map();
    this.root.replaceChildren();
    if (!state) return;
    this.title = h("h2", { class: "thread-title" }, state.threadId);
    this.badge = h("span", { class: "badge" });
    this.meta = h("p", { class: "thread-meta" });
    this.notice = h("p", { class: "notice", role: "alert", hidden: true });
    this.hint = h("p", { class: "hint", hidden: true });
    this.turnsEl = h("div", { class: "turns" });
    this.root.append(h("header", { class: "thread-head" }, this.title, this.badge),
      this.meta, this.notice, this.hint, this.turnsEl);
    state.structure = true;
  }

  /** Redraw what changed. `now` is epoch ms on the producer's clock. */
  render(now) {
    const state = this.state;
    this.now = now;
    if (!state) return;
    if (state.structure) this.listTurns(now);
    for (const turn of state.dirtyTurns) {
      this.turnViews.get(turn)?.sync(now);
    }
    state.dirtyTurns.clear();
    this.header(now);
  }

  /** Advance what moves with time alone: running bars, durations, the axes of running turns. */
  tick(now) {
    this.now = now;
    if (!this.state) return;
    for (const view of this.turnViews.values()) {
      if (view.turn.status === "running" || view.turn.running.size) view.grow(now);
    }
    this.header(now);
  }

  /** Ms until running bars have grown by about 2 px; 0 if nothing runs. */
  tickDelay() {
    let delay = 0;
    for (const view of this.turnViews.values()) {
      const turn = view.turn;
      if (turn.status !== "running" && !turn.running.size) continue;
      const perPixel = view.open && view.span > 0 && this.trackWidth > 0
        ? view.span / this.trackWidth : Infinity;
      const wait = Math.min(1000, Math.max(100, 2 * perPixel));
      delay = delay ? Math.min(delay, wait) : wait;
    }
    return delay;
  }

  listTurns(now) {
    const state = this.state;
    state.structure = false;
    const turns = [...state.turns.values()].reverse();
    if (state.loose.items.size) turns.push(state.loose);
    const keep = new Set(turns);
    for (const [turn, view] of this.turnViews) {
      if (!keep.has(turn)) {
        view.el.remove();
        this.observer.unobserve(view.axis);
        this.turnViews.delete(turn);
      }
    }
    let previous = null;
    turns.forEach((turn, index) => {
      let view = this.turnViews.get(turn);
      if (!view) {
        const chosen = this.open.get(turn.id);
        view = new TurnView(this, turn, chosen ?? (index < OPEN_TURNS || turn.status === "running"));
        this.turnViews.set(turn, view);
        this.observer.observe(view.axis);
        view.sync(now);
      }
      const wanted = previous ? previous.nextSibling : this.turnsEl.firstChild;
      if (wanted !== view.el) {
        if (previous) previous.after(view.el);
        else this.turnsEl.prepend(view.el);
      }
      previous = view.el;
    });
    if (state.lastError) {
      this.notice.hidden = false;
      setText(this.notice, `Error reported by the agent: ${state.lastError}`);
    } else {
      this.notice.hidden = true;
    }
    this.hint.hidden = turns.length > 0;
    setText(this.hint, this.waiting
      ? "No event from this thread yet: the page is connected and waiting for its first one."
      : "No turn yet.");
  }

  setWaiting(waiting) {
    this.waiting = waiting;
    if (this.state) this.state.structure = true;
  }

  header(now) {
    const state = this.state;
    const outcome = state.outcome;
    setAttr(this.badge, "data-outcome", outcome);
    setText(this.badge, `${outcomeMark(outcome)} ${outcomeLabel(outcome)}`);
    const parts = [];
    const count = state.turnCount || state.turns.size;
    parts.push(`${fmtInt(count)} turn${count === 1 ? "" : "s"}`);
    if (Number.isFinite(state.startedAt)) parts.push(`started ${fmtClock(state.startedAt)}`);
    const usage = state.usage();
    if (usage.input_tokens || usage.output_tokens) parts.push(fmtUsage(usage));
    if (state.turnsDropped) parts.push(`${fmtInt(state.turnsDropped)} older turns not kept`);
    setText(this.meta, parts.join(" · "));
  }

  traceLink(traceId, spanId) {
    if (!traceId || !this.traceUrl) return null;
    return this.traceUrl.replace("{trace_id}", encodeURIComponent(traceId))
      .replace("{span_id}", encodeURIComponent(spanId || ""));
  }
}

class TurnView {
  constructor(view, turn, open) {
    this.view = view;
    this.turn = turn;
    this.rows = new Map();        // Item -> Row
    this.ticks = [];
    this.axisKey = "";
    this.built = false;
    const id = turn.id || "loose";
    const domId = `turn-${cssId(id)}`;
    this.fold = h("button", { class: "fold", type: "button", "aria-expanded": String(open),
      "aria-controls": `${domId}-wf`, "aria-label": "Show or hide the steps" });
    this.name = h("h3", { id: `${domId}-h` }, turn.id ? turn.id : "Outside any turn");
    this.badge = h("span", { class: "badge" });
    this.duration = h("span", { class: "turn-duration" });
    this.count = h("span", { class: "turn-count" });
    this.usage = h("span", { class: "usage", "aria-live": "off" });
    this.trace = h("a", { class: "trace", target: "_blank", rel: "noopener noreferrer",
      hidden: true }, "view trace");
    this.nowLine = h("p", { class: "turn-now", hidden: true });
    this.error = h("p", { class: "turn-error", hidden: true });
    this.axis = h("div", { class: "axis-track" });
    this.lines = h("div", { class: "gridlines", "aria-hidden": "true" });
    this.edge = h("i", { class: "now-line", hidden: true });   // where now is on the axis
    this.span = 0;
    this.noted = new Map();
    this.rowsEl = h("ol", { class: "rows" });
    this.dropped = h("p", { class: "dropped", hidden: true });
    this.waterfall = h("div", { class: "waterfall", id: `${domId}-wf`, hidden: !open },
      h("div", { class: "axis-label", "aria-hidden": "true" }, "step"),
      h("div", { class: "axis", "aria-hidden": "true" }, this.axis),
      this.lines, this.rowsEl, this.dropped);
    this.el = h("section", { class: "turn", "data-turn-id": turn.id,
      "aria-labelledby": `${domId}-h` },
    h("header", { class: "turn-head" }, this.fold, this.name, this.badge, this.duration,
      this.count, this.usage, this.trace),
    this.nowLine, this.error, this.waterfall);
    this.fold.addEventListener("click", () => this.toggle());
    this.rowsEl.addEventListener("keydown", (e) => this.onKey(e));
    this.rowsEl.addEventListener("click", (e) => this.onClick(e));
    this.open = open;
  }

  toggle() {
    this.open = !this.open;
    this.view.open.set(this.turn.id, this.open);
    this.fold.setAttribute("aria-expanded", String(this.open));
    this.waterfall.hidden = !this.open;
    if (this.open) this.sync(this.view.now ?? Date.now());
  }

  sync(now) {
    const turn = this.turn;
    const outcome = turn.outcome;
    if (this.outcome === "running" && outcome !== "running") {
      this.view.announce(`${turn.id || "Turn"} ${outcomeLabel(outcome)}` +
        (Number.isFinite(turn.durationMs) ? ` after ${fmtMs(turn.durationMs)}` : ""));
    }
    this.outcome = outcome;
    setAttr(this.el, "data-status", turn.status);
    setAttr(this.el, "data-outcome", outcome);
    setAttr(this.badge, "data-outcome", outcome);
    setText(this.badge, `${outcomeMark(outcome)} ${outcomeLabel(outcome)}`);
    const n = turn.items.size;
    const failed = turn.failedItems;
    setText(this.count, `${fmtInt(n)} step${n === 1 ? "" : "s"}` +
      (failed ? ` · ${fmtInt(failed)} failed` : ""));
    setText(this.usage, fmtUsage(turn.usage));
    const link = this.view.traceLink(turn.traceId, turn.spanId);
    this.trace.hidden = !link;
    if (link) setAttr(this.trace, "href", link);
    if (turn.error && turn.error.message) {
      this.error.hidden = false;
      const kind = turn.outcome === "failed" ? "Failed" : outcomeLabel(turn.outcome);
      setText(this.error, `${kind[0].toUpperCase()}${kind.slice(1)}: ${turn.error.message}` +
        (turn.error.type && turn.error.type !== turn.outcome ? ` (${turn.error.type})` : ""));
    } else {
      this.error.hidden = true;
    }
    if (turn.itemsDropped) {
      this.dropped.hidden = false;
      setText(this.dropped, `${fmtInt(turn.itemsDropped)} more steps are not shown ` +
        "(the bridge keeps the latest of each turn).");
    }
    if (!this.open) {
      turn.added.length = 0;
      turn.dirty.clear();
      this.built = false;
      this.rows.clear();
      this.rowsEl.replaceChildren();
      this.grow(now);
      return;
    }
    if (!this.built || turn.relayout) {
      this.build();
    } else {
      for (const item of turn.added) this.place(item);
    }
    turn.added.length = 0;
    for (const item of turn.dirty) this.rows.get(item)?.update(now);
    turn.dirty.clear();
    this.grow(now);
    turn.relayout = false;
  }

  /** Every row, in tree order (children under their parent, in arrival order). */
  build() {
    const turn = this.turn;
    this.rows.clear();
    const children = new Map();
    const roots = [];
    for (const item of turn.items.values()) {
      const parent = item.parentId != null ? turn.items.get(item.parentId) : null;
      if (parent && parent !== item) {
        if (!children.has(parent)) children.set(parent, []);
        children.get(parent).push(item);
      } else {
        roots.push(item);
      }
    }
    const fragment = document.createDocumentFragment();
    const seen = new Set();
    const stack = roots.reverse().map((item) => [item, null]);
    while (stack.length) {
      const [item, parentRow] = stack.pop();
      if (seen.has(item)) continue;  // a cycle of parent ids: draw each item once
      seen.add(item);
      const row = new Row(this, item, parentRow);
      this.rows.set(item, row);
      fragment.append(row.li);
      for (let a = parentRow; a; a = a.parentRow) a.last = row;
      const kids = children.get(item);
      if (kids) for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], row]);
    }
    this.rowsEl.replaceChildren(fragment);
    this.noted = new Map();
    for (const item of turn.items.values()) turn.dirty.add(item);
    this.built = true;
    this.axisKey = "";
  }

  /** A new row: after its parent's subtree if its parent is drawn, else at the end. */
  place(item) {
    if (this.rows.has(item)) return;
    const turn = this.turn;
    const parent = item.parentId != null ? turn.items.get(item.parentId) : null;
    const parentRow = parent ? this.rows.get(parent) : null;
    const row = new Row(this, item, parentRow || null);
    this.rows.set(item, row);
    if (parentRow) {
      const anchor = parentRow.last;
      anchor.li.after(row.li);
      for (let a = parentRow; a && a.last === anchor; a = a.parentRow) a.last = row;
    } else {
      this.rowsEl.append(row.li);
    }
  }

  /** Place the axis for `now`: --span, --now, ticks; running rows' durations. */
  grow(now) {
    const turn = this.turn;
    const t0 = turn.t0;
    // The turn's duration: live while it runs.
    let duration = turn.durationMs;
    if (turn.status === "running" && Number.isFinite(turn.start)) duration = now - turn.start;
    setText(this.duration, fmtMs(duration));
    const current = turn.status === "running" ? latestRunning(turn) : null;
    this.nowLine.hidden = !current;
    if (current) setText(this.nowLine, `Now: ${current.description || current.type || current.id}`);
    if (!this.open || !Number.isFinite(t0)) return;
    const end = Math.max(turn.axisEnd(now) - t0, 1);
    let span = end;
    if (turn.status === "running") {
      // Room ahead of now, stretched in steps of a quarter or so: a few restyles of the
      // whole waterfall per decade of the turn's age, not one per tick.
      span = this.span > 0 && this.span >= end && !turn.relayout ? this.span : roomy(end);
    }
    const rescaled = span !== this.span;
    this.span = span;
    setVar(this.waterfall, "--span", round3(span));
    const edge = turn.runningEdge(now) - t0;
    setAttr(this.edge, "hidden", turn.status !== "running");
    setVar(this.edge, "--at", round6(edge / span));
    this.axisTicks(span);
    for (const item of turn.running) this.rows.get(item)?.live(now, edge);
    const width = this.view.trackWidth;
    if (rescaled || width !== this.notedWidth ||
        turn.slowest.some((item) => item.version !== this.noted.get(item))) {
      this.notedWidth = width;
      this.noted = new Map(turn.slowest.map((item) => [item, item.version]));
      for (const item of turn.slowest) this.rows.get(item)?.note(span);
    }
    if (rescaled) {
      setAttr(this.rowsEl, "aria-label", `Steps of ${turn.id || "the thread"} on a time ` +
        `axis from 0 to ${fmtMs(span)}`);
    }
  }

  axisTicks(span) {
    const width = this.view.trackWidth || 600;
    const step = niceStep(span, Math.max(1, Math.floor(width / TICK_PX)));
    const key = `${step}|${Math.floor(span / step)}|${width}`;
    if (key !== this.axisKey) {
      this.axisKey = key;
      this.ticks = [];
      for (let i = 0; i * step <= span + 1e-9 && i < 50; i++) {
        const at = i * step;
        this.ticks.push({ at, label: h("span", { class: "tick" }, fmtTick(at, step)),
          line: h("i", { class: "line" }) });
      }
      this.axis.replaceChildren(...this.ticks.map((tick) => tick.label));
      this.lines.replaceChildren(...this.ticks.map((tick) => tick.line), this.edge);
    }
    // Ticks are at least TICK_PX apart, so centred labels never meet; the first is
    // drawn from its tick rightwards, and one near the end leftwards, inside the track.
    for (const tick of this.ticks) {
      const fraction = tick.at / span;
      setVar(tick.label, "--at", round6(fraction));
      setVar(tick.line, "--at", round6(fraction));
      const align = tick.at === 0 ? "start" : (1 - fraction) * width < TICK_PX / 2 ? "end" : "";
      setAttr(tick.label, "data-align", align || null);
    }
  }

  onKey(e) {
    const button = e.target.closest?.(".label");
    if (!button) return;
    let target = null;
    const li = button.closest(".item");
    if (e.key === "ArrowDown") target = li.nextElementSibling;
    else if (e.key === "ArrowUp") target = li.previousElementSibling;
    else if (e.key === "Home") target = this.rowsEl.firstElementChild;
    else if (e.key === "End") target = this.rowsEl.lastElementChild;
    else if (e.key === "Escape" && button.getAttribute("aria-expanded") === "true") {
      button.click();
      e.preventDefault();
      return;
    }
    if (target) {
      target.querySelector(".label")?.focus();
      e.preventDefault();
    }
  }

  onClick(e) {
    const button = e.target.closest?.(".label");
    if (!button) return;
    const li = button.closest(".item");
    const item = this.turn.items.get(li.dataset.itemId);
    const row = item && this.rows.get(item);
    if (row) row.toggle();
  }
}

class Row {
  constructor(turnView, item, parentRow) {
    this.turnView = turnView;
    this.item = item;
    this.parentRow = parentRow;
    this.depth = parentRow ? parentRow.depth + 1 : 0;
    this.last = this;
    this.version = -1;
    this.opened = false;
    const domId = `${cssId(turnView.turn.id || "loose")}-${cssId(item.id)}`;
    this.mark = h("span", { class: "mark", "aria-hidden": "true" });
    this.desc = h("span", { class: "desc" });
    this.kind = h("span", { class: "kind" });
    this.dur = h("span", { class: "dur" });
    this.label = h("button", { class: "label", type: "button", "aria-expanded": "false",
      "aria-controls": `d-${domId}` }, this.mark, this.desc, this.kind, this.dur);
    this.bar = h("div", { class: "bar", "data-bar-for": item.id, role: "img" });
    this.track = h("div", { class: "track" }, this.bar);
    this.li = h("li", { class: "item", "data-item-id": item.id }, this.label, this.track);
    // Made when first needed: most rows never have a note, a sub-line or open details.
    this.barNote = null;
    this.sub = null;
    this.details = null;
    this.domId = domId;
    if (this.depth) setVar(this.li, "--depth", Math.min(this.depth, 12));
  }

  update(now) {
    const item = this.item;
    if (item.version === this.version) return;
    this.version = item.version;
    const turn = this.turnView.turn;
    const outcome = item.outcome;
    if (outcome === "failed" && this.outcome === "running") {
      this.turnView.view.announce(`Step failed: ${item.description || item.id}`);
    }
    this.outcome = outcome;
    setAttr(this.li, "data-status", item.status);
    setAttr(this.li, "data-outcome", outcome);
    setAttr(this.li, "data-slow", item.slow);
    setText(this.mark, outcomeMark(outcome));
    setText(this.desc, item.description || item.id);
    setAttr(this.desc, "title", item.description || item.id);
    setText(this.kind, item.name && item.name !== item.type ? `${item.type} · ${item.name}` : item.type);
    // Bar: placed relative to the turn's origin; the span is the waterfall's --span.
    const t0 = turn.t0;
    const placed = Number.isFinite(item.start) && Number.isFinite(t0);
    this.bar.hidden = !placed;
    if (placed) {
      setVar(this.bar, "--s", round3(item.start - t0));
      if (!item.running) {
        const end = Number.isFinite(item.end) ? item.end : item.start;
        setVar(this.bar, "--d", round3(Math.max(0, end - item.start)));
      }
    }
    setAttr(this.bar, "data-running", item.running);
    if (!item.slow && this.barNote) this.barNote.hidden = true;  // grow() places the slow
    setAttr(this.bar, "data-outcome", outcome);
    this.live(now, turn.runningEdge(now) - turn.t0);
    this.subline();
    if (this.opened) this.fillDetails(now);
  }

  /** What changes with time alone on a running row: its bar's end (`edge`, ms after the
   * turn's origin), its duration and labels. */
  live(now, edge) {
    const item = this.item;
    const turn = this.turnView.turn;
    let duration = item.durationMs;
    let note = "";
    if (item.running) {
      if (Number.isFinite(edge)) setVar(this.bar, "--now", round3(edge));
      const until = turn.runningEdge(now);
      duration = Number.isFinite(item.start) ? until - item.start : null;
      if (turn.status !== "running") note = " (no end reported)";
    }
    setText(this.dur, duration == null ? "" : fmtMs(duration) + note);
    const outcome = item.outcome;
    const when = Number.isFinite(item.start) && Number.isFinite(turn.t0)
      ? `started ${fmtMs(item.start - turn.t0)} into the turn, ` : "";
    const took = duration == null ? "" : item.running ? `running for ${fmtMs(duration)}`
      : `took ${fmtMs(duration)}`;
    const error = item.error && item.error.message ? `: ${item.error.message}` : "";
    const summary = `${item.description || item.id}: ${when}${took}` +
      `${item.running ? "" : `, ${outcomeLabel(outcome)}`}${error}`;
    setAttr(this.bar, "aria-label", summary);
    setAttr(this.bar, "title", summary);
    setAttr(this.label, "aria-label", `${item.description || item.id}, ${item.type}, ` +
      `${outcomeLabel(outcome)}${duration == null ? "" : `, ${fmtMs(duration)}`}`);
  }

  /** A slow bar's duration printed on it: after the bar, before it, or inside it. */
  note(span) {
    const item = this.item;
    const t0 = this.turnView.turn.t0;
    if (!item.slow || !Number.isFinite(item.durationMs) || !Number.isFinite(item.start)) {
      if (this.barNote) this.barNote.hidden = true;
      return;
    }
    if (!this.barNote) {
      this.barNote = h("span", { class: "bar-note", "aria-hidden": "true" });
      this.track.append(this.barNote);
    }
    const width = this.turnView.view.trackWidth || 600;
    const text = fmtMs(item.durationMs);
    const need = text.length * 7.5 + 10;
    const s = (item.start - t0) / span;
    const e = s + item.durationMs / span;
    let place = "after";
    if ((1 - e) * width < need) place = s * width >= need ? "before" : (e - s) * width >= need ? "inside" : "";
    this.barNote.hidden = !place;
    setAttr(this.barNote, "data-place", place);
    setVar(this.barNote, "--sf", round6(s));
    setVar(this.barNote, "--ef", round6(e));
    setText(this.barNote, text);
  }

  subline() {
    const item = this.item;
    const outcome = item.outcome;
    const parts = [];
    if (item.running && (item.progress != null || item.progressMessage)) {
      const fraction = Number.isFinite(item.progress) ? Math.min(1, Math.max(0, item.progress)) : null;
      const bar = h("progress", { max: "1", "aria-label": `Progress of ${item.description || item.id}` });
      if (fraction != null) bar.value = fraction;
      parts.push(h("span", { class: "progress" }, bar,
        h("span", { class: "progress-text" },
          [fraction != null ? `${Math.round(fraction * 100)}%` : null, item.progressMessage]
            .filter(Boolean).join(" · "))));
    }
    if (outcome !== "completed" && outcome !== "running") {
      const error = item.error;
      parts.push(h("span", { class: "why", "data-outcome": outcome },
        `${outcomeMark(outcome)} ${outcomeLabel(outcome)}`,
        error && error.message ? `: ${error.message}` : null,
        error && error.type && error.type !== outcome ? ` (${error.type})` : null));
    }
    if (item.type === "agent_message" && typeof item.content.text === "string") {
      parts.push(h("span", { class: "message" }, item.content.text));
    }
    if (!parts.length) {
      if (this.sub) {
        this.sub.hidden = true;
        this.sub.replaceChildren();
      }
      return;
    }
    if (!this.sub) {
      this.sub = h("div", { class: "sub" });
      this.track.after(this.sub);
    }
    this.sub.hidden = false;
    this.sub.replaceChildren(...parts);
  }

  toggle() {
    this.opened = !this.opened;
    this.label.setAttribute("aria-expanded", String(this.opened));
    if (!this.details) {
      this.details = h("div", { class: "details", id: `d-${this.domId}` });
      this.li.append(this.details);
    }
    this.details.hidden = !this.opened;
    if (this.opened) this.fillDetails(this.turnView.view.now ?? Date.now());
    else this.details.replaceChildren();
  }

  fillDetails(now) {
    renderDetails(this.details, this.item, this.turnView.turn, now, this.turnView.view);
  }
}

function latestRunning(turn) {
  let latest = null;
  for (const item of turn.running) {
    if (!latest || item.start >= latest.start) latest = item;
  }
  return latest;
}

// The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that leaves a tenth
// of room after `ms`.
function roomy(ms) {
  const want = ms * 1.1;
  const power = 10 ** Math.floor(Math.log10(want));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * power >= want) return m * power;
  return 10 * power;
}

function round3(x) { return Math.round(x * 1000) / 1000; }
function round6(x) { return Math.round(x * 1e6) / 1e6; }

// Ids for aria-controls: any item id (agents choose them) made safe for an id attribute.
function cssId(text) {
  return String(text).replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.codePointAt(0).toString(16)}_`);
}
