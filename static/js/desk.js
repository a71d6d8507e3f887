// The librarian's desk: members (enrol, payments, roles), loans and holds with their filters, the
// overview with its charts, and imports.

import { api, get, isAtLeast, session } from "./api.js";
import { $, feedback, field, focus, formatDate, h, money, s, showFieldErrors, put, remember } from "./dom.js";
import { memberName, titleOf } from "./member.js";

function table(caption, heads, rows, empty) {
  if (!rows.length) return h("p", { class: "note" }, empty);
  return h("table", { class: "list" }, h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows));
}

function pager(data, page, turn) {
  if (data.pages <= 1) return null;
  return h("nav", { class: "pager", "aria-label": "Pages" },
    h("button", { type: "button", disabled: page <= 1, onclick: () => turn(page - 1) }, "‹ Previous"),
    h("span", {}, "Page " + page + " of " + data.pages),
    h("button", { type: "button", disabled: page >= data.pages, onclick: () => turn(page + 1) }, "Next ›"));
}

const name = (m) => m.first_name + " " + m.last_name;

// -- members ------------------------------------------------------------------------------------

export function membersView(root, params, go) {
  let alive = true;
  const q = params.get("q") || "", page = Number(params.get("page") || 1);
  const search = h("input", { type: "search", name: "q", value: q, autocomplete: "off", "data-testid": "member-search" });
  const list = h("div", {});
  const status = h("p", { class: "result", role: "status", "data-testid": "result" });

  const enrol = { first_name: h("input", { name: "first_name", required: true }), last_name: h("input", { name: "last_name", required: true }),
    email: h("input", { name: "email", type: "email", required: true }) };
  const error = h("p", { class: "error", role: "alert", "data-testid": "form-error" });
  const form = h("form", { class: "card form", novalidate: true, "aria-labelledby": "enrol-title" }, h("h3", { id: "enrol-title" }, "Enrol a member"),
    field("First name", enrol.first_name), field("Last name", enrol.last_name), field("Email", enrol.email),
    h("button", { type: "submit", "data-testid": "enrol" }, "Enrol"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      const member = await api("POST", "/members", Object.fromEntries(Object.entries(enrol).map(([k, v]) => [k, v.value.trim()])));
      showFieldErrors(form, {});
      for (const input of Object.values(enrol)) input.value = "";
      go("/members/" + member.id, null);
      $("notice").textContent = "Enrolled " + name(member) + ".";
    } catch (err) {
      error.textContent = err.message;
      focus(showFieldErrors(form, err.errors) || error);
    }
  });

  async function load() {
    const p = new URLSearchParams({ page: String(page), limit: "20" });
    if (q) p.set("q", q);
    try {
      const data = await get("/members?" + p);
      if (!alive) return;
      put(list, h("p", { class: "summary" }, data.total + (data.total === 1 ? " member" : " members")),
        table("Members", ["Name", "Email", "Role", "On loan", "Fines due"], data.members.map((m) => h("tr", { "data-testid": "member", "data-id": m.id },
          h("td", {}, h("a", { href: "#/members/" + m.id }, name(m))), h("td", { "data-label": "Email" }, m.email), h("td", { "data-label": "Role" }, m.role),
          h("td", { "data-label": "On loan" }, String(m.loans.length)), h("td", { "data-label": "Fines due" }, money(m.fines_due)))), "No member matches."),
        pager(data, page, (n) => go("/members", new URLSearchParams({ ...(q ? { q } : {}), page: String(n) }))));
    } catch (err) {
      put(list, h("p", { class: "error" }, err.message));
    }
  }
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => go("/members", search.value.trim() ? new URLSearchParams({ q: search.value.trim() }) : null, { replace: true, focus: false }), 300);
  });
  put(root, h("h2", { id: "view-title" }, "Members"),
    h("form", { role: "search", class: "controls narrow", onsubmit: (e) => e.preventDefault() }, h("label", {}, "Find a member", search)),
    status, list, form);
  load();
  return { changed() { load(); }, dispose() { alive = false; clearTimeout(timer); } };
}

