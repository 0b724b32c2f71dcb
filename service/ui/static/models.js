// The models list: base models and the organization's fine-tuned models; a fine-tuned one
// downloads as a .tar.gz (fetched with the key, saved from a blob: the key stays out of URLs).

import { request, getJSON, seg } from "./api.js";
import { h, replace, when } from "./dom.js";

export async function modelsView(root, signal) {
  const note = h("p", { class: "muted" }, "Loading…");
  const body = h("tbody");
  replace(root, h("h1", {}, "Models"), note, h("table", { class: "models" },
    h("thead", {}, h("tr", {}, ["Model", "Owned by", "Created", ""].map((t) =>
      h("th", { scope: "col" }, t)))), body));
  try {
    const page = await getJSON("/models", { signal });
    replace(note, "");
    replace(body, page.data.map((m) => h("tr", { dataset: { model: m.id } },
      h("td", { class: "mono" }, m.id), h("td", {}, m.owned_by), h("td", {}, when(m.created)),
      h("td", {}, m.id.startsWith("ft:") ? downloadButton(m.id) : ""))));
  } catch (error) {
    if (!signal.aborted) replace(note, h("span", { class: "error" }, error.message));
  }
}

/** A button that downloads a model or checkpoint archive. */
export function downloadButton(model) {
  const status = h("span", { class: "download-status", role: "status" });
  const button = h("button", { type: "button", class: "download", onclick: async () => {
    button.disabled = true;
    replace(status, "Preparing…");
    try {
      await download(model);
      replace(status, "");
    } catch (error) {
      replace(status, h("span", { class: "error" }, error.status === 404
        ? "Not downloadable from this server" : error.message));
    } finally {
      button.disabled = false;
    }
  } }, "Download");
  return h("span", {}, button, status);
}

async function download(model) {
  const response = await request(`/models/${seg(model)}/download`);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename(response, model) });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function filename(response, model) {
  const header = response.headers.get("content-disposition") ?? "";
  const match = /filename="([^"]+)"/.exec(header);
  return match ? match[1] : `${model.replace(/[^A-Za-z0-9._-]+/g, "-")}.tar.gz`;
}
