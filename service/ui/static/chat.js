// A small chat box for one model (a fine-tuned model or a checkpoint's name):
// POST /v1/chat/completions, the conversation kept in the box.

import { getJSON } from "./api.js";
import { h } from "./dom.js";

export function chatBox(model) {
  const messages = [];
  const transcript = h("ol", { class: "transcript", "aria-live": "polite" });
  const input = h("input", { type: "text", name: "prompt", placeholder: "Say something",
    "aria-label": `Message to ${model}`, autocomplete: "off", required: true });
  const send = h("button", { type: "submit" }, "Send");
  const error = h("p", { class: "error", role: "alert", hidden: true });

  const say = (role, content) => {
    transcript.append(h("li", { class: `turn ${role}` }, h("span", { class: "role" }, role),
      h("span", { class: "content" }, content)));
  };

  const submit = async (e) => {
    e.preventDefault();
    const prompt = input.value.trim();
    if (!prompt) return;
    messages.push({ role: "user", content: prompt });
    say("user", prompt);
    input.value = "";
    send.disabled = true;
    error.hidden = true;
    try {
      const answer = await getJSON("/chat/completions", { method: "POST", body: {
        model, messages, max_tokens: 64, temperature: 0 } });
      const content = answer.choices?.[0]?.message?.content ?? "";
      messages.push({ role: "assistant", content });
      say("assistant", content || "(empty answer)");
    } catch (err) {
      messages.pop();
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      send.disabled = false;
      input.focus();
    }
  };

  return h("form", { class: "chat", dataset: { model }, onsubmit: submit },
    transcript, h("div", { class: "chat-input" }, input, send), error);
}
