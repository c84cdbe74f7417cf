// The thread list: newest first, each with its live status, a filter box (thread id or
// status words) and counts. Rows are kept by thread id and only rewritten when their
// summary changed, so polling a bridge of a thousand threads redraws only what moved.

import { h, setAttr, setText } from "./dom.js";
import { fmtAgo, fmtInt, fmtUsage, outcomeLabel, outcomeMark, parseTime } from "./format.js";

const STATUS_WORDS = new Set(["running", "completed", "failed", "cancelled", "abandoned",
  "idle", "declined"]);

export class ThreadList {
  constructor({ list, filter, status, counts, onSelect }) {
    this.list = list;
    this.filter = filter;
    this.status = status;
    this.counts = counts;
    this.onSelect = onSelect;
    this.rows = new Map();        // thread id -> {li, link, key, summary, order}
    this.order = [];
    this.selected = "";
    this.filterTimer = 0;
    filter.addEventListener("input", () => this.scheduleFilter());
    status.addEventListener("change", () => this.scheduleFilter());
    list.addEventListener("click", (e) => {
      const link = e.target.closest?.("a[data-thread-id]");
      if (!link || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();  // a plain click selects here; others open a tab as links do
      this.onSelect(link.dataset.threadId, true);
    });
  }

  /** Take the bridge's list (GET /v1/threads); `now` for "updated 3 s ago". */
  update(summaries, now) {
    const seen = new Set();
    summaries.forEach((summary, index) => {
      const id = String(summary.thread_id);
      seen.add(id);
      let row = this.rows.get(id);
      if (!row) {
        row = this.makeRow(id);
        this.rows.set(id, row);
      }
      row.index = index;
      row.started = parseTime(summary.started_at);
      row.summary = summary;
      this.fill(row, now);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id) && id !== this.selected) { row.li.remove(); this.rows.delete(id); }
    }
    // Newest first: by first event time; threads without timestamps (a Codex stream
    // posted as is) by the order the bridge lists them, which is creation order.
    const sorted = [...this.rows.values()].sort((a, b) => {
      const sa = Number.isFinite(a.started) ? a.started : -Infinity;
      const sb = Number.isFinite(b.started) ? b.started : -Infinity;
      return sb - sa || (b.index ?? -1) - (a.index ?? -1);
    });
    const changed = sorted.length !== this.order.length ||
      sorted.some((row, i) => row !== this.order[i]);
    if (changed) {
      this.order = sorted;
      this.list.replaceChildren(...sorted.map((row) => row.li));
    }
    this.applyFilter();
  }

  /** The selected thread's live state, ahead of the next poll. */
  patch(id, fields, now) {
    const row = this.rows.get(id);
    if (!row) return;
    row.summary = { ...row.summary, ...fields };
    const before = row.outcome;
    this.fill(row, now);
    if (row.outcome !== before) this.scheduleFilter();  // counts and filter follow
  }

  select(id) {
    this.selected = id;
    for (const row of this.rows.values()) {
      setAttr(row.link, "aria-current", row.id === id ? "page" : null);
    }
  }

  makeRow(id) {
    const name = h("span", { class: "tid" }, id);
    const badge = h("span", { class: "badge" });
    const meta = h("span", { class: "meta" });
    const link = h("a", { href: `?thread=${encodeURIComponent(id)}`, "data-thread-id": id,
      "aria-current": id === this.selected ? "page" : null }, name, badge, meta);
    const li = h("li", { "data-thread-id": id }, link);
    return { id, li, link, badge, meta, key: "", summary: null, index: 0, started: NaN };
  }

  fill(row, now) {
    const s = row.summary;
    const outcome = s.outcome || s.status || "idle";
    const current = s.current_item && (s.current_item.description || s.current_item.type);
    const turns = Number(s.turn_count) || 0;
    const updated = parseTime(s.updated_at);
    const meta = outcome === "running" && current ? `now: ${current}`
      : [`${fmtInt(turns)} turn${turns === 1 ? "" : "s"}`,
        Number.isFinite(updated) ? fmtAgo(updated, now) : null,
        s.usage && (s.usage.input_tokens || s.usage.output_tokens) ? fmtUsage(s.usage) : null]
        .filter(Boolean).join(" · ");
    const key = `${outcome}|${meta}`;
    if (key === row.key) return;
    row.key = key;
    row.outcome = outcome;
    setAttr(row.li, "data-outcome", outcome);
    setAttr(row.badge, "data-outcome", outcome);
    setText(row.badge, `${outcomeMark(outcome)} ${outcomeLabel(outcome)}`);
    setText(row.meta, meta);
  }

  scheduleFilter() {
    // One pass over the rows per frame, however fast the person types.
    if (this.filterTimer) return;
    this.filterTimer = requestAnimationFrame(() => {
      this.filterTimer = 0;
      this.applyFilter();
    });
  }

  applyFilter() {
    const words = this.filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const status = this.status.value;
    let shown = 0;
    let running = 0;
    let failed = 0;
    for (const row of this.order) {
      const outcome = row.outcome || "idle";
      if (outcome === "running") running += 1;
      if (outcome === "failed") failed += 1;
      const id = row.id.toLowerCase();
      const match = (!status || outcome === status) && words.every((word) =>
        STATUS_WORDS.has(word) ? outcome === word || id.includes(word) : id.includes(word));
      if (row.li.hidden === match) row.li.hidden = !match;
      if (match) shown += 1;
    }
    const total = this.order.length;
    const parts = [`${fmtInt(total)} thread${total === 1 ? "" : "s"}`];
    if (running) parts.push(`${fmtInt(running)} running`);
    if (failed) parts.push(`${fmtInt(failed)} failed`);
    if (shown !== total) parts.unshift(`${fmtInt(shown)} shown of`);
    setText(this.counts, parts.join(" · ").replace("shown of ·", "shown of"));
  }
}
