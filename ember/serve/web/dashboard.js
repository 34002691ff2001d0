// The engine dashboard: polls /stats.json about once a second while it is on screen.
//
// /stats.json holds totals; rates (tokens/s) come from the difference of two snapshots.
// Polling stops while the dashboard is not the shown view or the browser tab is hidden,
// so an open but unwatched page costs the server nothing.

import { getJSON } from "./api.js";
import { formatNumber, histogramChart, lineChart, quantile } from "./charts.js";

const POLL_MS = 1000;
const HISTORY = 120; // points kept for the line charts: two minutes at one poll a second

const $ = (id) => document.getElementById(id);

function setStat(name, text) {
  const node = document.querySelector(`[data-stat="${name}"]`);
  if (node) node.textContent = text;
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms` : `${seconds.toFixed(2)} s`;
}

function percent(x) {
  return `${(100 * x).toFixed(1)}%`;
}

export class Dashboard {
  constructor() {
    this.active = false;
    this.timer = null;
    this.previous = null;
    this.history = { running: [], waiting: [], kv: [], prompt: [], generation: [] };
    this.configShown = false;
    document.addEventListener("visibilitychange", () => this.schedule(0));
    window.addEventListener("resize", () => this.last && this.draw(this.last));
  }

  show(active) {
    this.active = active;
    this.schedule(0);
  }

  get polling() {
    return this.active && !document.hidden;
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.polling) this.timer = setTimeout(() => this.poll(), delay);
  }

  async poll() {
    try {
      const snapshot = await getJSON("/stats.json");
      $("dashboard-status").textContent = `updated ${new Date(snapshot.time * 1000).toLocaleTimeString()}`;
      $("dashboard-status").classList.remove("error");
      this.update(snapshot);
    } catch (err) {
      $("dashboard-status").textContent = `cannot reach the server: ${err.message}`;
      $("dashboard-status").classList.add("error");
    }
    this.schedule(POLL_MS);
  }

  update(s) {
    const prev = this.previous;
    const dt = prev ? s.time - prev.time : 0;
    const rate = (now, before) => (dt > 0 ? Math.max(0, now - before) / dt : 0);
    const promptRate = prev ? rate(s.tokens.prompt, prev.tokens.prompt) : 0;
    const generationRate = prev ? rate(s.tokens.generation, prev.tokens.generation) : 0;
    this.previous = s;
    this.last = s;

    const h = this.history;
    const push = (list, value) => {
      list.push(value);
      if (list.length > HISTORY) list.shift();
    };
    push(h.running, s.requests.running);
    push(h.waiting, s.requests.waiting);
    push(h.kv, 100 * s.kv_cache.usage);
    push(h.prompt, promptRate);
    push(h.generation, generationRate);

    setStat("running", String(s.requests.running));
    setStat("waiting", String(s.requests.waiting));
    setStat("kv_usage", percent(s.kv_cache.usage));
    setStat("kv_blocks", `${s.kv_cache.used_blocks} / ${s.kv_cache.num_blocks} blocks`);
    const pc = s.prefix_cache;
    setStat("prefix_hit_rate", pc.queries ? percent(pc.hits / pc.queries) : "–");
    setStat("prefix_tokens", `${formatNumber(pc.hits)} of ${formatNumber(pc.queries)} prompt tokens`);
    setStat("prompt_tps", formatNumber(promptRate));
    setStat("generation_tps", formatNumber(generationRate));
    const finished = Object.values(s.requests.finished).reduce((a, b) => a + b, 0);
    setStat("finished", String(finished));
    setStat("aborted", String(s.requests.finished.abort || 0));
    setStat("preemptions", String(s.requests.preemptions));
    setStat("step_ms", ms(s.last_step.seconds));
    for (const name of ["ttft", "itl"]) {
      const hist = s.latency[name];
      setStat(`${name}_count`, String(hist.count));
      setStat(`${name}_mean`, hist.count ? ms(hist.sum / hist.count) : "–");
      setStat(`${name}_p50`, ms(quantile(hist, 0.5)));
      setStat(`${name}_p90`, ms(quantile(hist, 0.9)));
      setStat(`${name}_p99`, ms(quantile(hist, 0.99)));
    }
    if (!this.configShown) this.showConfig(s.config);
    this.draw(s);
  }

  draw(s) {
    const h = this.history;
    const slots = HISTORY;
    lineChart($("chart-requests"), [
      { label: "running", values: h.running },
      { label: "waiting", values: h.waiting },
    ], { slots });
    lineChart($("chart-kv"), [{ label: "KV cache use %", values: h.kv }], { yMax: 100, unit: "%", slots });
    lineChart($("chart-tokens"), [
      { label: "prompt tok/s", values: h.prompt },
      { label: "generation tok/s", values: h.generation },
    ], { slots });
    histogramChart($("chart-ttft"), s.latency.ttft);
    histogramChart($("chart-itl"), s.latency.itl, { color: "#76b041" });
  }

  showConfig(config) {
    const rows = [
      ["model", config.model],
      ["dtype", config.dtype],
      ["linear method", config.linear],
      ["attention", config.attention],
      ["KV codec", config.kv_codec],
      ["KV press", config.kv_press || "none"],
      ["policy", config.policy],
      ["preemption", config.preemption],
      ["fused decode", config.fused_decode ? "on" : "off"],
      ["KV cache", `${config.num_blocks} blocks of ${config.block_size} tokens, ${formatNumber(config.kv_cache_bytes / 2 ** 20)} MiB`],
      ["prefix caching", config.prefix_caching ? "on" : "off"],
      ["max model length", String(config.max_model_len)],
      ["max sequences per step", String(config.max_num_seqs)],
      ["token budget per step", String(config.max_num_batched_tokens)],
      ["Ember", config.version],
    ];
    const list = $("engine-config");
    list.replaceChildren();
    for (const [name, value] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value ?? "–";
      dd.dataset.config = name;
      list.append(dt, dd);
    }
    this.configShown = true;
  }
}
