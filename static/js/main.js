// The page: who is signed in, the menu for their role, and the views routed by the address bar
// (#/path?query), so back/forward and a shared link work.

import { api, get, isAtLeast, Problem, session } from "./api.js";
import { $, field, focus, h, showFieldErrors, put, remember } from "./dom.js";
import { catalogueView, loadGenres } from "./catalogue.js";
import { bookView } from "./book.js";
import { myView } from "./member.js";
import { editorView } from "./editor.js";
import { holdsView, importView, loansView, membersView, memberView, overviewView } from "./desk.js";
import { connect, onChange } from "./live.js";

let current = null; // the view on screen: { changed(seq, book), dispose() }
let rendered = null; // the address it shows
let registration = "open";

const MENU = [
  { path: "/", label: "Catalogue" },
  { path: "/me", label: "My loans", role: "member" },
  { path: "/add", label: "Add a book", role: "librarian" },
  { path: "/members", label: "Members", role: "librarian" },
  { path: "/loans", label: "Loans", role: "librarian" },
  { path: "/loans?status=overdue", label: "Overdue", role: "librarian" },
  { path: "/holds", label: "Holds", role: "librarian" },
  { path: "/overview", label: "Overview", role: "librarian" },
  { path: "/import", label: "Import", role: "librarian" },
];

/** Go to ``path`` with query ``params``; ``quiet`` only records it in the address bar. */
export function go(path, params, options = {}) {
  const query = params && String(params) ? "?" + String(params) : "";
  const hash = "#" + path + query;
  if (options.replace) history.replaceState(null, "", hash);
  else if (location.hash !== hash) history.pushState(null, "", hash);
  if (options.quiet) rendered = location.hash;
  else route(options.focus !== false);
}

function parse() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?", 2);
  return { path: path || "/", params: new URLSearchParams(query || "") };
}

function route(moveFocus = true) {
  if (location.hash === rendered && current) return;
  rendered = location.hash;
  const { path, params } = parse();
  if (current) current.dispose();
  const root = $("view");
  const parts = path.split("/").filter(Boolean);
  const need = (role) => {
    if (isAtLeast(role)) return true;
    signInView(root, session.me ? "This needs a " + role + "'s account." : "Sign in first.");
    return false;
  };
  current = null;
  $("notice").textContent = "";
  if (watcher) watcher.disconnect();
  const restore = remember(root); // a filter that changed the address keeps the focus
  put(root, h("p", { class: "note" }, "Loading…"));
  if (parts.length === 0) current = catalogueView(root, params, go);
  else if (parts[0] === "book" && parts[2] === "edit") current = need("librarian") && editorView(root, Number(parts[1]), go);
  else if (parts[0] === "book") current = bookView(root, Number(parts[1]), go);
  else if (parts[0] === "signin") signInView(root);
  else if (parts[0] === "register") registerView(root);
  else if (parts[0] === "me") current = need("member") && myView(root, go);
  else if (parts[0] === "add") current = need("librarian") && editorView(root, null, go);
  else if (parts[0] === "members" && parts[1]) current = need("librarian") && memberView(root, Number(parts[1]), go);
  else if (parts[0] === "members") current = need("librarian") && membersView(root, params, go);
  else if (parts[0] === "loans") current = need("librarian") && loansView(root, params, go);
  else if (parts[0] === "holds") current = need("librarian") && holdsView(root, params, go);
  else if (parts[0] === "overview") current = need("librarian") && overviewView(root, go);
  else if (parts[0] === "import") current = need("librarian") && importView(root, go);
  else put(root, h("h2", { id: "view-title" }, "Not found"), h("p", {}, h("a", { href: "#/" }, "To the catalogue")));
  current = current || { changed() {}, dispose() {} };
  markMenu(path + (params.get("status") === "overdue" ? "?status=overdue" : ""));
  if (!moveFocus) restore();
  else if (path !== "/") focusHeading(root);
}

let watcher = null;

/** Focus the view's heading: now, or when a view that loads first shows it. */
function focusHeading(root) {
  const heading = root.querySelector("h2");
  if (heading) return focus(heading);
  watcher = new MutationObserver(() => {
    const shown = root.querySelector("h2");
    if (!shown) return;
    watcher.disconnect();
    focus(shown);
  });
  watcher.observe(root, { childList: true, subtree: true });
}

