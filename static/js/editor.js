// Adding and editing a book: the problem document's per-field errors next to their fields, a cover
// uploaded with it, and the fields filled from an ISBN by Open Library (fetched by the browser; the
// form works the same when that service cannot be reached).

import { api, get } from "./api.js";
import { $, field, focus, h, showFieldErrors, put } from "./dom.js";

const LOOKUP_TIMEOUT_MS = 8000;

/** Title, author, year, publisher and a cover URL for an ISBN, from Open Library's public API. */
async function lookUp(isbn) {
  const key = "ISBN:" + isbn.replace(/[^0-9Xx]/g, "");
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), LOOKUP_TIMEOUT_MS);
  try {
    const response = await fetch("https://openlibrary.org/api/books?format=json&jscmd=data&bibkeys=" + encodeURIComponent(key),
      { signal: controller.signal, credentials: "omit" });
    if (!response.ok) throw new Error("Open Library answered " + response.status);
    const found = (await response.json())[key];
    if (!found) return null;
    const year = /(\d{4})/.exec(found.publish_date || "");
    return {
      title: found.title || "",
      author: (found.authors || []).map((a) => a.name).join(", "),
      publication_year: year ? year[1] : "",
      publisher: ((found.publishers || [])[0] || {}).name || "",
      cover: (found.cover && (found.cover.large || found.cover.medium)) || null,
    };
  } finally {
    clearTimeout(timer);
  }
}

export function editorView(root, bookId, go) {
  const names = [["title", "Title"], ["author", "Author"], ["genre", "Genre"], ["publisher", "Publisher"],
    ["publication_year", "Year"], ["isbn", "ISBN"]];
  const inputs = {};
  for (const [name] of names) {
    inputs[name] = h("input", { name, "data-testid": "book-" + name, autocomplete: "off",
      inputmode: name === "publication_year" ? "numeric" : null, list: name === "genre" ? "genres" : null });
  }
  inputs.title.required = true;
  inputs.author.required = true;
  const cover = h("input", { type: "file", name: "cover", accept: "image/*", "data-testid": "book-cover" });
  const preview = h("img", { class: "cover-large", alt: "Cover found for this ISBN", hidden: true });
  const lookupNote = h("p", { class: "note", role: "status", "data-testid": "lookup-result" });
  const error = h("p", { class: "error", role: "alert", "data-testid": "form-error" });
  let foundCover = null;

  const lookup = h("button", { type: "button", "data-testid": "lookup" }, "Fill from ISBN");
  lookup.addEventListener("click", async () => {
    const isbn = inputs.isbn.value.trim();
    if (!isbn) {
      lookupNote.textContent = "Type an ISBN first.";
      return focus(inputs.isbn);
    }
    lookupNote.textContent = "Looking up " + isbn + " at Open Library…";
    try {
      const found = await lookUp(isbn);
      if (!found) {
        lookupNote.textContent = "Open Library does not know this ISBN; fill the fields by hand.";
        return;
      }
      for (const name of ["title", "author", "publication_year", "publisher"]) if (found[name] && !inputs[name].value) inputs[name].value = found[name];
      foundCover = found.cover;
      preview.hidden = !foundCover;
      if (foundCover) preview.src = foundCover;
      lookupNote.textContent = "Filled from Open Library: " + found.title + ". Check the fields and save.";
      focus(inputs.title);
    } catch (err) {
      lookupNote.textContent = "Open Library cannot be reached just now; fill the fields by hand.";
    }
  });

  // Enter in the ISBN field, or pasting one, looks it up (instead of saving a form still empty).
  inputs.isbn.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    lookup.click();
  });
  inputs.isbn.addEventListener("paste", () => setTimeout(() => {
    if (/^[0-9Xx -]{10,17}$/.test(inputs.isbn.value.trim()) && !inputs.title.value) lookup.click();
  }, 0));

  const form = h("form", { class: "card form editor", novalidate: true },
    h("div", { class: "isbn-row" }, field("ISBN", inputs.isbn, "ISBN-10 or ISBN-13"), lookup), lookupNote, preview,
    names.filter(([n]) => n !== "isbn").map(([name, label]) => field(label, inputs[name])),
    field("Cover image (optional)", cover),
    h("button", { type: "submit", class: "primary", "data-testid": "save" }, bookId ? "Save changes" : "Add book"), error);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = {};
    for (const [name] of names) {
      const value = inputs[name].value.trim();
      if (name === "publication_year") body[name] = value === "" ? null : /^-?\d+$/.test(value) ? Number(value) : value;
      else body[name] = value === "" && name !== "title" && name !== "author" ? null : value;
    }
    let book;
    try {
      book = bookId ? await api("PATCH", "/books/" + bookId, body) : await api("POST", "/books", body);
    } catch (err) {
      error.textContent = err.message;
      focus(showFieldErrors(form, err.errors) || error);
      return;
    }
    showFieldErrors(form, {});
    let note = "";
    try {
      let file = cover.files[0] || null;
      if (!file && foundCover) {
        try {
          const response = await fetch(foundCover, { credentials: "omit" });
          if (response.ok) file = new File([await response.blob()], "cover.jpg", { type: "image/jpeg" });
        } catch (err) {
          note = " The cover from Open Library could not be fetched; upload one on the book's page.";
        }
      }
      if (file) {
        const data = new FormData();
        data.append("file", file);
        await api("POST", "/books/" + book.id + "/cover", data);
      }
    } catch (err) {
      note = " The cover was refused: " + err.message;
    }
    go("/book/" + book.id, null);
    $("notice").textContent = (bookId ? "Saved “" : "Added “") + book.title + "”." + note;
  });

  put(root, h("h2", { id: "view-title" }, bookId ? "Edit book" : "Add a book"), form);
  if (bookId) {
    get("/books/" + bookId).then((book) => {
      for (const [name] of names) inputs[name].value = book[name] === null || book[name] === undefined ? "" : String(book[name]);
    }).catch((err) => { error.textContent = err.message; });
  }
  return { changed() {}, dispose() {} };
}
