// An item opened: its description, outputs (pretty JSON, long text folded, a copy
// button), error, timings, token usage, and trace and span ids with the trace link.
// Built when the row opens and rebuilt while open when the item changes; every value
// goes in as text.

import { h } from "./dom.js";
import { fmtClock, fmtInt, fmtMs, outcomeLabel, outcomeMark } from "./format.js";

// Longer than this, a block opens folded to its first FOLD_LINES lines.
const FOLD_LINES = 12;
const FOLD_CHARS = 1500;
// Text shown at most in one block (a copy takes all of it).
const SHOW_CHARS = 200_000;

const BLOCKS = [
  ["text", (item) => item.type === "reasoning" ? "Reasoning" : item.type === "agent_message" ? "Message" : "Text"],
  ["output", () => "Output"],
  ["aggregated_output", () => "Command output"],
  ["result", () => "Result"],
  ["message", () => "Message"],
  ["command", () => "Command"],
  ["query", () => "Query"],
  ["arguments", () => "Arguments"],
  ["changes", () => "File changes"],
  ["items", () => "To-do items"],
];
const FACTS = [["exit_code", "Exit code"], ["server", "Server"], ["tool", "Tool"]];

export function renderDetails(root, item, turn, now, view) {
  const facts = [];
  const fact = (name, ...value) => {
    if (value.every((v) => v == null || v === "")) return;
    facts.push(h("dt", {}, name), h("dd", {}, ...value));
  };
  const outcome = item.outcome;
  fact("Status", h("span", { class: "badge", "data-outcome": outcome },
    `${outcomeMark(outcome)} ${outcomeLabel(outcome)}`));
  fact("Type", item.type);
  fact("Name", item.name);
  fact("Id", h("code", {}, item.id));
  if (item.parentId) fact("Inside", h("code", {}, item.parentId));
  const t0 = turn.t0;
  if (Number.isFinite(item.start)) {
    fact("Started", fmtClock(item.start),
      Number.isFinite(t0) ? ` (${fmtMs(item.start - t0)} into the turn)` : null);
  }
  if (!item.running && Number.isFinite(item.end)) fact("Ended", fmtClock(item.end));
  if (item.running && Number.isFinite(item.start)) {
    fact("Running for", fmtMs(turn.runningEdge(now) - item.start));
  } else if (Number.isFinite(item.durationMs)) {
    fact("Duration", fmtMs(item.durationMs), item.slow ? " (one of the turn's slowest)" : null);
  }
  if (item.progress != null || item.progressMessage) {
    fact("Progress", Number.isFinite(item.progress) ? `${Math.round(item.progress * 100)}%` : null,
      item.progressMessage ? ` ${item.progressMessage}` : null);
  }
  if (item.usage) {
    fact("Tokens", Object.entries(item.usage)
      .filter(([, n]) => Number.isFinite(n))
      .map(([name, n]) => `${fmtInt(n)} ${name.replace(/_tokens$/, "").replace(/_/g, " ")}`)
      .join(" · "));
  }
  for (const [field, name] of FACTS) {
    const value = item.content[field];
    if (value != null) fact(name, typeof value === "string" ? value : JSON.stringify(value));
  }
  const traceId = item.traceId || turn.traceId;
  if (traceId) fact("Trace", h("code", {}, traceId));
  if (item.spanId) fact("Span", h("code", {}, item.spanId));
  const link = view.traceLink(traceId, item.spanId);

  const parts = [];
  if (item.description) parts.push(h("p", { class: "description" }, item.description));
  parts.push(h("dl", { class: "facts" }, ...facts));
  if (link) {
    parts.push(h("p", {}, h("a", { class: "trace", href: link, target: "_blank",
      rel: "noopener noreferrer" }, "view trace")));
  }
  if (item.error && item.error.message) {
    parts.push(h("section", { class: "block error-block" },
      h("h4", {}, item.error.type ? `Error (${item.error.type})` : "Error"),
      h("pre", {}, item.error.message)));
  }
  for (const [field, title] of BLOCKS) {
    const value = item.content[field];
    if (value == null) continue;
    parts.push(block(title(item), value, item.truncated.includes(field)));
  }
  if (item.contentDropped) {
    parts.push(h("p", { class: "note" }, "The bridge no longer holds this step's output: " +
      "it keeps the most recent outputs of a thread within a memory budget."));
  }
  root.replaceChildren(...parts);
}

