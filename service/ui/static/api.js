// The /v1 API with the signed-in key. The key lives in this tab's sessionStorage and goes
// only into the Authorization header, never into a URL.

const KEY = "openft.apiKey";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An error answer of the API: its status and the message of OpenAI's envelope
 * {"error": {message, ...}}. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Fired on window when the key is refused: the page goes back to sign-in. */
export const KEY_REFUSED = "openft:key-refused";

/** fetch under /v1 with the key; an error answer is thrown as ApiError. */
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, signal, cache: "no-store",
    headers: { Authorization: `Bearer ${key.get() ?? ""}`, ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`/v1${path}`, init);
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json())?.error?.message ?? message;
  } catch {
    // not JSON (a proxy's page): the status line says enough
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent(KEY_REFUSED));
  return new ApiError(response.status, message);
}

/** A path segment: ids and model names (they hold ":") go in escaped. */
export const seg = (value) => encodeURIComponent(value);