export function memberView(root, memberId) {
  let alive = true;
  const { status, refusal, act } = feedback(() => load());

  async function load() {
    let member, loans;
    try {
      [member, loans] = await Promise.all([get("/members/" + memberId), get("/loans?limit=100&sort_by=-borrowed_at&member_id=" + memberId)]);
    } catch (err) {
      if (!alive) return;
      put(root, h("h2", { id: "view-title" }, "Member"), h("p", { class: "error" }, err.message));
      return;
    }
    const rows = await Promise.all(loans.loans.map(async (loan) => h("tr", { "data-testid": "loan", "data-id": loan.id },
      h("td", {}, h("a", { href: "#/book/" + loan.book_id }, await titleOf(loan.book_id))),
      h("td", { "data-label": "Borrowed" }, formatDate(loan.borrowed_at)), h("td", { "data-label": "Due" }, formatDate(loan.due_at)),
      h("td", { "data-label": "Status" }, loan.status), h("td", { "data-label": "Fine", "data-testid": "fine" }, money(loan.fine)),
      h("td", {}, loan.returned_at ? "" : h("button", { type: "button", "data-testid": "take-back", onclick: () => act("Take back",
        () => api("POST", "/books/" + loan.book_id + "/return"), (l) => "Taken back" + (l.fine ? " with a fine of " + money(l.fine) : "") + ".") }, "Take back")))));
    if (!alive) return;

    const amount = h("input", { name: "amount", inputmode: "decimal", "data-testid": "amount", value: member.fines_due ? money(member.fines_due) : "" });
    const pay = h("form", { class: "inline", "aria-label": "Record a payment" }, field("Amount paid", amount),
      h("button", { type: "submit", "data-testid": "record-payment" }, "Record payment"));
    pay.addEventListener("submit", (e) => {
      e.preventDefault();
      act("Record payment", () => api("POST", "/members/" + memberId + "/payments", { amount: Number(amount.value) }),
        (r) => "Payment of " + money(r.amount) + " recorded; " + money(r.fines_due) + " still due.");
    });

    let roleForm = null;
    if (isAtLeast("admin")) {
      const role = h("select", { name: "role", "data-testid": "role-choice" }, ["member", "librarian", "admin"].map((r) => h("option", { value: r, selected: r === member.role }, r)));
      roleForm = h("form", { class: "inline", "aria-label": "Change the role" }, field("Role", role),
        h("button", { type: "submit", "data-testid": "change-role" }, "Change role"));
      roleForm.addEventListener("submit", (e) => {
        e.preventDefault();
        act("Change role", () => api("PATCH", "/members/" + memberId, { first_name: member.first_name, last_name: member.last_name, role: role.value }),
          (m) => name(m) + " is now " + m.role + ".");
      });
    }
    const restore = remember(root);
    put(root,
      h("p", {}, h("a", { href: "#/members" }, "‹ Members")),
      h("h2", { id: "view-title", "data-testid": "member-name" }, name(member)),
      h("p", {}, member.email, " · ", h("span", { "data-testid": "member-role" }, member.role), " · member since ", formatDate(member.created_at)),
      h("p", { class: "fines", "data-testid": "fines-due" }, "Fines due: ", h("strong", {}, money(member.fines_due))),
      status, refusal, h("div", { class: "actions" }, pay, roleForm),
      h("h3", {}, "Loans"), table("Loans", ["Book", "Borrowed", "Due", "Status", "Fine", ""], rows, "No loans."));
    restore();
  }
  load();
  return { changed() { load(); }, dispose() { alive = false; } };
}

// -- loans and holds ------------------------------------------------------------------------------

function filteredList(root, params, go, opts) {
  let alive = true;
  const state = Object.fromEntries(opts.filters.map(([key]) => [key, params.get(key) || ""]));
  const page = Number(params.get("page") || 1);
  const inputs = [];
  const controls = opts.filters.map(([key, label, choices]) => {
    const control = choices
      ? h("select", { name: key, "data-testid": "filter-" + key }, choices.map(([v, l]) => h("option", { value: v, selected: v === state[key] }, l)))
      : h("input", { name: key, value: state[key], inputmode: "numeric", "data-testid": "filter-" + key });
    control.addEventListener("change", () => {
      const p = new URLSearchParams();
      for (const input of inputs) if (input.value.trim()) p.set(input.name, input.value.trim());
      go(opts.path, p, { replace: false, focus: false });
    });
    inputs.push(control);
    return h("label", {}, label, control);
  });
  const list = h("div", {});
  async function load() {
    const p = new URLSearchParams({ page: String(page), limit: "25", ...Object.fromEntries(Object.entries(state).filter(([, v]) => v)) });
    try {
      const data = await get(opts.api + "?" + p);
      const rows = await Promise.all(data[opts.key].map(opts.row));
      if (!alive) return;
      put(list, h("p", { class: "summary", "data-testid": "count" }, String(data.total), " ", opts.key),
        table(opts.title, opts.heads, rows, "Nothing matches."),
        pager(data, page, (n) => { p.set("page", String(n)); p.delete("limit"); go(opts.path, p); }));
    } catch (err) {
      if (alive) put(list, h("p", { class: "error", role: "alert" }, err.message));
    }
  }
  const title = state.status === "overdue" ? "Overdue loans" : opts.title;
  put(root, h("h2", { id: "view-title" }, title), h("form", { class: "controls", onsubmit: (e) => e.preventDefault() }, controls), list);
  load();
  return { changed() { load(); }, dispose() { alive = false; } };
}

