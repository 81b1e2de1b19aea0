// uPlot charts (the vendored build, loaded before this module as the global `uPlot`).
import { number } from "./common.js";

const LINE = "#0b57d0";
const GOOD_BAND = "rgba(10, 107, 44, 0.10)";
const MARK = "#6b4f00";

/** A chart of one metric: x in seconds since the epoch, y as shown (scaled), the good range
 * shaded, and `marks` (task starts, seconds) drawn as labelled vertical lines. */
export function metricChart(container, catalogue, name, { width = 420, height = 180, points = false } = {}) {
  const marks = [];
  const range = catalogue.info(name)?.good_range ?? null;
  const decimals = catalogue.decimals(name);
  const unit = catalogue.unit(name);
  const drawExtras = (u) => {
    const { ctx } = u;
    const { left, top, width: w, height: hgt } = u.bbox;
    ctx.save();
    if (range) {
      const y0 = u.valToPos(range[1], "y", true);
      const y1 = u.valToPos(range[0], "y", true);
      const yTop = Math.max(top, Math.min(y0, y1));
      const yBottom = Math.min(top + hgt, Math.max(y0, y1));
      if (yBottom > yTop) {
        ctx.fillStyle = GOOD_BAND;
        ctx.fillRect(left, yTop, w, yBottom - yTop);
      }
    }
    ctx.strokeStyle = MARK;
    ctx.fillStyle = MARK;
    ctx.lineWidth = 1;
    ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
    for (const mark of marks) {
      const x = u.valToPos(mark.t, "x", true);
      if (x < left || x > left + w) continue;
      ctx.beginPath();
      ctx.setLineDash([4, 3]);
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + hgt);
      ctx.stroke();
      ctx.fillText(mark.label, x + 3, top + 12 * devicePixelRatio);
    }
    ctx.restore();
  };
  const options = {
    width,
    height,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [
      {}, // uPlot's own time axis: its labels fit the span shown
      { values: (u, ticks) => ticks.map((v) => number(v, decimals)), label: unit || undefined, size: 60 },
    ],
    series: [{}, { label: catalogue.label(name), stroke: LINE, width: 1.5, points: { show: points, size: 7 } }],
    hooks: { draw: [drawExtras] },
  };
  const plot = new uPlot(options, [[], []], container);
  return {
    plot,
    marks,
    setData(xs, ys) { plot.setData([xs, ys]); },
    mark(t, label) { marks.push({ t, label }); },
  };
}
