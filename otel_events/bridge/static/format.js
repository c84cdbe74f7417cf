// How numbers, times and outcomes read on the page: one place, so every part of the
// page says "cancelled" or "1.2 s" the same way.

const numberFormat = new Intl.NumberFormat("en-US");

export function fmtInt(n) {
  return Number.isFinite(n) ? numberFormat.format(n) : "";
}

/** A duration in ms as a person reads it: "0.3 ms", "12 ms", "1.2 s", "2 min 05 s". */
export function fmtMs(ms) {
  if (!Number.isFinite(ms)) return "";
  if (ms < 0) ms = 0;
  if (ms === 0) return "0 ms";
  if (ms < 1) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.floor((ms % 60_000) / 1000);
  if (minutes < 60) return `${minutes} min ${String(seconds).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

/** A tick label on an axis whose step is `step` ms: "0", "250 ms", "1.5 s", "4 h". */
export function fmtTick(ms, step) {
  if (ms === 0) return "0";
  let unit = step >= 86_400_000 ? [86_400_000, "d"] : step >= 3_600_000 ? [3_600_000, "h"]
    : step >= 60_000 ? [60_000, "min"] : step >= 1000 ? [1000, "s"] : [1, "ms"];
  if (unit[0] === 1 && ms >= 1000) unit = [1000, "s"];  // "1.5 s", not "1500 ms"
  const digits = Math.max(0, Math.ceil(-Math.log10(step / unit[0]) - 1e-9));
  return `${+(ms / unit[0]).toFixed(digits)} ${unit[1]}`;
}

// Steps an axis may use, in ms: round numbers of ms, seconds, minutes, hours and days,
// so ticks read "0, 15 s, 30 s" or "0, 2 h, 4 h" rather than "3333 min".
const STEPS = [];
for (let p = -3; p <= 2; p++) for (const m of [1, 2, 5]) STEPS.push(m * 10 ** p);
STEPS.push(1000, 2000, 5000, 10_000, 15_000, 30_000);
for (const m of [1, 2, 5, 10, 15, 30]) STEPS.push(m * 60_000);
for (const h of [1, 2, 3, 6, 12]) STEPS.push(h * 3_600_000);
for (const d of [1, 2, 7, 14, 30, 60, 180, 365]) STEPS.push(d * 86_400_000);

/** The smallest step of STEPS giving at most `maxTicks` intervals over `span` ms. */
export function niceStep(span, maxTicks) {
  const raw = span / Math.max(1, maxTicks);
  for (const step of STEPS) if (step >= raw) return step;
  return Math.ceil(raw / STEPS[STEPS.length - 1]) * STEPS[STEPS.length - 1];
}

export function fmtClock(ms) {
  if (!Number.isFinite(ms)) return "";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.` +
    `${pad(d.getMilliseconds(), 3)}`;
}

/** "4 s ago", "3 min ago": how long since `ms`. */
export function fmtAgo(ms, now) {
  if (!Number.isFinite(ms)) return "";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/**
 * How an item or turn ended, as a person reads it (mirrors snapshot.outcome()):
 * the reported status, except a failure whose error.type is "cancelled" (stopped on
 * purpose) or "abandoned" (never closed), which are not failures of the work itself.
 */
export function outcomeOf(status, error) {
  if (status === "failed" && error && (error.type === "cancelled" || error.type === "abandoned")) {
    return error.type;
  }
  if (status === "in_progress") return "running";
  return status || "running";
}

// Every outcome's label and mark, used by rows, bars, turns and the thread list alike.
// Marks differ in shape as well as colour, for people who do not see the colours.
const OUTCOMES = {
  running: ["running", "◷"],
  completed: ["completed", "✓"],
  failed: ["failed", "✗"],
  declined: ["declined", "⊘"],
  cancelled: ["cancelled", "■"],
  abandoned: ["abandoned", "⚠"],
  idle: ["idle", "·"],
};

export function outcomeLabel(outcome) {
  return (OUTCOMES[outcome] || [String(outcome || "unknown")])[0];
}

export function outcomeMark(outcome) {
  return (OUTCOMES[outcome] || ["", "•"])[1];
}

/** "4,250 in (1,024 cached) · 306 out": a usage object as one line. */
export function fmtUsage(usage) {
  if (!usage) return "";
  const parts = [`${fmtInt(usage.input_tokens || 0)} in`];
  if (usage.cached_input_tokens) parts[0] += ` (${fmtInt(usage.cached_input_tokens)} cached)`;
  parts.push(`${fmtInt(usage.output_tokens || 0)} out`);
  if (usage.reasoning_output_tokens) {
    parts.push(`${fmtInt(usage.reasoning_output_tokens)} reasoning`);
  }
  return `${parts.join(" · ")} tokens`;
}

/** Parse an RFC 3339 timestamp to epoch ms, keeping microseconds; NaN if unreadable. */
export function parseTime(text) {
  if (typeof text !== "string" || !text) return NaN;
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(.*)$/i.exec(text);
  if (!m) return Date.parse(text);
  const whole = Date.parse(m[1] + (m[3] || "Z"));
  if (!m[2]) return whole;
  return whole + Number(`0.${m[2]}`) * 1000;
}