export function loansView(root, params, go) {
  return filteredList(root, params, go, {
    path: "/loans", api: "/loans", key: "loans", title: "Loans",
    filters: [["status", "Status", [["", "All"], ["active", "On loan"], ["overdue", "Overdue"], ["returned", "Returned"]]],
      ["member_id", "Member number"], ["book_id", "Book number"],
      ["sort_by", "Sort by", [["", "Oldest first"], ["-borrowed_at", "Newest first"], ["due_at", "Due soonest"]]]],
    heads: ["Book", "Member", "Borrowed", "Due", "Status", "Fine"],
    row: async (loan) => h("tr", { "data-testid": "loan", "data-id": loan.id },
      h("td", {}, h("a", { href: "#/book/" + loan.book_id }, await titleOf(loan.book_id))),
      h("td", { "data-label": "Member" }, h("a", { href: "#/members/" + loan.member_id }, await memberName(loan.member_id))),
      h("td", { "data-label": "Borrowed" }, formatDate(loan.borrowed_at)), h("td", { "data-label": "Due" }, formatDate(loan.due_at)),
      h("td", { "data-label": "Status" }, loan.status), h("td", { "data-label": "Fine" }, money(loan.fine))),
  });
}

export function holdsView(root, params, go) {
  return filteredList(root, params, go, {
    path: "/holds", api: "/holds", key: "holds", title: "Holds",
    filters: [["status", "Status", [["", "All"], ["active", "Waiting or kept"], ["waiting", "Waiting"], ["ready", "Kept"], ["fulfilled", "Fulfilled"], ["cancelled", "Cancelled"], ["expired", "Expired"]]],
      ["member_id", "Member number"], ["book_id", "Book number"]],
    heads: ["Book", "Member", "Placed", "Status", "Place"],
    row: async (hold) => h("tr", { "data-testid": "hold", "data-id": hold.id },
      h("td", {}, h("a", { href: "#/book/" + hold.book_id }, await titleOf(hold.book_id))),
      h("td", { "data-label": "Member" }, h("a", { href: "#/members/" + hold.member_id }, await memberName(hold.member_id))),
      h("td", { "data-label": "Placed" }, formatDate(hold.created_at)),
      h("td", { "data-label": "Status" }, hold.status === "ready" ? "kept until " + formatDate(hold.expires_at) : hold.status),
      h("td", { "data-label": "Place" }, hold.position === null || hold.position === undefined ? "—" : String(hold.position))),
  });
}

// -- the overview ---------------------------------------------------------------------------------

/** A bar chart in SVG: ``items`` are [label, value]; the numbers are in the markup for screen readers too. */
function barChart(title, items, horizontal) {
  const max = Math.max(1, ...items.map(([, v]) => v));
  const id = "chart-" + title.replace(/\W+/g, "-").toLowerCase();
  if (horizontal) {
    const rowH = 26, labelW = 220, width = 560, height = items.length * rowH + 4;
    return h("figure", { class: "chart", "data-testid": id }, h("figcaption", { id: id + "-t" }, title),
      s("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-labelledby": id + "-t", preserveAspectRatio: "xMinYMin meet" },
        items.map(([label, value], i) => s("g", {},
          s("title", {}, label + ": " + value),
          s("text", { x: 0, y: i * rowH + 17, class: "label" }, label.length > 30 ? label.slice(0, 29) + "…" : label),
          s("rect", { x: labelW, y: i * rowH + 4, height: rowH - 8, width: Math.max(2, (value / max) * (width - labelW - 40)), class: "bar" }),
          s("text", { x: labelW + Math.max(2, (value / max) * (width - labelW - 40)) + 6, y: i * rowH + 17, class: "value" }, String(value))))));
  }
  const width = 560, height = 200, gap = 6, barW = (width - gap * items.length) / Math.max(1, items.length), plot = 160;
  return h("figure", { class: "chart", "data-testid": id }, h("figcaption", { id: id + "-t" }, title),
    s("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-labelledby": id + "-t" },
      items.map(([label, value], i) => {
        const barH = (value / max) * (plot - 16);
        const x = i * (barW + gap);
        return s("g", {}, s("title", {}, label + ": " + value),
          s("rect", { x, y: plot - barH, width: barW, height: Math.max(1, barH), class: "bar" }),
          s("text", { x: x + barW / 2, y: plot - barH - 4, class: "value", "text-anchor": "middle" }, String(value)),
          s("text", { x: x + barW / 2, y: plot + 18, class: "label", "text-anchor": "middle" }, label));
      })));
}

