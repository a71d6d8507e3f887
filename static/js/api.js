// Calls to the API with the signed-in token (kept in sessionStorage: this tab only, never a cookie).

const TOKEN_KEY = "library.token";

export class Problem extends Error {
  constructor(status, body) {
    super((body && body.detail) || (body && body.title) || "The server answered " + status + ".");
    this.status = status;
    this.errors = (body && body.errors) || {};
  }

  /** The detail with the fields' errors, for a refusal shown beside a button (no form fields). */
  explain() {
    const fields = Object.entries(this.errors).map(([name, messages]) => name + ": " + [].concat(messages).join(" "));
    return fields.length ? this.message + " (" + fields.join("; ") + ")" : this.message;
  }
}

export function explain(err) {
  return err instanceof Problem ? err.explain() : err.message;
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  me: null, // the member signed in (GET /members/me), or null
};

export function isAtLeast(role) {
  const order = ["member", "librarian", "admin"];
  return session.me !== null && order.indexOf(session.me.role) >= order.indexOf(role);
}

/** One call: JSON in and out; a problem document becomes a thrown Problem with its detail. */
export async function api(method, path, body, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (session.token) headers.Authorization = "Bearer " + session.token;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
  } catch (err) {
    throw new Problem(0, { detail: "Cannot reach the server." });
  }
  let data = null;
  const text = await response.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401 && session.token && !options.keepToken) {
      session.token = null;
      session.me = null;
      window.dispatchEvent(new Event("signed-out"));
    }
    throw new Problem(response.status, data);
  }
  return data;
}

export const get = (path) => api("GET", path);