function markMenu(path) {
  for (const link of $("menu").querySelectorAll("a")) {
    if (link.getAttribute("href") === "#" + path) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function renderHeader() {
  const me = session.me;
  const items = MENU.filter((item) => !item.role || isAtLeast(item.role)).map((item) =>
    h("li", {}, h("a", { href: "#" + item.path }, item.label)));
  put($("menu"), ...items);
  const who = $("who");
  if (me) {
    put(who,
      h("span", { "data-testid": "signed-in" }, "Signed in as ", h("strong", {}, me.first_name + " " + me.last_name),
        " (", h("span", { "data-testid": "role" }, me.role), ")"),
      h("button", { type: "button", "data-testid": "sign-out", onclick: signOut }, "Sign out"));
  } else {
    put(who,
      h("a", { href: "#/signin", "data-testid": "sign-in-link" }, "Sign in"),
      registration === "open" ? h("a", { href: "#/register" }, "Register") : null);
  }
}

function signOut() {
  session.token = null;
  session.me = null;
  renderHeader();
  rendered = null;
  go("/", null);
  $("notice").textContent = "Signed out.";
}

async function loadMe() {
  if (!session.token) return;
  try {
    session.me = await api("GET", "/members/me");
  } catch (err) {
    session.me = null;
    if (err instanceof Problem && err.status === 401) session.token = null;
  }
}

function signInView(root, reason) {
  const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error", role: "alert", "data-testid": "form-error" });
  const form = h("form", { class: "card form", "aria-labelledby": "view-title" },
    field("Email", email), field("Password", password),
    h("button", { type: "submit", class: "primary" }, "Sign in"), error,
    registration === "open" ? h("p", {}, "No account? ", h("a", { href: "#/register" }, "Register")) : null);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const body = await api("POST", "/auth/login", { email: email.value, password: password.value }, { keepToken: true });
      session.token = body.access_token;
      await loadMe();
      renderHeader();
      const back = parse().path;
      rendered = null;
      if (back === "/signin") go(isAtLeast("librarian") ? "/overview" : "/me", null);
      else route();
      $("notice").textContent = "Signed in as " + session.me.first_name + " " + session.me.last_name + ".";
    } catch (err) {
      error.textContent = err.message;
      showFieldErrors(form, err.errors);
      focus(password);
    }
  });
  put(root, h("h2", { id: "view-title" }, "Sign in"), reason ? h("p", { class: "note" }, reason) : null, form);
}

function registerView(root) {
  if (registration !== "open") {
    put(root, h("h2", { id: "view-title" }, "Register"), h("p", {}, "This library does not take registrations on the page; ask a librarian to enrol you."));
    return;
  }
  const inputs = {
    first_name: h("input", { name: "first_name", autocomplete: "given-name", required: true }),
    last_name: h("input", { name: "last_name", autocomplete: "family-name", required: true }),
    email: h("input", { type: "email", name: "email", autocomplete: "email", required: true }),
    password: h("input", { type: "password", name: "password", autocomplete: "new-password", required: true }),
  };
  const error = h("p", { class: "error", role: "alert", "data-testid": "form-error" });
  const form = h("form", { class: "card form", novalidate: true },
    field("First name", inputs.first_name), field("Last name", inputs.last_name), field("Email", inputs.email),
    field("Password", inputs.password, "At least 8 characters."),
    h("button", { type: "submit", class: "primary" }, "Register"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.value]));
    try {
      await api("POST", "/auth/register", body);
      const login = await api("POST", "/auth/login", { email: body.email, password: body.password });
      session.token = login.access_token;
      await loadMe();
      renderHeader();
      $("notice").textContent = "Welcome, " + session.me.first_name + ".";
      go("/me", null);
    } catch (err) {
      error.textContent = err.message;
      focus(showFieldErrors(form, err.errors) || error);
    }
  });
  put(root, h("h2", { id: "view-title" }, "Register"), form);
}

async function start() {
  try {
    const library = await get("/library");
    registration = library.registration || "open";
    if (library.name) {
      $("library-name").textContent = library.name;
      document.title = library.name;
    }
  } catch (err) {
    // no /library on this server: registration is open
  }
  await loadMe();
  renderHeader();
  // The skip link moves the focus; following its href would change the route.
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    focus($("view").querySelector("h2") || $("view"));
  });
  window.addEventListener("popstate", () => route());
  window.addEventListener("hashchange", () => route());
  window.addEventListener("signed-out", () => {
    renderHeader();
    $("notice").textContent = "Your sign-in ended; sign in again.";
  });
  onChange((seq, book) => current && current.changed(seq, book));
  route(false);
  loadGenres();
  connect();
}

start();
