// One job: status and progress, the live loss curves, hyperparameters, the data report,
// checkpoints (the best marked) each with a chat box, the final model's chat box, events.

import { ApiError, getJSON, seg } from "./api.js";
import { chatBox } from "./chat.js";
import { LossChart } from "./chart.js";
import { h, num, replace, when } from "./dom.js";
import { hyperparametersOf, statusBadge } from "./jobs.js";
import { followEvents } from "./live.js";
import { downloadButton } from "./models.js";
import { reportPath, reportView } from "./report.js";

const SETTLED = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 3000;

export async function jobView(root, jobId, signal) {
  const page = new JobPage(root, jobId, signal);
  await page.start();
}

class JobPage {
  constructor(root, jobId, signal) {
    this.root = root;
    this.jobId = jobId;
    this.signal = signal;
    this.job = null;
    this.events = [];
    this.chart = new LossChart();
    this.summary = h("div", { class: "summary" });
    this.progress = h("p", { class: "progress" });
    this.hyperparameters = h("div", { class: "hyperparameters" });
    this.report = h("div", { class: "report-slot" }, h("p", { class: "muted" }, "Loading…"));
    this.checkpoints = h("div", { class: "checkpoints" });
    this.final = h("div", { class: "final-model" });
    this.eventList = h("ol", { class: "events", reversed: true });
    this.live = h("span", { class: "live muted" });
    this.openChats = new Map(); // checkpoint name -> its chat box, kept across redraws
    this.checkpointsShape = null; // what the checkpoints table shows now
    this.reportPath = null; // the data report shown, for the job's settings then
    this.redrawQueued = false;
  }

  async start() {
    try {
      this.job = await getJSON(`/fine_tuning/jobs/${seg(this.jobId)}`, { signal: this.signal });
    } catch (error) {
      if (!this.signal.aborted) this.fail(error);
      return;
    }
    this.layout();
    this.showJob();
    await Promise.all([this.followEvents(), this.refreshLoop()]);
  }

  fail(error) {
    replace(this.root, h("h1", {}, "Job"), h("p", { class: "error", role: "alert" },
      error instanceof ApiError && error.status === 404
        ? `No job ${this.jobId} in this organization.` : error.message),
    h("p", {}, h("a", { href: "#/jobs" }, "All jobs")));
  }

  layout() {
    const section = (title, ...body) => h("section", { class: "card" }, h("h2", {}, title),
      ...body);
    replace(this.root,
      h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
      h("h1", { class: "mono" }, this.jobId),
      this.summary,
      section("Loss", this.progress, h("div", { class: "chart" }, this.chart.svg), this.live),
      h("div", { class: "columns" },
        section("Hyperparameters", this.hyperparameters),
        section("Training data", this.report)),
      section("Checkpoints", this.checkpoints),
      section("Fine-tuned model", this.final),
      section("Events", this.eventList));
  }

  async refreshLoop() {
    while (!this.signal.aborted && !SETTLED.has(this.job.status)) {
      await this.refresh();
      await new Promise((r) => setTimeout(r, REFRESH_MS));
    }
    await this.refresh();
  }

  async refresh() {
    if (this.signal.aborted) return;
    try {
      this.job = await getJSON(`/fine_tuning/jobs/${seg(this.jobId)}`, { signal: this.signal });
      const checkpoints = await getJSON(
        `/fine_tuning/jobs/${seg(this.jobId)}/checkpoints?limit=100`, { signal: this.signal });
      this.showJob();
      this.showCheckpoints(checkpoints.data);
    } catch {
      // the next refresh tries again; a refused key sends the page back to sign-in
    }
  }

  showJob() {
    const job = this.job;
    const fact = (label, value) => value === null || value === undefined || value === ""
      ? null : h("div", {}, h("dt", {}, label), h("dd", {}, value));
    replace(this.summary, h("dl", { class: "facts-inline" },
      fact("Status", statusBadge(job.status)),
      fact("Model", job.model),
      fact("Method", job.method?.type),
      fact("Training file", job.training_file),
      fact("Validation file", job.validation_file),
      fact("Created", when(job.created_at)),
      fact("Finished", when(job.finished_at)),
      fact("Trained tokens", job.trained_tokens && num(job.trained_tokens)),
      fact("Base model validation loss", job.base_valid_loss && num(job.base_valid_loss))),
    job.error ? h("p", { class: "error", role: "alert" },
      `${job.error.code}: ${job.error.message}`) : null);
    replace(this.hyperparameters, h("table", { class: "facts" }, h("tbody", {},
      Object.entries(hyperparametersOf(job)).map(([k, v]) => h("tr", { dataset: { name: k } },
        h("th", { scope: "row" }, k), h("td", {}, format(v)))))));
    this.showFinal();
    // Again once validation has resolved "auto" settings the report depends on.
    if (reportPath(job) !== this.reportPath) this.loadReport();
  }