/** A titled block of text or JSON: pretty-printed, folded when long, with a copy button. */
function block(title, value, truncated) {
  const text = asText(value);
  const shown = text.length > SHOW_CHARS ? text.slice(0, SHOW_CHARS) : text;
  const lines = countLines(shown, FOLD_LINES + 1);
  const long = lines > FOLD_LINES || shown.length > FOLD_CHARS;
  const pre = h("pre", {}, long ? foldedText(shown) : shown);
  const copy = h("button", { type: "button", class: "copy" }, "Copy");
  copy.addEventListener("click", () => copyText(text, copy));
  const head = h("h4", {}, title, copy);
  const section = h("section", { class: "block" }, head, pre);
  if (long) {
    const total = countLines(shown, Infinity);
    const all = total > FOLD_LINES ? `Show all ${fmtInt(total)} lines`
      : `Show all ${fmtInt(shown.length)} characters`;
    const more = h("button", { type: "button", class: "more", "aria-expanded": "false" }, all);
    more.addEventListener("click", () => {
      const open = more.getAttribute("aria-expanded") !== "true";
      more.setAttribute("aria-expanded", String(open));
      pre.textContent = open ? shown : foldedText(shown);
      more.textContent = open ? "Fold" : all;
    });
    section.append(more);
  }
  if (text.length > SHOW_CHARS) {
    section.append(h("p", { class: "note" }, `Showing the first ${fmtInt(SHOW_CHARS)} of ` +
      `${fmtInt(text.length)} characters; Copy takes all of them.`));
  }
  if (truncated) {
    section.append(h("p", { class: "note" }, "Cut by the bridge to its first " +
      `${fmtInt(text.length)} characters (it keeps outputs bounded); the live event had all of it.`));
  }
  return section;
}

function asText(value) {
  if (typeof value === "string") {
    const trimmed = value.trim();
    // A tool's JSON given as a string reads better pretty-printed too.
    if ((trimmed.startsWith("{") && trimmed.endsWith("}")) ||
        (trimmed.startsWith("[") && trimmed.endsWith("]"))) {
      try { return pretty(JSON.parse(trimmed), ""); } catch { /* as it is */ }
    }
    return value;
  }
  try {
    return pretty(value, "");
  } catch {
    return String(value);
  }
}

// Pretty JSON that stays readable: whatever fits on one line (WIDTH characters, with its
// indent) is written on one line, like {"region": "EMEA", "revenue": 55044.4}; the rest
// opens up one level at a time.
const WIDTH = 76;

export function pretty(value, indent) {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  const line = flat(value, WIDTH - indent.length);
  if (line !== null) return line;
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    return `[\n${value.map((v) => inner + pretty(v, inner)).join(",\n")}\n${indent}]`;
  }
  const entries = Object.entries(value).map(([key, v]) => {
    const name = `${JSON.stringify(key)}: `;
    return inner + name + pretty(v, inner);
  });
  return `{\n${entries.join(",\n")}\n${indent}}`;
}

/** `value` on one line if that takes at most `room` characters, else null. */
function flat(value, room) {
  if (value === null || typeof value !== "object") {
    const text = JSON.stringify(value) ?? "null";
    return text.length <= room ? text : null;
  }
  const array = Array.isArray(value);
  const parts = [];
  let used = 2;
  for (const [key, v] of array ? value.entries() : Object.entries(value)) {
    const name = array ? "" : `${JSON.stringify(key)}: `;
    const text = flat(v, room - used - name.length);
    if (text === null) return null;
    used += name.length + text.length + (parts.length ? 2 : 0);
    if (used > room) return null;
    parts.push(name + text);
  }
  return array ? `[${parts.join(", ")}]` : `{${parts.join(", ")}}`;
}

function countLines(text, limit) {
  let n = 1;
  for (let i = text.indexOf("\n"); i !== -1 && n < limit; i = text.indexOf("\n", i + 1)) n++;
  return n;
}

function foldedText(text) {
  let end = 0;
  for (let n = 0; n < FOLD_LINES; n++) {
    const next = text.indexOf("\n", end + 1);
    if (next === -1) { end = text.length; break; }
    end = next;
  }
  end = Math.min(end, FOLD_CHARS);
  return `${text.slice(0, end)}\n…`;
}

async function copyText(text, button) {
  let done = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      done = true;
    }
  } catch { /* falls back below */ }
  if (!done) {
    // Pages served over plain http off loopback have no clipboard API.
    const area = h("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    try { done = document.execCommand("copy"); } catch { done = false; }
    area.remove();
  }
  button.textContent = done ? "Copied" : "Copy failed";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}