export function overviewView(root) {
  let alive = true;
  async function load() {
    let stats;
    try {
      stats = await get("/stats");
    } catch (err) {
      if (alive) put(root, h("h2", { id: "view-title" }, "Overview"), h("p", { class: "error", role: "alert" }, err.message));
      return;
    }
    if (!alive) return;
    const tiles = [["Books", stats.books], ["Members", stats.members], ["On loan", stats.active_loans],
      ["Overdue now", stats.overdue_now], ["Holds waiting", stats.holds_waiting]];
    const weeks = (stats.loans_per_week || []).map((w) => [new Date(w.week + "T00:00:00Z").toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" }), w.loans]);
    const top = (stats.most_borrowed || []).map((b) => [b.title, b.loans]);
    const overdue = (stats.overdue || []).map((o) => h("tr", { "data-testid": "overdue" },
      h("td", {}, h("a", { href: "#/book/" + o.book_id }, o.title)),
      h("td", { "data-label": "Member" }, h("a", { href: "#/members/" + o.member_id }, o.member_name)),
      h("td", { "data-label": "Due" }, formatDate(o.due_at)), h("td", { "data-label": "Days late" }, String(o.days_overdue))));
    put(root, h("h2", { id: "view-title" }, "Overview"),
      h("ul", { class: "tiles" }, tiles.map(([label, value]) => h("li", { "data-testid": "tile" }, h("strong", {}, String(value)), h("span", {}, label)))),
      h("div", { class: "charts" }, barChart("Loans per week", weeks, false),
        top.length ? barChart("Most borrowed", top, true) : h("p", { class: "note" }, "No loans yet.")),
      h("h3", {}, "Overdue now"),
      table("Overdue now", ["Book", "Member", "Due", "Days late"], overdue, "Nothing is overdue."));
  }
  load();
  return { changed() { load(); }, dispose() { alive = false; } };
}

// -- import ---------------------------------------------------------------------------------------

export function importView(root) {
  const file = h("input", { type: "file", name: "file", accept: ".csv,.tsv,.txt,.json", "data-testid": "import-file", required: true });
  const dry = h("input", { type: "checkbox", name: "dry_run", "data-testid": "dry-run" });
  const report = h("section", { "aria-live": "polite", "data-testid": "import-report" });
  const form = h("form", { class: "card form" },
    h("p", {}, "A Goodreads export (CSV), a LibraryThing export (TSV), or this library's CSV or JSON."),
    field("Export file", file), h("label", { class: "check" }, dry, " Only check it (change nothing)"),
    h("button", { type: "submit", class: "primary", "data-testid": "import" }, "Import"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file.files.length) {
      put(report, h("p", { class: "error", role: "alert" }, "Choose a file first."));
      return focus(file);
    }
    const data = new FormData();
    data.append("file", file.files[0]);
    data.append("dry_run", dry.checked ? "true" : "false");
    put(report, h("p", {}, "Importing " + file.files[0].name + "…"));
    try {
      const r = await api("POST", "/imports", data);
      const counts = [["created", r.created], ["updated", r.updated], ["unchanged", r.unchanged], ["merged", r.merged], ["skipped", r.skipped], ["warnings", r.warnings]];
      put(report,
        h("h3", { id: "report-title" }, (r.dry_run ? "Checked " : "Imported ") + r.file + " (" + (r.format_name || r.format) + ", " + r.rows + " rows)"),
        h("ul", { class: "tiles" }, counts.map(([k, v]) => h("li", { "data-testid": "count-" + k }, h("strong", {}, String(v)), h("span", {}, k)))),
        r.lines && r.lines.length ? h("ul", { class: "report-lines", "data-testid": "report-lines" }, r.lines.map((l) => h("li", {}, "line " + l.line + ": " + l.text))) : null,
        r.unchanged_lines ? h("p", {}, "Unchanged lines: " + r.unchanged_lines) : null);
    } catch (err) {
      put(report, h("h3", { id: "report-title" }, "Not imported"), h("p", { class: "error", role: "alert", "data-testid": "import-error" }, err.message));
    }
    focus(report.querySelector("h3"));
  });
  put(root, h("h2", { id: "view-title" }, "Import books"), form, report);
  return { changed() {}, dispose() {} };
}
