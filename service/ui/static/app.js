// The page: sign-in with an API key, then a view per location hash (#/jobs, #/jobs/<id>,
// #/models). Every request is the /v1 API with the key; the page shows only what it returns.

import { ApiError, KEY_REFUSED, getJSON, key } from "./api.js";
import { h, replace } from "./dom.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { modelsView } from "./models.js";

const view = document.getElementById("view");
const signIn = document.getElementById("sign-in");
const nav = document.getElementById("nav");
const form = document.getElementById("sign-in-form");
const keyInput = document.getElementById("api-key");
const signInError = document.getElementById("sign-in-error");

let current = null; // the AbortController of the view on screen

function showSignIn(message = "") {
  current?.abort();
  view.hidden = true;
  nav.hidden = true;
  signIn.hidden = false;
  signInError.textContent = message;
  signInError.hidden = !message;
  keyInput.focus();
}

function route() {
  if (!key.get()) {
    showSignIn();
    return;
  }
  signIn.hidden = true;
  nav.hidden = false;
  view.hidden = false;
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  const path = location.hash.replace(/^#/, "") || "/jobs";
  const job = /^\/jobs\/([^/]+)$/.exec(path);
  for (const a of nav.querySelectorAll("a")) {
    a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
  }
  if (job) jobView(view, decodeURIComponent(job[1]), signal);
  else if (path === "/models") modelsView(view, signal);
  else if (path === "/jobs") jobsView(view, signal);
  else replace(view, h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Jobs")));
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const candidate = keyInput.value.trim();
  key.set(candidate);
  try {
    await getJSON("/models"); // any authenticated route: is the key good?
  } catch (error) {
    key.clear();
    showSignIn(error instanceof ApiError && error.status === 401
      ? "That API key was refused." : `Could not sign in: ${error.message}`);
    return;
  }
  keyInput.value = "";
  route();
});

document.getElementById("sign-out").addEventListener("click", () => {
  key.clear();
  showSignIn();
});

window.addEventListener(KEY_REFUSED, () => {
  if (!signIn.hidden) return; // the sign-in form reports its own refusal
  key.clear();
  showSignIn("The API key was refused: sign in again.");
});

window.addEventListener("hashchange", route);
route();
