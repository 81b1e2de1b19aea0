// The console's first page: the lobby of live sessions, then today's sessions.
import { Catalogue, api, dateTime, h, main, run, status } from "./common.js";
import { Lobby } from "./lobby.js";

function startOfToday() {
  const now = new Date();
  return new Date(now.getFullYear(), now.getMonth(), now.getDate()).toISOString();
}

async function todays(section) {
  const page = await api(`/sessions?limit=50&created_after=${encodeURIComponent(startOfToday())}`);
  const rows = page.items.map((s) => h("tr", { "data-session": s.id },
    h("td", {}, dateTime(s.created_at)),
    h("td", {}, s.child_name),
    h("td", {}, s.child_ref ?? "—"),
    h("td", {}, s.ended_at ? "ended" : s.mirror_connected_at ? "live" : "waiting for the mirror"),
    h("td", {}, h("a", { href: `/console/sessions/${s.id}` }, "Report"), " · ",
      h("a", { href: `/console/live/${s.id}` }, "Live view"))));
  section.replaceChildren(
    h("h2", {}, "Today's sessions"),
    rows.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["Started", "Child", "Reference", "State", ""]
        .map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows))
      : h("p", {}, "No sessions today yet."));
}

run(async () => {
  const catalogue = await Catalogue.load();
  const grid = h("ul", { class: "tiles", id: "lobby", "data-count": "0" });
  const news = h("p", { class: "sr", role: "status", id: "lobby-news" });
  const empty = h("p", { class: "hint" }, "No live sessions right now; they appear here as ",
    "soon as a mirror connects.");
  const today = h("section", { id: "today" });
  main().append(h("section", { "aria-labelledby": "live-heading" },
    h("h2", { id: "live-heading" }, "Live sessions"), news, empty, grid), today);
  await todays(today);
  status("");
  // Today's list follows the lobby: reloaded (once per burst) when a session comes or ends.
  let reload = null;
  const lobby = new Lobby(grid, news, catalogue, () => {
    clearTimeout(reload);
    reload = setTimeout(() => todays(today)
      .catch((error) => status(`Could not reload today's sessions: ${error.message}`)), 200);
  });
  // The hint shows only while there is no tile.
  new MutationObserver(() => { empty.hidden = grid.children.length > 0; })
    .observe(grid, { childList: true });
  await lobby.connect();
});
