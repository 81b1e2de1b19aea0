// A child's progress across visits: per exercise, each metric's session mean, visit by visit,
// against the catalogue's good range.
import { metricChart } from "./charts.js";
import { api, Catalogue, date, h, main, number, run, status, valueCell } from "./common.js";

const childRef = decodeURIComponent(location.pathname.split("/").pop());

run(async () => {
  const [catalogue, progress] = await Promise.all([
    Catalogue.load(), api(`/children/${encodeURIComponent(childRef)}/progress`),
  ]);
  status("");
  document.title = `Progress: ${childRef} · Mirror Hub console`;
  main().querySelector("h1").textContent = `Progress of ${childRef}`;
  const visits = [...new Map(progress.points.map((p) => [p.session_id, p.created_at])).entries()];
  main().append(h("p", {},
    `${number(progress.sessions)} session${progress.sessions === 1 ? "" : "s"}; `,
    h("a", { href: `/console/sessions?child=${encodeURIComponent(childRef)}` }, "list them"), "."));
  if (!progress.points.length) {
    main().append(h("p", {}, "No exercise of this child has streamed measurements yet."));
  }
  const byTask = new Map();
  for (const p of progress.points) {
    if (!byTask.has(p.task_name)) byTask.set(p.task_name, new Map());
    const metrics = byTask.get(p.task_name);
    if (!metrics.has(p.metric)) metrics.set(p.metric, new Map());
    metrics.get(p.metric).set(p.session_id, p);
  }
  for (const [task, metrics] of [...byTask.entries()].sort()) {
    const names = [...metrics.keys()].sort();
    const section = h("section", { class: "task", "data-task": task }, h("h2", {}, task));
    section.append(h("table", {},
      h("caption", { class: "sr" }, `${task}: the average of each measure, per visit`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Visit"),
        ...names.map((n) => h("th", { scope: "col", class: "num" }, catalogue.label(n))))),
      h("tbody", {}, visits.filter(([id]) => names.some((n) => metrics.get(n).has(id))).map(([id, created]) =>
        h("tr", { "data-session": id },
          h("th", { scope: "row" }, h("a", { href: `/console/sessions/${id}` }, date(created))),
          ...names.map((n) => {
            const p = metrics.get(n).get(id);
            if (!p) return h("td", { class: "num" }, "—");
            const cell = valueCell(catalogue, n, p.mean);
            cell.dataset.metric = n;
            cell.dataset.value = String(p.mean);
            return cell;
          })))),
      h("tfoot", {}, h("tr", {}, h("th", { scope: "row" }, "Good range"),
        ...names.map((n) => h("td", { class: "num" }, catalogue.rangeText(n) || "—"))))));
    const grid = h("div", { class: "charts" });
    section.append(grid);
    for (const name of names) {
      const points = [...metrics.get(name).values()];
      const box = h("div", { class: "chart", "data-metric": name },
        h("h3", {}, `${catalogue.label(name)}, average per visit`));
      grid.append(box);
      const chart = metricChart(box, catalogue, name, { height: 160, points: true });
      chart.setData(points.map((p) => Date.parse(p.created_at) / 1000), points.map((p) => catalogue.shown(name, p.mean)));
    }
    main().append(section);
  }
  document.body.dataset.ready = "true";
});
