// One book: every field, a large cover, availability, and what the person on the page can do with it.

import { api, get, isAtLeast, session } from "./api.js";
import { feedback, field, focus, formatDate, formatYear, h, put, remember } from "./dom.js";
import { badge } from "./catalogue.js";
import { memberName } from "./member.js";

/** The member picker a librarian lends with: type a name or email, choose from what matches. */
export function memberPicker(label = "Member") {
  const search = h("input", { type: "search", name: "member_q", autocomplete: "off", placeholder: "Name or email" });
  const choice = h("select", { name: "member_id", "data-testid": "member-choice" }, h("option", { value: "" }, "Type to find a member"));
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const q = search.value.trim();
      if (!q) return;
      try {
        const found = await get("/members?limit=20&q=" + encodeURIComponent(q));
        put(choice, ...(found.members.length ? found.members.map((m) =>
          h("option", { value: m.id }, m.first_name + " " + m.last_name + " <" + m.email + ">")) : [h("option", { value: "" }, "No member matches")]));
      } catch (err) {
        put(choice, h("option", { value: "" }, err.message));
      }
    }, 200);
  });
  return { search, choice, nodes: [field(label + " (search)", search), field(label, choice)] };
}

export function bookView(root, bookId, go) {
  let alive = true;
  const { status, refusal, refuse, act } = feedback(() => load());

  async function load() {
    let book;
    try {
      book = await get("/books/" + bookId);
    } catch (err) {
      if (!alive) return;
      put(root, h("h2", { id: "view-title" }, "Book not found"), h("p", { class: "error" }, err.message),
        h("p", {}, h("a", { href: "#/" }, "Back to the catalogue")));
      return;
    }
    if (!alive) return;
    const me = session.me;
    let myLoan = null, myHold = null, waiting = null, loanOfBook = null;
    if (me) {
      try {
        const loans = await get("/loans?status=active&book_id=" + bookId + (isAtLeast("librarian") ? "" : "&member_id=" + me.id));
        loanOfBook = loans.loans[0] || null;
        myLoan = loans.loans.find((l) => l.member_id === me.id) || null;
        const holds = await get("/holds?status=active&limit=100&book_id=" + bookId + (isAtLeast("librarian") ? "" : "&member_id=" + me.id));
        myHold = holds.holds.find((x) => x.member_id === me.id) || null;
      } catch (err) {
        // shown as the book alone
      }
    }
    try {
      waiting = (await get("/books/" + bookId + "/queue")).holds;
    } catch (err) {
      // the count is left out
    }
    if (!alive) return;
    const facts = [["Author", book.author], ["Genre", book.genre], ["Publisher", book.publisher],
      ["Year", formatYear(book.publication_year)], ["ISBN", book.isbn], ["Added", formatDate(book.created_at)]];
    const details = h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? "—" : String(v))]));
    const availability = h("p", { class: "availability" }, badge(book),
      waiting !== null ? h("span", { "data-testid": "waiting" }, " " + waiting + (waiting === 1 ? " hold" : " holds") + " in the queue") : null);
    const actions = h("div", { class: "actions" });

    if (me) {
      if (myLoan) {
        actions.append(h("p", { "data-testid": "my-loan" }, "You have this book, due " + formatDate(myLoan.due_at) + (myLoan.fine ? ", fine so far " + myLoan.fine.toFixed(2) : "") + "."),
          h("button", { type: "button", "data-testid": "renew", onclick: () => act("Renew", () => api("POST", "/loans/" + myLoan.id + "/renew"), (l) => "Renewed: now due " + formatDate(l.due_at) + ".") }, "Renew"),
          h("button", { type: "button", "data-testid": "return", onclick: () => act("Return", () => api("POST", "/books/" + bookId + "/return"), (l) => "Returned" + (l.fine ? " with a fine of " + l.fine.toFixed(2) : "") + ".") }, "Return"));
      } else if (!isAtLeast("librarian") || book.status !== "checked_out") {
        const days = h("input", { type: "number", name: "days", min: 1, max: 365, inputmode: "numeric", "data-testid": "days", placeholder: "default" });
        const borrow = h("form", { class: "inline", "aria-label": "Borrow" }, field("Days", days),
          h("button", { type: "submit", class: "primary", "data-testid": "borrow" }, "Borrow"));
        borrow.addEventListener("submit", (e) => {
          e.preventDefault();
          const body = days.value ? { days: Number(days.value) } : undefined;
          act("Borrow", () => api("POST", "/books/" + bookId + "/borrow", body), (l) => "Borrowed: due " + formatDate(l.due_at) + ".");
        });
        if (book.status !== "checked_out") actions.append(borrow);
      }
      if (myHold) {
        actions.append(h("p", { "data-testid": "my-hold" }, myHold.status === "ready"
          ? "Kept for you until " + formatDate(myHold.expires_at) + "."
          : "You are number " + myHold.position + " in the queue."),
        h("button", { type: "button", "data-testid": "cancel-hold", onclick: () => act("Cancel hold", () => api("DELETE", "/holds/" + myHold.id), () => "Hold cancelled.") }, "Cancel hold"));
      } else if (!myLoan && book.status !== "available") {
        actions.append(h("button", { type: "button", "data-testid": "place-hold", onclick: () => act("Place hold", () => api("POST", "/books/" + bookId + "/hold"), (x) => "Hold placed: number " + x.position + " in the queue.") }, "Place hold"));
      }
    } else {
      actions.append(h("p", {}, h("a", { href: "#/signin" }, "Sign in"), " to borrow or hold this book."));
    }

    let desk = null;
    if (isAtLeast("librarian")) desk = deskPanel(book, loanOfBook, loanOfBook ? await memberName(loanOfBook.member_id) : null);
    if (!alive) return;

    const restore = remember(root);
    const cover = book.cover_url ? h("img", { class: "cover-large", src: book.cover_url, alt: "Cover of " + book.title })
      : h("div", { class: "cover-large placeholder", "aria-hidden": "true" }, "No cover");
    put(root,
      h("p", {}, h("a", { href: "#/", "data-testid": "back" }, "‹ Catalogue")),
      h("article", { class: "book card", "data-testid": "book-page" }, cover,
        h("div", {}, h("h2", { id: "view-title", "data-testid": "book-title" }, book.title), details, availability,
          book.status === "checked_out" && book.due_at ? h("p", { "data-testid": "due" }, "Due back " + formatDate(book.due_at) + ".") : null,
          book.document_url ? h("p", {}, h("a", { href: book.document_url }, "Read the document")) : null,
          actions, status, refusal)),
      desk);
    restore();
  }

  function deskPanel(book, loan, borrower) {
    const picker = memberPicker();
    const lend = h("form", { class: "card form", "aria-label": "Lend to a member" }, h("h3", {}, "Lend to a member"), picker.nodes,
      h("button", { type: "submit", "data-testid": "lend" }, "Lend"));
    lend.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!picker.choice.value) return refuse("Lend", new Error("Choose a member first"));
      act("Lend", () => api("POST", "/books/" + book.id + "/borrow", { member_id: Number(picker.choice.value) }),
        (l) => "Lent to " + picker.choice.selectedOptions[0].textContent.replace(/ <.*$/, "") + ", due " + formatDate(l.due_at) + ".");
    });
    const upload = (kind) => {
      const input = h("input", { type: "file", name: "file", "data-testid": kind + "-file", accept: kind === "cover" ? "image/*" : null });
      const form = h("form", { class: "inline", "aria-label": "Upload a " + kind }, field(kind === "cover" ? "Cover image" : "Document", input),
        h("button", { type: "submit", "data-testid": "upload-" + kind }, "Upload " + kind));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        if (!input.files.length) return refuse("Upload " + kind, new Error("Choose a file first"));
        const data = new FormData();
        data.append("file", input.files[0]);
        act("Upload " + kind, () => api("POST", "/books/" + book.id + "/" + kind, data), () => (kind === "cover" ? "Cover" : "Document") + " uploaded.");
      });
      return form;
    };
    const confirmDelete = h("button", { type: "button", class: "danger", "data-testid": "confirm-delete", hidden: true, onclick: async () => {
      try {
        await api("DELETE", "/books/" + book.id);
        go("/", null);
        document.getElementById("notice").textContent = "Deleted “" + book.title + "”.";
      } catch (err) {
        refuse("Delete", err);
        focus(refusal);
      }
    } }, "Yes, delete “" + book.title + "”");
    const remove = h("button", { type: "button", class: "danger", "data-testid": "delete", onclick: () => {
      confirmDelete.hidden = false;
      confirmDelete.focus();
    } }, "Delete book");
    return h("section", { class: "desk", "aria-labelledby": "desk-title" }, h("h3", { id: "desk-title" }, "At the desk"),
      h("div", { class: "actions" },
        h("a", { class: "button", href: "#/book/" + book.id + "/edit", "data-testid": "edit" }, "Edit"),
        loan ? h("button", { type: "button", "data-testid": "take-back", onclick: () => act("Take back", () => api("POST", "/books/" + book.id + "/return"),
          (l) => "Taken back from " + borrower + (l.fine ? "; fine " + l.fine.toFixed(2) : "") + ".") }, "Take back") : null,
        remove, confirmDelete),
      loan ? h("p", { "data-testid": "on-loan-to" }, "On loan to ", h("a", { href: "#/members/" + loan.member_id }, borrower), ", due " + formatDate(loan.due_at) + ".") : lend,
      upload("cover"), upload("document"));
  }

  load();
  return {
    changed(seq, book) {
      if (!book || book.id === bookId) load();
    },
    dispose() { alive = false; },
  };
}
