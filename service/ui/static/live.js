// A job's events as they happen: the live stream (GET .../events with Accept:
// text/event-stream), resumed with Last-Event-ID after a dropped connection.

import { request, seg } from "./api.js";
import { readMessages } from "./sse.js";

const RETRY_MS = 1500;

/** Follows a job's events until the job settles or `signal` aborts.
 *
 * onEvent(event) gets each event once, oldest first; onEnd(status) is called when the
 * server says the job settled; onLive() each time the stream is (re)connected.
 */
export async function followEvents(jobId, { onEvent, onEnd, onLive, signal }) {
  const seen = new Set();
  let lastId = null;
  while (!signal.aborted) {
    let response;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      response = await request(`/fine_tuning/jobs/${seg(jobId)}/events?stream=true`,
        { headers, signal });
    } catch (error) {
      if (signal.aborted) return;
      if (error.status < 500) throw error; // refused or no such job: retrying cannot help
      await pause(RETRY_MS, signal); // no network, or the server restarting
      continue;
    }
    onLive();
    try {
      for await (const message of readMessages(response)) {
        if (message.event === "end") {
          onEnd(JSON.parse(message.data).status);
          return;
        }
        if (message.event !== "fine_tuning.job.event") continue;
        lastId = message.id || lastId;
        const event = JSON.parse(message.data);
        if (seen.has(event.id)) continue;
        seen.add(event.id);
        onEvent(event);
      }
    } catch {
      if (signal.aborted) return;
    }
    // Closed before its end (a restart, a proxy's time-out): resume after the last event.
    await pause(RETRY_MS, signal);
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
