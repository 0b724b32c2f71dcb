// Server-sent events over fetch: EventSource cannot send an Authorization header, so the page
// reads the stream itself. SSEParser is pure (text in, messages out); readMessages drives it
// from a fetch Response body.

/** Parses the text/event-stream format (WHATWG HTML, "Event stream interpretation").
 *
 *   const p = new SSEParser();
 *   p.push("id: 7\nevent: tick\ndata: {\"a\"");   // -> []
 *   p.push(": 1}\n\n");
 *   // -> [{id: "7", event: "tick", data: '{"a": 1}'}]
 */
export class SSEParser {
  constructor() {
    this.pending = "";
    this.lastEventId = "";
    this.resetMessage();
  }

  resetMessage() {
    this.event = "";
    this.data = [];
  }

  /** Feeds decoded text; returns the messages it completed, oldest first. */
  push(text) {
    this.pending += text;
    const messages = [];
    const lineBreak = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = lineBreak.exec(this.pending)) !== null) {
      // A lone "\r" at the end of the text may be the first half of "\r\n": wait for more.
      if (match[0] === "\r" && match.index === this.pending.length - 1) break;
      const message = this.line(this.pending.slice(start, match.index));
      if (message) messages.push(message);
      start = lineBreak.lastIndex;
    }
    this.pending = this.pending.slice(start);
    return messages;
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null; // a comment: the server's keep-alive ping
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    return null;
  }

  dispatch() {
    const message = this.data.length === 0 ? null : {
      id: this.lastEventId,
      event: this.event || "message",
      data: this.data.join("\n"),
    };
    this.resetMessage();
    return message;
  }
}

/** Yields the SSE messages of a fetch Response as they arrive. */
export async function* readMessages(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      yield* parser.push(value);
    }
  } finally {
    reader.releaseLock();
  }
}