  showFinal() {
    const model = this.job.fine_tuned_model;
    if (this.final.dataset.model === model) return;
    if (!model) {
      replace(this.final, h("p", { class: "muted" }, "Not yet: the model is named when the " +
        "job succeeds."));
      return;
    }
    this.final.dataset.model = model;
    replace(this.final, h("p", { class: "mono" }, model, " ", downloadButton(model)),
      chatBox(model));
  }

  showCheckpoints(checkpoints) {
    if (checkpoints.length === 0) {
      replace(this.checkpoints, h("p", { class: "muted" }, "None yet."));
      return;
    }
    const best = this.job.best_checkpoint?.id ?? null;
    // Redrawn only when something changed: an open chat box keeps its focus and its text.
    const shape = JSON.stringify([best, checkpoints.map((c) => [c.id, c.metrics])]);
    if (shape === this.checkpointsShape) return;
    this.checkpointsShape = shape;
    const head = ["Step", "Checkpoint", "Train loss", "Validation loss",
      "Full validation loss", ""];
    replace(this.checkpoints, h("table", { class: "checkpoints-table" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, checkpoints.map((c) => this.checkpointRows(c, c.id === best)))));
  }

  checkpointRows(c, isBest) {
    const name = c.fine_tuned_model_checkpoint;
    const m = c.metrics ?? {};
    const chatRow = h("tr", { class: "chat-row", hidden: !this.openChats.has(name) },
      h("td", { colspan: 6 }, this.openChats.get(name) ?? null));
    const toggle = () => {
      if (!this.openChats.has(name)) {
        this.openChats.set(name, chatBox(name));
        chatRow.firstChild.append(this.openChats.get(name));
      }
      chatRow.hidden = !chatRow.hidden;
      if (!chatRow.hidden) chatRow.querySelector("input").focus();
    };
    return [h("tr", { class: isBest ? "checkpoint best" : "checkpoint",
      dataset: { checkpoint: name, step: c.step_number, best: isBest ? "true" : "false" } },
    h("td", {}, c.step_number),
    h("td", { class: "mono" }, name, isBest ? h("span", { class: "badge best-badge" }, "best")
      : null),
    h("td", {}, num(m.train_loss)), h("td", {}, num(m.valid_loss)),
    h("td", {}, num(m.full_valid_loss)),
    h("td", { class: "actions" }, h("button", { type: "button", class: "open-chat",
      onclick: toggle }, "Chat"), downloadButton(name))), chatRow];
  }

  async loadReport() {
    const path = reportPath(this.job);
    this.reportPath = path;
    try {
      const report = await getJSON(path, { signal: this.signal });
      if (path === this.reportPath) replace(this.report, reportView(report));
    } catch (error) {
      if (this.signal.aborted || path !== this.reportPath) return;
      replace(this.report, h("p", { class: "muted" }, error.status === 404
        ? "No data report for this file on this server."
        : `No data report: ${error.message}`));
    }
  }

  async followEvents() {
    try {
      await followEvents(this.jobId, {
        signal: this.signal,
        onLive: () => {
          this.chart.svg.dataset.live = "stream";
          replace(this.live, "Live");
        },
        onEvent: (event) => this.addEvent(event),
        onEnd: () => replace(this.live, "Job settled"),
      });
    } catch (error) {
      if (!this.signal.aborted) replace(this.live, h("span", { class: "error" }, error.message));
    }
  }

  addEvent(event) {
    this.events.push(event);
    this.eventList.prepend(h("li", { class: `event level-${event.level}`,
      dataset: { type: event.type } },
    h("time", {}, when(event.created_at)), h("span", { class: "level" }, event.level),
    h("span", { class: "message" }, event.message)));
    if (event.type === "metrics") this.redrawSoon();
  }

  /** One redraw for a burst of events (a resumed stream sends many at once). */
  redrawSoon() {
    if (this.redrawQueued) return;
    this.redrawQueued = true;
    setTimeout(() => {
      this.redrawQueued = false;
      const c = this.chart.update(this.events);
      replace(this.progress, c.totalSteps ? `Step ${c.step} of ${c.totalSteps}`
        : `Step ${c.step}`);
    }, 50);
  }
}

function format(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return typeof value === "number" ? String(Number(value.toPrecision(6))) : String(value);
}
