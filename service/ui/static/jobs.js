// The jobs list: the signed-in organization's jobs, newest first, refreshed every few seconds.

import { getJSON } from "./api.js";
import { h, replace, when } from "./dom.js";

const REFRESH_MS = 3000;

export async function jobsView(root, signal) {
  const body = h("tbody");
  const note = h("p", { class: "muted" }, "Loading…");
  replace(root, h("h1", {}, "Fine-tuning jobs"), note,
    h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Fine-tuned model", "Created"]
        .map((t) => h("th", { scope: "col" }, t)))),
      body));
  while (!signal.aborted) {
    try {
      const page = await getJSON("/fine_tuning/jobs?limit=100", { signal });
      replace(body, page.data.map(jobRow));
      replace(note, page.data.length ? "" : "No jobs yet: create one with the API or the CLI.");
    } catch (error) {
      if (signal.aborted) return;
      replace(note, h("span", { class: "error" }, error.message));
    }
    await new Promise((r) => setTimeout(r, REFRESH_MS));
  }
}

function jobRow(job) {
  return h("tr", { dataset: { jobId: job.id } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.model),
    h("td", { class: "mono" }, job.fine_tuned_model ?? ""),
    h("td", {}, when(job.created_at)));
}

/** All of a job's hyperparameters: OpenAI's three and the method's own (LoRA, lengths). */
export function hyperparametersOf(job) {
  return { ...(job.method?.[job.method?.type]?.hyperparameters ?? {}), ...job.hyperparameters };
}

export function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, status.replaceAll("_", " "));
}
