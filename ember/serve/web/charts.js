// Two chart kinds drawn on <canvas> by hand (no library): lines over time, and histograms.

const COLORS = ["#e4572e", "#2e86ab", "#76b041", "#a65eb7"];

function style(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

// Sizes the canvas's pixels to its CSS box (sharp on high-DPI screens); returns the 2D context.
function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, width, height };
}

export function formatNumber(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (abs >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  if (abs >= 10) return value.toFixed(0);
  // String(Number(...)) drops trailing zeros: 6, not 6.0; 0.5, not 0.50
  if (abs >= 1) return String(Number(value.toFixed(1)));
  return String(Number(value.toFixed(2)));
}

// A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// series: [{label, values: [number], color?}], all the same length (oldest first), drawn
// right-aligned on an axis of `slots` points so that time runs at the same pace as it fills.
export function lineChart(canvas, series, { yMax, unit = "", slots = 120 } = {}) {
  const { ctx, width, height } = prepare(canvas);
  const fg = style("--muted", "#777");
  const pad = { left: 38, right: 8, top: 18, bottom: 8 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const top = yMax ?? niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
  ctx.strokeStyle = style("--grid", "#ddd");
  ctx.fillStyle = fg;
  ctx.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = pad.top + (plotH * i) / 2;
    ctx.beginPath();
    ctx.moveTo(pad.left, y);
    ctx.lineTo(width - pad.right, y);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(formatNumber((top * (2 - i)) / 2) + unit, pad.left - 4, y);
  }
  let legendX = pad.left;
  series.forEach((s, k) => {
    const color = s.color || COLORS[k % COLORS.length];
    const n = s.values.length;
    const step = plotW / Math.max(1, slots - 1);
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.values.forEach((v, i) => {
      const x = pad.left + plotW - (n - 1 - i) * step;
      const y = pad.top + plotH - (plotH * Math.min(v, top)) / top;
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(s.label, legendX, 2);
    legendX += ctx.measureText(s.label).width + 14;
  });
}

function boundLabel(seconds) {
  if (seconds === null) return "more";
  return seconds < 1 ? `${Math.round(seconds * 1000)}ms` : `${seconds}s`;
}

// hist: {le: [upper bound in seconds | null for +Inf], counts: [per bucket]}; empty trailing
// buckets are dropped so the bars that matter get the width.
export function histogramChart(canvas, hist, { color = COLORS[1] } = {}) {
  const { ctx, width, height } = prepare(canvas);
  let last = hist.counts.length - 1;
  while (last > 0 && hist.counts[last] === 0) last--;
  let firstBar = 0;
  while (firstBar < last && hist.counts[firstBar] === 0) firstBar++;
  const bars = [];
  for (let i = Math.max(0, firstBar - 1); i <= Math.min(last + 1, hist.counts.length - 1); i++) {
    bars.push({ count: hist.counts[i], label: boundLabel(hist.le[i]) });
  }
  const pad = { left: 8, right: 8, top: 14, bottom: 16 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const top = Math.max(1, ...bars.map((b) => b.count));
  const barW = plotW / bars.length;
  ctx.textAlign = "center";
  bars.forEach((b, i) => {
    const h = (plotH * b.count) / top;
    const x = pad.left + i * barW;
    ctx.fillStyle = color;
    ctx.fillRect(x + 1, pad.top + plotH - h, Math.max(1, barW - 2), h);
    ctx.fillStyle = style("--muted", "#777");
    ctx.textBaseline = "bottom";
    if (b.count) ctx.fillText(formatNumber(b.count), x + barW / 2, pad.top + plotH - h - 1);
    ctx.textBaseline = "top";
    // every label where they fit, else every other one
    if (barW > 44 || i % 2 === 0) ctx.fillText(`≤${b.label}`, x + barW / 2, pad.top + plotH + 3);
  });
}

// The q-quantile of a bucketed histogram, interpolated linearly inside its bucket.
export function quantile(hist, q) {
  const total = hist.counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const target = q * total;
  let seen = 0;
  for (let i = 0; i < hist.counts.length; i++) {
    const lower = i === 0 ? 0 : hist.le[i - 1];
    if (seen + hist.counts[i] >= target && hist.counts[i] > 0) {
      const upper = hist.le[i];
      if (upper === null) return lower; // beyond the last bound: all we know is "more than"
      return lower + ((upper - lower) * (target - seen)) / hist.counts[i];
    }
    seen += hist.counts[i];
  }
  return hist.le.at(-2);
}
