// The loss chart: an SVG drawn by hand from the curves of scale.curves(). The element
// carries how many points each curve has (data-train-points, data-valid-points) so a test,
// or a curious reader of the DOM, can count them.

import { s } from "./dom.js";
import { curves, extent, linear, path, ticks } from "./scale.js";

const WIDTH = 720;
const HEIGHT = 280;
const MARGIN = { top: 34, right: 20, bottom: 36, left: 56 };

const SERIES = [
  { key: "train", label: "train loss", className: "train", dots: false },
  { key: "valid", label: "validation loss", className: "valid", dots: true },
  { key: "fullValid", label: "full validation loss", className: "full-valid", dots: true },
];

export class LossChart {
  constructor() {
    this.svg = s("svg", {
      class: "loss-chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
      "aria-label": "Training and validation loss by step",
    });
    this.update([]);
  }

  /** Redraws from the job's events (all of them so far, oldest first). */
  update(events) {
    const c = curves(events);
    const points = SERIES.flatMap(({ key }) => c[key]);
    const plotted = points.length > 0;
    const [x0, x1] = plotted ? [Math.min(0, ...points.map((p) => p[0])),
      Math.max(c.totalSteps ?? 0, ...points.map((p) => p[0]))] : [0, c.totalSteps ?? 10];
    const [y0, y1] = extent(points.map((p) => p[1]));
    const yLow = Math.max(0, y0 - (y1 - y0) * 0.05);
    const x = linear([x0, x1 || 1], [MARGIN.left, WIDTH - MARGIN.right]);
    const y = linear([yLow, y1], [HEIGHT - MARGIN.bottom, MARGIN.top]);

    this.svg.replaceChildren(
      ...this.axes(x, y, [x0, x1 || 1], [yLow, y1]),
      ...SERIES.flatMap((series) => this.line(series, c[series.key], x, y)),
      plotted ? this.legend(c) : s("text", {
        x: WIDTH / 2, y: HEIGHT / 2, class: "empty", "text-anchor": "middle",
      }, "No metrics yet"),
    );
    this.svg.dataset.trainPoints = c.train.length;
    this.svg.dataset.validPoints = c.valid.length;
    this.svg.dataset.fullValidPoints = c.fullValid.length;
    this.svg.dataset.step = c.step;
    return c;
  }

  axes(x, y, xDomain, yDomain) {
    const out = [];
    for (const t of ticks(...yDomain, 5)) {
      out.push(s("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right,
        y1: y(t), y2: y(t) }));
      out.push(s("text", { class: "tick", x: MARGIN.left - 6, y: y(t) + 4,
        "text-anchor": "end" }, Number(t.toPrecision(3))));
    }
    for (const t of ticks(...xDomain, 6).filter(Number.isInteger)) {
      out.push(s("text", { class: "tick", x: x(t), y: HEIGHT - MARGIN.bottom + 16,
        "text-anchor": "middle" }, t));
    }
    out.push(s("text", { class: "axis-label", x: (MARGIN.left + WIDTH - MARGIN.right) / 2,
      y: HEIGHT - 4, "text-anchor": "middle" }, "step"));
    out.push(s("line", { class: "axis", x1: MARGIN.left, x2: WIDTH - MARGIN.right,
      y1: HEIGHT - MARGIN.bottom, y2: HEIGHT - MARGIN.bottom }));
    out.push(s("line", { class: "axis", x1: MARGIN.left, x2: MARGIN.left,
      y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }));
    return out;
  }

  line({ className, dots }, points, x, y) {
    if (points.length === 0) return [];
    const out = [s("path", { class: `curve ${className}`, d: path(points, x, y) })];
    if (dots || points.length === 1) {
      for (const [px, py] of points) {
        out.push(s("circle", { class: `dot ${className}`, cx: x(px), cy: y(py), r: 3 },
          s("title", {}, `step ${px}: ${py.toPrecision(4)}`)));
      }
    }
    return out;
  }

  legend(c) {
    const shown = SERIES.filter(({ key }) => c[key].length > 0);
    return s("g", { class: "legend" }, shown.map(({ label, className }, i) => s("g", {
      transform: `translate(${MARGIN.left + 12 + i * 170}, 14)`, // above the plot
    }, s("line", { class: `curve ${className}`, x1: 0, x2: 18, y1: 0, y2: 0 }),
    s("text", { class: "legend-label", x: 24, y: 4 }, label))));
  }
}
