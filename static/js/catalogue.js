// The catalogue: search, genre, sort and pages, kept in the address bar; live.

import { get } from "./api.js";
import { $, formatDate, formatYear, h, put } from "./dom.js";
import { noteSeq } from "./live.js";

const PAGE_SIZE = 10, TYPING_DELAY_MS = 250;
const genres = new Set();

function seqOfEtag(etag) {
  const seq = parseInt(String(etag || "").replace(/^W\//, "").replace(/"/g, ""), 10);
  return Number.isFinite(seq) ? seq : null;
}

export function addGenres(names) {
  const before = genres.size;
  for (const name of names) if (name) genres.add(name);
  if (genres.size === before) return;
  const options = [...genres].sort((a, b) => a.localeCompare(b)).map((genre) => h("option", { value: genre }));
  put($("genres"), ...options);
}

export async function loadGenres() {
  try {
    addGenres((await get("/genres")).genres || []);
  } catch (err) {
    // an older server without /genres: the genres seen in the list are offered instead
  }
}

export function badge(book) {
  let text = "Available";
  if (book.status === "checked_out") text = book.due_at ? "Checked out, due " + formatDate(book.due_at) : "Checked out";
  else if (book.status === "on_hold") text = "On hold";
  return h("span", { class: "badge " + book.status, "data-testid": "status" }, text);
}

/** The catalogue view; ``params`` are the address bar's (q, genre, sort, page); ``go`` changes them. */
export function catalogueView(root, params, go) {
  const state = { q: params.get("q") || "", genre: params.get("genre") || "", sort: params.get("sort") || "title",
    page: Math.max(1, parseInt(params.get("page") || "1", 10) || 1), pages: 1 };
  const net = { etag: null, etagQuery: null, fetchId: 0, wantSeq: 0, behind: 0, timer: null, last: 0 };

  const search = h("input", { id: "search", "data-testid": "search", type: "search", name: "q",
    placeholder: "Title, author or ISBN", autocomplete: "off", value: state.q });
  const genre = h("input", { id: "genre", "data-testid": "genre", name: "genre", list: "genres",
    placeholder: "All genres", autocomplete: "off", value: state.genre });
  const sort = h("select", { id: "sort", name: "sort" },
    [["title", "Title"], ["author", "Author"], ["publication_year", "Year"], ["-created_at", "Newest"]].map(
      ([value, label]) => h("option", { value, selected: value === state.sort }, label)));
  const total = h("span", { id: "total", "data-testid": "total" }, "0");
  const word = h("span", {}, "books");
  const error = h("span", { class: "error", role: "alert", hidden: true });
  const rows = h("tbody", { id: "rows" });
  const prev = h("button", { id: "prev", "data-testid": "prev", type: "button" }, "‹ Previous");
  const next = h("button", { id: "next", "data-testid": "next", type: "button" }, "Next ›");
  const info = h("span", { id: "page-info" }, "Page 1 of 1");

  put(root,
    h("h2", { class: "visually-hidden", id: "view-title" }, "Catalogue"),
    h("form", { class: "controls", role: "search", onsubmit: (e) => e.preventDefault() },
      h("label", { class: "search" }, "Search", search),
      h("label", {}, "Genre", genre),
      h("label", {}, "Sort by", sort)),
    h("p", { class: "summary", "aria-live": "polite" }, total, " ", word, " ", error),
    h("table", {}, h("thead", {}, h("tr", {}, ["Title", "Author", "Genre", "Year", "ISBN", "Availability"].map((t) => h("th", { scope: "col" }, t)))), rows),
    h("nav", { class: "pager", "aria-label": "Pages" }, prev, info, next));

  function query() {
    const p = new URLSearchParams({ sort_by: state.sort, page: String(state.page), limit: String(PAGE_SIZE) });
    if (state.q) p.set("q", state.q);
    if (state.genre) p.set("genre", state.genre);
    return p.toString();
  }

  function address() { // what the address bar keeps
    const p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.genre) p.set("genre", state.genre);
    if (state.sort !== "title") p.set("sort", state.sort);
    if (state.page > 1) p.set("page", String(state.page));
    return p;
  }

  async function load() {
    const id = ++net.fetchId;
    const q = query();
    const headers = net.etag && net.etagQuery === q ? { "If-None-Match": net.etag } : {};
    net.last = Date.now();
    let response;
    try {
      response = await fetch("/books?" + q, { headers });
    } catch (err) {
      if (id === net.fetchId) showError("Cannot reach the server.");
      return;
    }
    if (id !== net.fetchId) return;
    if (response.status !== 304 && !response.ok) {
      let detail = "The server answered " + response.status + ".";
      try { detail = (await response.json()).detail || detail; } catch (err) { /* not JSON */ }
      showError(detail);
      return;
    }
    net.etag = response.headers.get("ETag");
    net.etagQuery = q;
    const seq = seqOfEtag(net.etag);
    noteSeq(seq);
    if (response.status === 200) render(await response.json());
    // A worker that has not yet seen the change answered: ask again (a few times at most).
    if (seq !== null && seq < net.wantSeq && net.behind++ < 10) schedule();
    else net.behind = 0;
  }

  function showError(text) {
    error.textContent = text;
    error.hidden = !text;
  }

  function render(data) {
    showError("");
    state.pages = Math.max(1, data.pages);
    if (state.page > state.pages) { // the last page emptied: show the new last page
      state.page = state.pages;
      go("/", address(), { replace: true, quiet: true });
      load();
      return;
    }
    addGenres(data.books.map((b) => b.genre));
    put(rows, ...data.books.map(bookRow));
    total.textContent = String(data.total);
    word.textContent = data.total === 1 ? "book" : "books";
    info.textContent = "Page " + state.page + " of " + state.pages;
    prev.disabled = state.page <= 1;
    next.disabled = state.page >= state.pages;
  }

  function bookRow(book) {
    const link = h("a", { href: "#/book/" + book.id, "data-testid": "title" }, book.title);
    const cell = (cls, label, text) => h("td", { class: cls, "data-label": label || null },
      text === null || text === undefined || text === "" ? "—" : String(text));
    return h("tr", { "data-testid": "book", "data-id": book.id },
      h("td", { class: "title" }, h("div", { class: "title-wrap" },
        book.cover_url ? h("img", { class: "cover", loading: "lazy", alt: "", src: book.cover_url }) : null, link)),
      cell("author", "", book.author), cell("genre", "Genre", book.genre),
      cell("year", "Year", formatYear(book.publication_year)), cell("isbn", "ISBN", book.isbn),
      h("td", { class: "status" }, badge(book)));
  }

  function schedule() { // at most one refetch per 300 ms, coalescing bursts of changes
    if (net.timer) return;
    const wait = Math.max(0, net.last + 300 - Date.now());
    net.timer = setTimeout(() => { net.timer = null; load(); }, wait);
  }

  function apply() {
    const q = search.value.trim(), g = genre.value.trim(), s = sort.value;
    if (q === state.q && g === state.genre && s === state.sort) return;
    Object.assign(state, { q, genre: g, sort: s, page: 1 });
    go("/", address(), { replace: true, quiet: true });
    load();
  }

  let typing = null;
  const typed = () => { clearTimeout(typing); typing = setTimeout(apply, TYPING_DELAY_MS); };
  search.addEventListener("input", typed);
  genre.addEventListener("input", typed);
  genre.addEventListener("change", apply);
  sort.addEventListener("change", apply);
  const turn = (delta) => {
    const page = Math.min(state.pages, Math.max(1, state.page + delta));
    if (page === state.page) return;
    state.page = page;
    go("/", address(), { quiet: true });
    load();
  };
  prev.addEventListener("click", () => turn(-1));
  next.addEventListener("click", () => turn(1));
  load();

  return {
    changed(seq, book) {
      net.wantSeq = Math.max(net.wantSeq, seq);
      if (book) addGenres([book.genre]);
      schedule();
    },
    dispose() { clearTimeout(typing); clearTimeout(net.timer); },
  };
}
