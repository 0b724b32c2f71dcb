// A job's events as they happen: the live stream (GET .../events with Accept:
// text/event-stream), resumed with Last-Event-ID after a dropped connection; a server without
// the stream answers with the plain list, and the page polls that instead.

import { authHeaders, errorOf, getJSON, seg } from "./api.js";
import { readMessages } from "./sse.js";

const RETRY_MS = 1500;
const POLL_MS = 2000;

/** Follows a job's events until the job settles or `signal` aborts.
 *
 * onEvent(event) gets each event once, oldest first; onEnd(status) is called when the
 * server says the job settled; onMode("stream" | "poll") says which way they arrive.
 */
export async function followEvents(jobId, { onEvent, onEnd, onMode, signal, isSettled }) {
  const seen = new Set();
  const deliver = (event) => {
    if (seen.has(event.id)) return;
    seen.add(event.id);
    onEvent(event);
  };
  if (await stream(jobId, deliver, onEnd, onMode, signal)) return;
  onMode("poll");
  await poll(jobId, seen, deliver, onEnd, signal, isSettled);
}

/** True when the stream carried the events to their end (or the page left); false when
 * the server has no live stream. */
async function stream(jobId, deliver, onEnd, onMode, signal) {
  let lastId = null;
  while (!signal.aborted) {
    let response;
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId) headers["Last-Event-ID"] = lastId;
      response = await fetch(`/v1/fine_tuning/jobs/${seg(jobId)}/events?stream=true`,
        { headers, signal, cache: "no-store" });
    } catch {
      if (signal.aborted) return true;
      await pause(RETRY_MS, signal);
      continue;
    }
    if (response.status >= 500) {
      await pause(RETRY_MS, signal);
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      return false;
    }
    onMode("stream");
    try {
      for await (const message of readMessages(response)) {
        if (message.event === "end") {
          onEnd(JSON.parse(message.data).status);
          return true;
        }
        if (message.event !== "fine_tuning.job.event") continue;
        lastId = message.id || lastId;
        deliver(JSON.parse(message.data));
      }
    } catch {
      if (signal.aborted) return true;
    }
    // Closed before its end (a restart, a proxy's time-out): resume after the last event.
    await pause(RETRY_MS, signal);
  }
  return true;
}

async function poll(jobId, seen, deliver, onEnd, signal, isSettled) {
  while (!signal.aborted) {
    try {
      for (const event of await newest(jobId, seen, signal)) deliver(event);
      if (isSettled()) {
        onEnd(null);
        return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status && error.status < 500) throw error;
    }
    await pause(POLL_MS, signal);
  }
}

/** The events not yet seen, oldest first (the list endpoint pages newest first). */
async function newest(jobId, seen, signal) {
  const events = [];
  let after = null;
  for (let page = 0; page < 100; page++) {
    const query = new URLSearchParams({ limit: "100" });
    if (after) query.set("after", after);
    const body = await getJSON(`/fine_tuning/jobs/${seg(jobId)}/events?${query}`, { signal });
    events.push(...body.data);
    if (!body.has_more || body.data.some((e) => seen.has(e.id))) break;
    after = body.data[body.data.length - 1].id;
  }
  return events.reverse();
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
