// A session's report: per task results, completeness in words, charts from the stored frames,
// print-friendly, with the exports.
import { metricChart } from "./charts.js";
import {
  api, Catalogue, dateTime, duration, h, main, number, pageToken, run, status, STATUS_WORDS, valueCell,
} from "./common.js";

const sessionId = decodeURIComponent(location.pathname.split("/").pop());
const STATS = ["count", "min", "mean", "max", "last"];
// Charts at full rate up to this many points; longer sessions are averaged by the hub.
const FULL_RATE_POINTS = 3000;
const CHART_POINTS = 1500;

function metricTable(catalogue, metrics, taskKey) {
  const names = Object.keys(metrics).sort();
  if (!names.length) return h("p", {}, "No measurements were streamed for this.");
  return h("table", { class: "metrics" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Measure"),
      ...["Samples", "Lowest", "Average", "Highest", "Last"].map((t) => h("th", { scope: "col", class: "num" }, t)),
      h("th", { scope: "col" }, "Good range"))),
    h("tbody", {}, names.map((name) => {
      const m = metrics[name];
      return h("tr", { "data-task": taskKey, "data-metric": name },
        h("th", { scope: "row" }, catalogue.label(name)),
        ...STATS.map((stat) => {
          const cell = stat === "count"
            ? h("td", { class: "num" }, number(m.count))
            : valueCell(catalogue, name, m[stat]);
          cell.dataset.stat = stat;
          cell.dataset.value = String(m[stat]);
          return cell;
        }),
        h("td", {}, catalogue.rangeText(name) || "—"));
    })));
}

function storedWords(c) {
  if (!c.frames_stored) return "No frames were stored for this session.";
  if (!c.missing_count) {
    return `All ${number(c.frames_stored)} frames the mirror sent were stored; none is missing.`;
  }
  return `${number(c.frames_stored)} of ${number(c.last_seq)} frames were stored; ` +
    `${number(c.missing_count)} never reached the hub.`;
}

function completenessWords(c) {
  const lost = c.mirror_disconnections;
  if (!lost) return storedWords(c);
  const times = lost === 1 ? "once" : `${number(lost)} times`;
  return `${storedWords(c)} The mirror's connection was lost ${times} and made again.`;
}

