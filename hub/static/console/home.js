// The console's first page: today's sessions, and where the rest is.
import { api, dateTime, h, main, run, status } from "./common.js";

function startOfToday() {
  const now = new Date();
  return new Date(now.getFullYear(), now.getMonth(), now.getDate()).toISOString();
}

run(async () => {
  const page = await api(`/sessions?limit=50&created_after=${encodeURIComponent(startOfToday())}`);
  status("");
  const rows = page.items.map((s) => h("tr", {},
    h("td", {}, dateTime(s.created_at)),
    h("td", {}, s.child_name),
    h("td", {}, s.child_ref ?? "—"),
    h("td", {}, s.ended_at ? "ended" : s.mirror_connected_at ? "live" : "waiting for the mirror"),
    h("td", {}, h("a", { href: `/console/sessions/${s.id}` }, "Report"), " · ",
      h("a", { href: `/console/live/${s.id}` }, "Live view"))));
  main().append(
    h("section", { class: "notice" },
      h("h2", {}, "Live sessions"),
      h("p", {}, "The lobby of live sessions is not built yet. Open a session's live view from ",
        "the list below or from the ", h("a", { href: "/console/sessions" }, "session history"), ".")),
    h("h2", {}, "Today's sessions"),
    rows.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["Started", "Child", "Reference", "State", ""]
        .map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows))
      : h("p", {}, "No sessions today yet."));
});
