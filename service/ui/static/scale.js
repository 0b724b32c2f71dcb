// Pure helpers for the loss chart: domains, ticks, scales and SVG paths. No DOM here.

/** The [min, max] of the values, widened when flat so a line still has room.
 *
 *   extent([2, 1, 3]) -> [1, 3];  extent([0.5]) -> [0.45, 0.55];  extent([]) -> [0, 1]
 */
export function extent(values) {
  if (values.length === 0) return [0, 1];
  let min = Math.min(...values);
  let max = Math.max(...values);
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 0.5;
    min -= pad;
    max += pad;
  }
  return [min, max];
}

/** Round tick values covering [min, max]: steps of 1, 2 or 5 times a power of ten.
 *
 *   ticks(0, 10, 5) -> [0, 2, 4, 6, 8, 10]
 */
export function ticks(min, max, count = 5) {
  const raw = (max - min) / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const first = Math.ceil(min / step - 1e-9) * step;
  const out = [];
  for (let v = first; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** A linear map from the domain [d0, d1] onto the range [r0, r1]. */
export function linear([d0, d1], [r0, r1]) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

/** The SVG path through the points ([[x, y], ...], already in data units).
 *
 *   path([[0, 0], [1, 1]], (x) => x * 10, (y) => 100 - y * 10) -> "M0,100 L10,90"
 */
export function path(points, x, y) {
  return points
    .map(([px, py], i) => `${i === 0 ? "M" : "L"}${round(x(px))},${round(y(py))}`)
    .join(" ");
}

function round(v) {
  return Math.round(v * 10) / 10;
}

/** The curves a job's metrics events draw, each sorted by step, one point a step.
 *
 *   curves([{type: "metrics", data: {step: 1, train_loss: 2.1, valid_loss: 2.3}}])
 *   -> {train: [[1, 2.1]], valid: [[1, 2.3]], fullValid: [], step: 1, totalSteps: null}
 */
export function curves(events) {
  const series = { train: new Map(), valid: new Map(), fullValid: new Map() };
  let step = 0;
  let totalSteps = null;
  for (const event of events) {
    const d = event.type === "metrics" ? event.data : null;
    if (!d || typeof d.step !== "number") continue;
    step = Math.max(step, d.step);
    if (typeof d.total_steps === "number") totalSteps = d.total_steps;
    if (isNum(d.train_loss)) series.train.set(d.step, d.train_loss);
    if (isNum(d.valid_loss)) series.valid.set(d.step, d.valid_loss);
    if (isNum(d.full_valid_loss)) series.fullValid.set(d.step, d.full_valid_loss);
  }
  const sorted = (m) => [...m.entries()].sort((a, b) => a[0] - b[0]);
  return {
    train: sorted(series.train),
    valid: sorted(series.valid),
    fullValid: sorted(series.fullValid),
    step,
    totalSteps,
  };
}

function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}
