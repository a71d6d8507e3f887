// A member's own page: loans with due dates and the fine so far, holds with the queue position,
// fines due; renew, return and cancel from here.

import { api, get, session } from "./api.js";
import { feedback, formatDate, h, money, put, remember } from "./dom.js";

const titles = new Map();

export async function titleOf(bookId) {
  if (!titles.has(bookId)) {
    try {
      titles.set(bookId, (await get("/books/" + bookId)).title);
    } catch (err) {
      return "Book " + bookId;
    }
  }
  return titles.get(bookId);
}

const names = new Map();

/** A member's name, for a librarian's lists (asked once per member). */
export async function memberName(memberId) {
  if (!names.has(memberId)) {
    try {
      const member = await get("/members/" + memberId);
      names.set(memberId, member.first_name + " " + member.last_name);
    } catch (err) {
      return "member " + memberId;
    }
  }
  return names.get(memberId);
}

export function myView(root) {
  let alive = true;
  const { status, refusal, act } = feedback(() => load());

  async function load() {
    const me = session.me;
    let who, loans, holds;
    try {
      [who, loans, holds] = await Promise.all([get("/members/me"), get("/loans?status=active&limit=100&member_id=" + me.id),
        get("/holds?status=active&limit=100&member_id=" + me.id)]);
    } catch (err) {
      refusal.textContent = err.message;
      return;
    }
    if (!alive) return;
    for (const loan of who.loans) titles.set(loan.book_id, loan.title);
    const loanRows = await Promise.all(loans.loans.map(async (loan) => h("tr", { "data-testid": "loan", "data-id": loan.id },
      h("td", { "data-label": "" }, h("a", { href: "#/book/" + loan.book_id }, await titleOf(loan.book_id))),
      h("td", { "data-label": "Due" }, formatDate(loan.due_at), loan.status === "overdue" ? h("span", { class: "badge checked_out" }, " overdue") : null),
      h("td", { "data-label": "Fine so far", "data-testid": "fine" }, money(loan.fine)),
      h("td", {}, h("button", { type: "button", "data-testid": "renew", onclick: () => act("Renew", () => api("POST", "/loans/" + loan.id + "/renew"), (l) => "Renewed: now due " + formatDate(l.due_at) + ".") }, "Renew"),
        " ", h("button", { type: "button", "data-testid": "return", onclick: () => act("Return", () => api("POST", "/books/" + loan.book_id + "/return"), (l) => "Returned" + (l.fine ? " with a fine of " + money(l.fine) : "") + ".") }, "Return")))));
    const holdRows = await Promise.all(holds.holds.map(async (hold) => h("tr", { "data-testid": "hold", "data-id": hold.id },
      h("td", {}, h("a", { href: "#/book/" + hold.book_id }, await titleOf(hold.book_id))),
      h("td", { "data-testid": "hold-state" }, hold.status === "ready" ? "Kept for you until " + formatDate(hold.expires_at) : "Number " + hold.position + " in the queue"),
      h("td", {}, h("button", { type: "button", "data-testid": "cancel-hold", onclick: () => act("Cancel hold", () => api("DELETE", "/holds/" + hold.id), () => "Hold cancelled.") }, "Cancel hold")))));
    if (!alive) return;
    const restore = remember(root);
    put(root,
      h("h2", { id: "view-title" }, "My loans"),
      h("p", { class: "fines", "data-testid": "fines-due" }, "Fines due: ", h("strong", {}, money(who.fines_due))),
      status, refusal,
      loanRows.length ? h("table", { class: "list" }, h("caption", {}, "On loan"), h("thead", {}, h("tr", {}, ["Book", "Due", "Fine so far", "Actions"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, loanRows))
        : h("p", { "data-testid": "no-loans" }, "You have no books on loan. ", h("a", { href: "#/" }, "Find one in the catalogue.")),
      h("h3", {}, "My holds"),
      holdRows.length ? h("table", { class: "list" }, h("caption", { class: "visually-hidden" }, "Holds"), h("thead", {}, h("tr", {}, ["Book", "Place", "Actions"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, holdRows))
        : h("p", {}, "No holds."));
    restore();
  }

  load();
  return { changed() { load(); }, dispose() { alive = false; } };
}
