// A sparkline in plain SVG: presentation attributes only, so the strict CSP (no inline
// style) holds.
const NS = "http://www.w3.org/2000/svg";
const WIDTH = 80;
const HEIGHT = 28;
const COLOURS = { good: "#0a6b2c", poor: "#9c2200", "": "#0b57d0" };

export function sparkline(values, verdict) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("width", String(WIDTH));
  svg.setAttribute("height", String(HEIGHT));
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "spark");
  if (values.length < 2) return svg;
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || 1;
  const step = WIDTH / (values.length - 1);
  const points = values.map((v, i) =>
    `${(i * step).toFixed(1)},${(HEIGHT - 2 - ((v - low) / span) * (HEIGHT - 4)).toFixed(1)}`);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", COLOURS[verdict] ?? COLOURS[""]);
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  return svg;
}