function completeness(report) {
  const c = report.completeness;
  const disconnections = c.mirror_disconnections === null || c.mirror_disconnections === undefined
    ? "not counted (recorded by an older hub version)"
    : number(c.mirror_disconnections);
  return h("section", { id: "completeness" },
    h("h2", {}, "Completeness"),
    h("p", { id: "completeness-words" }, completenessWords(c)),
    h("details", {}, h("summary", {}, "Details"),
      h("dl", { class: "facts" },
        h("dt", {}, "Frames stored"), h("dd", {}, number(c.frames_stored)),
        h("dt", {}, "Sequence range"), h("dd", {}, c.first_seq === null ? "—" : `${c.first_seq}–${c.last_seq}`),
        h("dt", {}, "Missing sequence numbers"),
        h("dd", {}, c.missing_ranges.length ? c.missing_ranges.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ") : "none"),
        h("dt", {}, "Mirror disconnections"), h("dd", {}, disconnections))));
}

async function download(path, filename, button) {
  button.disabled = true;
  try {
    const { token } = await pageToken();
    const response = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    status(`Could not download: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function exportsBar() {
  const csv = h("button", { type: "button", id: "export-csv" }, "Download frames (CSV)");
  const fhir = h("button", { type: "button", id: "export-fhir" }, "Download for the health record (FHIR)");
  csv.addEventListener("click", () => download(`/sessions/${sessionId}/frames.csv`, `session-${sessionId}.csv`, csv));
  fhir.addEventListener("click", () => download(`/sessions/${sessionId}/fhir`, `session-${sessionId}.fhir.json`, fhir));
  const print = h("button", { type: "button", onclick: () => window.print() }, "Print");
  return h("p", { class: "exports" }, csv, " ", fhir, " ", print);
}

async function charts(catalogue, report, section) {
  const names = new Set(Object.keys(report.outside_tasks));
  for (const task of report.tasks) Object.keys(task.metrics).forEach((n) => names.add(n));
  if (!names.size) return;
  const start = Date.parse(report.mirror_connected_at || report.created_at);
  const end = report.ended_at ? Date.parse(report.ended_at) : Date.now();
  const frames = report.completeness.frames_stored;
  // Downsampled by the hub (bucket averages) when the full rate would be too many points.
  const bucket = frames > FULL_RATE_POINTS ? Math.max(1, Math.ceil((end - start) / CHART_POINTS)) : 0;
  const grid = h("div", { class: "charts" });
  section.append(h("h2", {}, "Charts"),
    h("p", { class: "hint" }, bucket
      ? `Each point is the average over ${number(bucket / 1000, 1)} s; dashed lines mark the start of each exercise.`
      : "Every stored value; dashed lines mark the start of each exercise."),
    grid);
  for (const name of [...names].sort()) {
    const series = await api(`/sessions/${sessionId}/series?metric=${encodeURIComponent(name)}&bucket_ms=${bucket}`);
    const points = series.points.filter((p) => p.seq !== null);
    const box = h("div", { class: "chart", "data-metric": name, "data-points": points.length },
      h("h3", {}, `${catalogue.label(name)}${catalogue.unit(name) ? ` (${catalogue.unit(name)})` : ""}`));
    grid.append(box);
    const chart = metricChart(box, catalogue, name);
    for (const task of report.tasks) {
      if (task.first_frame_at) chart.mark(Date.parse(task.first_frame_at) / 1000, task.task_name);
    }
    chart.setData(points.map((p) => Date.parse(p.t) / 1000), points.map((p) => catalogue.shown(name, p.value)));
  }
}

run(async () => {
  const [catalogue, session, report] = await Promise.all([
    Catalogue.load(), api(`/sessions/${sessionId}`), api(`/sessions/${sessionId}/report`),
  ]);
  status("");
  document.title = `Report: ${session.child_name} · Mirror Hub console`;
  main().querySelector("h1").textContent = `Session report: ${session.child_name}`;
  const end = report.ended_at ? Date.parse(report.ended_at) : null;
  const start = report.mirror_connected_at ? Date.parse(report.mirror_connected_at) : null;
  main().append(...[
    exportsBar(),
    h("dl", { class: "facts" },
      h("dt", {}, "Child"), h("dd", {}, session.child_name,
        session.child_age === null ? "" : `, ${number(session.child_age)} years`),
      h("dt", {}, "Reference"), h("dd", {}, report.child_ref
        ? h("a", { href: `/console/children/${encodeURIComponent(report.child_ref)}` }, report.child_ref) : "—"),
      h("dt", {}, "Created"), h("dd", {}, dateTime(report.created_at)),
      h("dt", {}, "Mirror connected"), h("dd", {}, report.mirror_connected_at ? dateTime(report.mirror_connected_at) : "never"),
      h("dt", {}, "Ended"), h("dd", {}, report.ended_at ? dateTime(report.ended_at) : "not ended"),
      h("dt", {}, "Length"), h("dd", {}, start && end ? duration((end - start) / 1000) : "—")),
    completeness(report),
    h("h2", {}, "Exercises"),
    report.tasks.length ? null : h("p", {}, "No exercises were recorded."),
    ...report.tasks.map((task) => h("section", { class: "task", "data-task": task.task_id },
      h("h3", {}, `${task.task_name}: ${STATUS_WORDS[task.status] ?? task.status}`),
      h("p", {}, `Duration ${duration(task.duration_seconds)}`),
      metricTable(catalogue, task.metrics, task.task_id))),
    Object.keys(report.outside_tasks).length
      ? h("section", { class: "task", "data-task": "outside" }, h("h3", {}, "Between exercises"),
        metricTable(catalogue, report.outside_tasks, "outside"))
      : null,
  ].filter(Boolean));
  const chartSection = h("section", { id: "charts" });
  main().append(chartSection);
  await charts(catalogue, report, chartSection);
  document.body.dataset.ready = "true";
});
