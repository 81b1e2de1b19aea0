// Session history: by date and by child, with paging on GET /sessions.
import { api, dateTime, h, main, run, status } from "./common.js";

const PAGE = 25;
const params = new URLSearchParams(location.search);
const state = { child: params.get("child") || "", day: params.get("day") || "", cursors: [null] };

function query(cursor) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (state.child) q.set("child_ref", state.child);
  if (state.day) {
    const [y, m, d] = state.day.split("-").map(Number);
    q.set("created_after", new Date(y, m - 1, d).toISOString());
    q.set("created_before", new Date(y, m - 1, d + 1).toISOString());
  }
  if (cursor) q.set("cursor", cursor);
  return `/sessions?${q}`;
}

function stateWords(s) {
  if (s.ended_at) return "ended";
  return s.mirror_connected_at ? "live or interrupted" : "not started";
}

const table = h("tbody", { id: "sessions" });
const pager = h("p", { class: "pager" });
const summary = h("p", { id: "summary", role: "status" });

async function show() {
  const cursor = state.cursors[state.cursors.length - 1];
  status("Loading…");
  const page = await api(query(cursor));
  status("");
  const rows = page.items.map((s) => h("tr", {},
    h("td", {}, dateTime(s.created_at)),
    h("td", {}, s.child_name),
    h("td", {}, s.child_ref
      ? h("a", { href: `/console/children/${encodeURIComponent(s.child_ref)}`,
        title: `Progress of ${s.child_ref}` }, s.child_ref)
      : "—"),
    h("td", {}, stateWords(s)),
    h("td", {}, h("a", { href: `/console/sessions/${s.id}` }, "Report"),
      s.ended_at ? null : [" · ", h("a", { href: `/console/live/${s.id}` }, "Live view")])));
  table.replaceChildren(...rows);
  const n = state.cursors.length;
  summary.textContent = rows.length
    ? `Page ${n}: ${rows.length} session${rows.length === 1 ? "" : "s"}.`
    : "No sessions match.";
  const newer = h("button", { type: "button", disabled: n === 1, onclick: () => { state.cursors.pop(); show(); } }, "Newer");
  const older = h("button", {
    type: "button", disabled: !page.next_cursor,
    onclick: () => { state.cursors.push(page.next_cursor); show(); },
  }, "Older");
  pager.replaceChildren(newer, older);
}

function filters() {
  const child = h("input", { id: "child", name: "child", value: state.child, placeholder: "child-0042", maxlength: 64 });
  const day = h("input", { id: "day", name: "day", type: "date", value: state.day });
  const submit = (event) => {
    event.preventDefault();
    state.child = child.value.trim();
    state.day = day.value;
    state.cursors = [null];
    const q = new URLSearchParams();
    if (state.child) q.set("child", state.child);
    if (state.day) q.set("day", state.day);
    history.replaceState(null, "", `${location.pathname}${q.toString() ? `?${q}` : ""}`);
    show().catch((error) => status(`Could not search: ${error.message}`));
  };
  return h("form", { class: "filters", role: "search", onsubmit: submit },
    h("div", {}, h("label", { for: "child" }, "Child reference"), child),
    h("div", {}, h("label", { for: "day" }, "Day"), day),
    h("button", { type: "submit" }, "Search"));
}

run(async () => {
  main().append(filters(), summary,
    h("table", {}, h("caption", { class: "sr" }, "Sessions, newest first"),
      h("thead", {}, h("tr", {}, ["Started", "Child", "Reference", "State", ""]
        .map((t) => h("th", { scope: "col" }, t)))), table),
    pager);
  await show();
});
