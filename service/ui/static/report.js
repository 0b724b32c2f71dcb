// The data report of a training file (GET /v1/files/{id}/report), compact: sizes, tokens,
// lengths and truncation, duplicates, validation leakage, likely secrets and the estimate.

import { seg } from "./api.js";
import { h, num } from "./dom.js";
import { hyperparametersOf } from "./jobs.js";

/** The report's path for a job: its base model, validation file and fixed settings. */
export function reportPath(job) {
  const query = new URLSearchParams();
  if (job.model && !job.model.startsWith("ft:")) query.set("model", job.model);
  if (job.validation_file) query.set("validation_file", job.validation_file);
  // The job's own settings where it fixed them, so the report counts what it will train.
  const hyperparameters = hyperparametersOf(job);
  for (const name of ["n_epochs", "max_seq_length"]) {
    const value = hyperparameters[name];
    if (typeof value === "number") query.set(name, String(value));
  }
  return `/files/${seg(job.training_file)}/report?${query}`;
}

export function reportView(r) {
  const none = (list, show) => (list.length === 0 ? "none" : some(list.map(show), "; "));
  // [key, label, value, whether a value other than "none" needs a look]
  const facts = [
    ["rows", "Rows", num(r.rows), false],
    ["tokens", "Tokens trained / untrained / total",
      `${num(r.tokens.trained)} / ${num(r.tokens.untrained)} / ${num(r.tokens.total)}`, false],
    ["lengths", "Length (tokens) min / p50 / p90 / max",
      `${num(r.lengths.min)} / ${num(r.lengths.p50)} / ${num(r.lengths.p90)} / ` +
      `${num(r.lengths.max)}`, false],
    ["truncation", `Truncated at ${num(r.max_seq_length)} tokens`, r.truncation.rows === 0
      ? "none" : `${r.truncation.rows} rows (lines ${lines(r.truncation.lines)})`, true],
    ["exact-duplicates", "Exact duplicates",
      none(r.duplicates.exact, (d) => `lines ${lines(d.lines)}`), true],
    ["near-duplicates", "Near duplicates",
      none(r.duplicates.near, (d) => `lines ${lines(d.lines)}`), true],
  ];
  if (r.validation) {
    facts.push(["leakage", "Validation rows also in training",
      none(r.validation.leaked, (l) => `line ${l.line} (${l.kind})`), true]);
  }
  facts.push(["findings", "Likely secrets or PII",
    none(r.findings, (f) => `line ${f.line}: ${f.kind} ${f.excerpt}`), true]);
  facts.push(["estimate", "Estimate", estimate(r.estimate), false]);
  return h("div", { class: "report" },
    h("table", { class: "facts" }, h("tbody", {}, facts.map(([key, label, value, flag]) =>
      h("tr", { class: flag && value !== "none" ? "warn" : null, dataset: { fact: key } },
        h("th", { scope: "row" }, label), h("td", {}, value))))),
    preview(r.loss_preview));
}

/** A few items of a long list, then how many more: a report stays a glance.
 *
 *   some(["1", "2", "3", "4", "5", "6", "7"], ", ", 5) -> "1, 2, 3, 4, 5 and 2 more"
 */
export function some(items, separator, max = 5) {
  const shown = items.slice(0, max).join(separator);
  return items.length > max ? `${shown} and ${items.length - max} more` : shown;
}

function lines(list) {
  return some(list.map(String), ", ", 8);
}

function estimate(e) {
  if (!e || e.basis === "none") return "no earlier job of this base model measured yet";
  const minutes = e.seconds / 60;
  return `${minutes < 1 ? `${Math.round(e.seconds)} s` : `${minutes.toFixed(1)} min`} for ` +
    `${num(e.tokens)} tokens (${num(e.tokens_per_second)} tokens/s measured over ` +
    `${e.jobs_measured} jobs; ${num(e.gpu_hours)} GPU-hours)`;
}

/** Which tokens of a row carry loss: trained text marked, the rest dimmed. */
function preview(rows) {
  if (!rows?.length) return null;
  const row = rows[0];
  return h("details", { class: "loss-preview" },
    h("summary", {}, `Which tokens carry loss (line ${row.line})`),
    h("pre", {}, row.segments.map((seg) =>
      h("span", { class: seg.trained ? "trained" : "untrained" }, seg.text))));
}
