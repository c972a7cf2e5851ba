// comfyui-musev: live context-window preview on ParallelDenoiseSampler / MuseVContextWindows.
//
// Draws, inside the node, which latent frames every window covers (one row per window), the clean
// vision-condition frame(s) every window sees (a leading amber block when a vision input is
// connected), how many windows cover each frame (the divisor of MuseV's average) and how windows
// are grouped into UNet calls (context_batch_size; 0 = "auto", chosen from free memory at run time).
// The numbers come from the server (GET /musev/windows = musev_core.windows.describe), so Python
// stays the single source of truth.
//
// The chart is a DOM widget (a <canvas> of our own inside a <div>), so it draws in both of the
// frontend's renderers: the classic LiteGraph canvas (positions the element over the node) and the
// Vue-nodes renderer ("Nodes 2.0", mounts the element inside the node's DOM).  A canvas-drawn
// LiteGraph widget would be redrawn only on the classic canvas.
//
// Settings that come through links are followed to their source: a primitive's value, a reroute,
// PoseVideoCondition's `frames` output (= its frame_count widget when > 0), an Empty Latent Image's
// batch_size behind the KSampler that MuseVContextWindows feeds.  When the value is only known at
// run time, the widget says "frames from <node>" instead of drawing a wrong chart.
//
// Frontend APIs used (ComfyUI frontend 1.27 ... 1.45): app.registerExtension / beforeRegisterNodeDef,
// api.fetchApi, LGraphNode.addDOMWidget (options getMinHeight / getMaxHeight / hideOnZoom /
// serialize), LGraphNode.addWidget, node.badges + window.LGraphBadge (optional).
// The last drawn layout is exposed as node.musevLayout (used by the tests); node.musevPreview is the
// chart's DOM element.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "MuseV.ContextWindows";
const WINDOW_NODES = new Set(["ParallelDenoiseSampler", "MuseVContextWindows"]);
const ROUTE = "/musev/windows";
const VISION_INPUTS = ["vision_image", "vision_latent"];
const LAYOUT_WIDGET = "musev_window_layout";
const PREVIEW_WIDGET = "preview_frames";
const PREVIEW_PROPERTY = "MuseV preview frames";
const DEFAULT_PREVIEW_FRAMES = 24;
const MAX_ROWS = 16;
const RETRY_MS = 3000;
const POLL_MS = 250;
const MIN_HEIGHT = 96;

// Where a linked setting's value can be read before the run: the output of a node type -> the widget
// that decides it ("zeroUnknown": 0 means "decided at run time", e.g. the whole pose clip).
const SOURCE_WIDGETS = {
  PoseVideoCondition: { frames: { widget: "frame_count", zeroUnknown: true } },
  EmptyLatentImage: { LATENT: { widget: "batch_size" } },
};
// Samplers whose latent input gives MuseVContextWindows its video length (frames = batch).
const LATENT_INPUTS = ["latent_image", "latent", "samples"];

const C = {
  panel: "rgba(10, 10, 16, 0.55)",
  panelEdge: "rgba(255, 255, 255, 0.10)",
  title: "#dcdcec",
  text: "#d8d8e0",
  dim: "#9a98aa",
  grid: "rgba(255, 255, 255, 0.06)",
  vision: "#e8b64c",
  visionText: "#2a2000",
  error: "#ff7b7b",
  errorBg: "rgba(120, 25, 35, 0.55)",
  errorEdge: "rgba(255, 110, 110, 0.7)",
  linkedBg: "rgba(60, 80, 110, 0.45)",
  linkedEdge: "rgba(140, 180, 230, 0.6)",
};
const BATCH_COLORS = ["#5aa9e6", "#a37cf0", "#45c4a0", "#f27fa5", "#f2a65a", "#9ccc4f", "#6fd3e0", "#e6d25a"];
const FONT = "Inter, Arial, sans-serif";
const FS = { title: 12, text: 11, small: 10 };

// ------------------------------------------------------------------------------------------
// server plans (cached per query; failed fetches are not cached)
// ------------------------------------------------------------------------------------------
const planCache = new Map();

function fetchPlan(query) {
  let promise = planCache.get(query);
  if (promise) return promise;
  promise = api
    .fetchApi(`${ROUTE}?${query}`, { cache: "no-store" })
    .then(async (response) => {
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (body && typeof body.ok === "boolean") return body;
      return { ok: false, transient: true, error: { type: "http", message: `MuseV preview: the server answered HTTP ${response.status}` } };
    })
    .catch((e) => ({
      ok: false,
      transient: true,
      error: { type: "network", message: `MuseV preview: server not reachable (${(e && e.message) || e})` },
    }));
  planCache.set(query, promise);
  promise.then((body) => {
    if (body.transient) planCache.delete(query);
  });
  while (planCache.size > 256) planCache.delete(planCache.keys().next().value);
  return promise;
}

// ------------------------------------------------------------------------------------------
// settings from the node, linked inputs followed to their source
// ------------------------------------------------------------------------------------------
function getLink(graph, id) {
  if (!graph || id == null) return null;
  if (typeof graph.getLink === "function") return graph.getLink(id) ?? null;
  const links = graph.links;
  return (links && (typeof links.get === "function" ? links.get(id) : links[id])) ?? null;
}

function isConnected(node, inputName) {
  const slot = node.inputs?.find((i) => i.name === inputName);
  return !!slot && slot.link != null;
}

function titleOf(node) {
  return node?.title || node?.type || "another node";
}

function known(value, from = null) {
  return { value, known: true, linked: from !== null, from };
}

function unknownFrom(node) {
  return { value: undefined, known: false, linked: true, from: titleOf(node) };
}

// The value that reaches `node`'s input/widget `name` (a widget value, or what a link brings).
function resolveSetting(node, name, depth = 0) {
  const widget = node.widgets?.find((w) => w.name === name);
  const slot = node.inputs?.find((i) => i.name === name || i.widget?.name === name);
  if (!slot || slot.link == null) {
    return widget ? known(widget.value) : { value: undefined, known: false, linked: false, from: null };
  }
  return resolveLink(node.graph, slot.link, depth);
}

function resolveLink(graph, linkId, depth) {
  const link = getLink(graph, linkId);
  const origin = link ? graph.getNodeById(link.origin_id) : null;
  if (!origin || depth > 8) return { value: undefined, known: false, linked: true, from: titleOf(origin) };
  const from = titleOf(origin);
  if (origin.type === "Reroute") {
    const input = origin.inputs?.[0];
    return input?.link != null ? resolveLink(graph, input.link, depth + 1) : unknownFrom(origin);
  }
  if (origin.type === "PrimitiveNode") {   // the frontend's own primitive (no server node)
    const w = origin.widgets?.[0];
    return w && w.value !== undefined && w.value !== "" ? known(w.value, from) : unknownFrom(origin);
  }
  const output = origin.outputs?.[link.origin_slot];
  const outName = output?.name;
  const rule = SOURCE_WIDGETS[origin.type]?.[outName] ?? SOURCE_WIDGETS[origin.type]?.[output?.type];
  let widgetName = rule?.widget;
  if (!widgetName) {
    const names = (origin.widgets ?? []).map((w) => w.name);
    if (names.includes("value") && (origin.outputs?.length ?? 0) === 1) widgetName = "value";   // PrimitiveInt & co.
    else if (outName && names.includes(outName)) widgetName = outName;
  }
  if (!widgetName) return unknownFrom(origin);
  const r = resolveSetting(origin, widgetName, depth + 1);
  if (!r.known) return { ...r, from: r.from ?? from };
  if (rule?.zeroUnknown && Number(r.value) <= 0) return unknownFrom(origin);
  return known(r.value, r.from ?? from);
}

// MuseVContextWindows has no frame count: the sampler it feeds takes it from its latent's batch.
function framesFromDownstream(node) {
  const graph = node.graph;
  const out = node.outputs?.find((o) => o.type === "MODEL");
  for (const linkId of out?.links ?? []) {
    const link = getLink(graph, linkId);
    const target = link ? graph.getNodeById(link.target_id) : null;
    const slot = target?.inputs?.find((i) => LATENT_INPUTS.includes(i.name) && i.link != null);
    if (!slot) continue;
    const r = resolveLink(graph, slot.link, 1);
    return r.known ? r : { ...r, from: r.from ?? titleOf(target) };
  }
  return null;
}

function toInt(v, fallback) {
  const n = Number(v);
  return Number.isFinite(n) ? Math.round(n) : fallback;
}

function readSettings(node) {
  const hasFrames = !!node.widgets?.some((w) => w.name === "frames") || !!node.inputs?.some((i) => i.name === "frames");
  let frames;
  let framesFrom;
  if (hasFrames) {
    frames = resolveSetting(node, "frames");
    framesFrom = frames.linked ? "input" : "widget";
  } else {
    frames = framesFromDownstream(node);
    framesFrom = frames ? "latent" : "preview";
    if (!frames) frames = known(node.properties?.[PREVIEW_PROPERTY] ?? DEFAULT_PREVIEW_FRAMES);
  }
  const schedule = resolveSetting(node, "context_schedule");
  const cf = resolveSetting(node, "context_frames");
  const co = resolveSetting(node, "context_overlap");
  const cb = resolveSetting(node, "context_batch_size");
  const hasStride = !!node.widgets?.some((w) => w.name === "context_stride");
  const cs = hasStride ? resolveSetting(node, "context_stride") : known(1);
  const unknown = [];
  const sources = {};
  for (const [name, s] of [["frames", frames], ["context_schedule", schedule], ["context_frames", cf],
                           ["context_overlap", co], ["context_batch_size", cb], ["context_stride", cs]]) {
    if (s.linked) sources[name] = s.from;
    if (!s.known) unknown.push(name);
  }
  const batch = toInt(cb.value, 1);
  return {
    schedule: String(schedule.value ?? "uniform_v2"),
    frames: toInt(frames.value, DEFAULT_PREVIEW_FRAMES),
    context_frames: toInt(cf.value, 12),
    context_overlap: toInt(co.value, 4),
    batch,
    autoBatch: cb.known && batch === 0,
    stride: Math.max(1, toInt(cs.value, 1)),
    n_vis: VISION_INPUTS.some((name) => isConnected(node, name)) ? 1 : 0,
    framesFrom,
    sources,
    unknown,
  };
}

function queryOf(s) {
  return new URLSearchParams({
    schedule: s.schedule,
    frames: String(s.frames),
    context_frames: String(s.context_frames),
    context_overlap: String(s.context_overlap),
    n_vis: String(s.n_vis),
    // "auto" (0): the windows are the same, only their grouping into UNet calls is decided at run time
    batch: String(s.autoBatch ? 1 : s.batch),
    stride: String(s.stride),
  }).toString();
}

function keyOf(s) {
  if (s.unknown.length) return "linked:" + s.unknown.map((n) => `${n}<${s.sources[n] ?? "?"}`).join(",");
  return queryOf(s) + (s.autoBatch ? "&auto=1" : "") + `&from=${s.framesFrom}:${s.sources.frames ?? ""}`;
}

// ------------------------------------------------------------------------------------------
// state per node: request the plan for the current settings, keep the last one for display
// ------------------------------------------------------------------------------------------
function stateOf(node) {
  if (!node.__musev) node.__musev = { key: null, shown: null, drawnSig: null };
  return node.__musev;
}

function linkedMessage(s) {
  const name = s.unknown[0];
  const from = s.sources[name] ?? "another node";
  const label = name === "frames" ? "frames" : name;
  return `${label} from ${from}`;
}

function refresh(node) {
  const st = stateOf(node);
  const settings = readSettings(node);
  const key = keyOf(settings);
  if (st.key === key) return st.pending ?? Promise.resolve(node.musevLayout);
  if (st.retryKey === key && Date.now() < st.retryAt) return Promise.resolve(node.musevLayout);
  st.key = key;
  if (settings.unknown.length) {
    // the value is only known when the graph runs: say where it comes from, draw no chart
    st.pending = null;
    const done = { key, settings, status: "linked", plan: null, error: null, windows: null, frameCounts: null,
                   batches: null, unetFrames: null, message: linkedMessage(settings), drawn: null };
    node.musevLayout = done;
    st.shown = done;
    updated(node);
    return Promise.resolve(done);
  }
  const query = queryOf(settings);
  if (!node.musevLayout) node.musevLayout = { key, settings, status: "loading", plan: null, error: null, drawn: null };
  st.pending = fetchPlan(query).then((body) => {
    if (st.key !== key) return node.musevLayout;   // settings changed meanwhile: a newer request wins
    st.pending = null;
    const done = {
      key,
      settings,
      status: body.ok ? "ok" : "error",
      plan: body.ok ? body : null,
      error: body.ok ? null : body.error,
      windows: body.ok ? body.windows : null,
      frameCounts: body.ok ? body.frame_counts : null,
      batches: body.ok ? (settings.autoBatch ? null : body.batches) : null,
      unetFrames: body.ok ? body.unet_frames : null,
      drawn: null,
    };
    node.musevLayout = done;
    st.shown = done;
    if (body.transient) {
      // server unreachable / odd answer: show it, retry in a few seconds (not on every poll)
      st.key = null;
      st.retryKey = key;
      st.retryAt = Date.now() + RETRY_MS;
    }
    updated(node);
    return done;
  });
  return st.pending;
}

function updated(node) {
  updateBadge(node);
  growToFit(node);
  draw(node);
  node.setDirtyCanvas?.(true, true);
}

// ------------------------------------------------------------------------------------------
// geometry
// ------------------------------------------------------------------------------------------
const G = {
  margin: 6,
  pad: 8,
  header: 20,
  axis: 14,
  rowGap: 2,
  rowMax: 13,
  rowMin: 4,
  cover: 14,
  footer: 18,
  label: 26,
};

function fixedHeight() {
  return G.pad + G.header + G.axis + 4 + G.cover + 4 + G.footer + G.pad;
}

function desiredHeight(node) {
  return G.margin + innerHeight(node);
}

function innerHeight(node) {
  const shown = stateOf(node).shown;
  if (shown && shown.status !== "ok") {
    if (shown.status === "linked") return G.pad + G.header + 52 + G.pad;
    const textWidth = Math.max(120, (node.size?.[0] ?? 340) - 2 * G.margin - 2 * G.pad - 14);
    const lines = Math.min(8, Math.ceil(((shown.error?.message || "").length * 6.2) / textWidth) + 1);
    return G.pad + G.header + 32 + lines * 14 + G.pad;
  }
  const rows = shown?.plan ? Math.min(shown.plan.n_windows, MAX_ROWS) : 2;
  return fixedHeight() + rows * (G.rowMax + G.rowGap);
}

function growToFit(node) {
  const st = stateOf(node);
  const want = Math.max(MIN_HEIGHT, desiredHeight(node));
  if (st.element) st.element.style.minHeight = `${want}px`;   // the Vue-nodes renderer sizes by CSS
  // Grow only when the plan needs more room than the node has (never fight a user's resize).
  const min = node.computeSize?.();
  if (min && node.size && min[1] > node.size[1] + 1) node.setSize([node.size[0], min[1]]);
}

function pickRows(nWindows, maxRows) {
  if (nWindows <= maxRows) return { rows: [...Array(nWindows).keys()], hidden: 0 };
  const head = Math.max(1, maxRows - 2);
  return { rows: [...Array(head).keys(), -1, nWindows - 1], hidden: nWindows - head - 1 };
}

function runsOf(frames) {
  const sorted = [...new Set(frames)].sort((a, b) => a - b);
  const runs = [];
  for (const f of sorted) {
    const last = runs[runs.length - 1];
    if (last && f === last[1] + 1) last[1] = f;
    else runs.push([f, f]);
  }
  return runs;
}

// "8–19"; a looped window that wraps past the end: "16–23+0–3" (its runs in window order)
function spanText(frames) {
  if (!frames.length) return "";
  const parts = [];
  let start = frames[0];
  for (let i = 1; i <= frames.length; i++) {
    if (i === frames.length || frames[i] !== frames[i - 1] + 1) {
      const end = frames[i - 1];
      parts.push(start === end ? `${start}` : `${start}–${end}`);
      if (i < frames.length) start = frames[i];
    }
  }
  return parts.join("+");
}

function tickStep(cellWidth) {
  const steps = [1, 2, 4, 5, 10, 12, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000];
  for (const s of steps) if (s * cellWidth >= 28) return s;
  return 10000;
}

function coverColor(count, maxCount) {
  if (count <= 0) return "#5a1f25";
  if (maxCount <= 1) return "#3b5f7d";
  const t = (count - 1) / Math.max(1, maxCount - 1);
  const l = 38 + t * 34;
  return `hsl(205, 62%, ${l}%)`;
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  if (typeof ctx.roundRect === "function") ctx.roundRect(x, y, w, h, Math.max(0, Math.min(r, w / 2, h / 2)));
  else ctx.rect(x, y, w, h);
}

function fitText(ctx, text, maxWidth) {
  if (maxWidth <= 0) return "";
  if (ctx.measureText(text).width <= maxWidth) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + "…").width <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  return lo > 0 ? text.slice(0, lo) + "…" : "";
}

function wrapText(ctx, text, maxWidth, maxLines) {
  const words = String(text).split(/\s+/);
  const lines = [];
  let line = "";
  for (const word of words) {
    const test = line ? `${line} ${word}` : word;
    if (ctx.measureText(test).width <= maxWidth || !line) line = test;
    else {
      lines.push(line);
      line = word;
    }
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) {
    const kept = lines.slice(0, maxLines);
    kept[maxLines - 1] = fitText(ctx, kept[maxLines - 1] + " …", maxWidth);
    return kept;
  }
  return lines.map((l) => fitText(ctx, l, maxWidth));
}

// ------------------------------------------------------------------------------------------
// drawing (into our own canvas, CSS pixels; scaled to the screen's resolution)
// ------------------------------------------------------------------------------------------
function screenRatio(el) {
  // device pixels per CSS pixel of the element, the classic canvas' zoom (a CSS transform) included
  const rect = el.getBoundingClientRect();
  const zoom = el.clientWidth > 0 ? rect.width / el.clientWidth : 1;
  return Math.max(1, Math.min(4, (window.devicePixelRatio || 1) * (Number.isFinite(zoom) && zoom > 0 ? zoom : 1)));
}

function draw(node, force = false) {
  const st = stateOf(node);
  const el = st.element;
  const canvas = st.canvas;
  if (!el || !canvas) return;
  const w = el.clientWidth;
  const h = el.clientHeight;
  if (w < 2 || h < 2) return;   // not laid out (hidden, collapsed, off screen in the Vue renderer)
  const ratio = screenRatio(el);
  const shown = st.shown;
  const sig = `${shown?.key}|${shown?.status}|${w}|${h}|${ratio.toFixed(2)}`;
  if (!force && sig === st.drawnSig) return;
  st.drawnSig = sig;
  canvas.width = Math.round(w * ratio);
  canvas.height = Math.round(h * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  try {
    drawLayout(ctx, node, shown, w, h);
    if (shown?.drawn) {
      shown.drawn.pixelRatio = ratio;
      shown.drawn.width = w;
      shown.drawn.height = h;
    }
  } catch (e) {
    if (!st.drawFailed) console.error("[MuseV] window preview failed to draw", e);
    st.drawFailed = true;
  }
}

function drawLayout(ctx, node, shown, width, height) {
  const x0 = G.margin;
  const y = G.margin / 2;
  const w = Math.max(60, width - 2 * G.margin);
  const h = Math.max(40, height - G.margin);
  ctx.save();
  roundRect(ctx, x0, y, w, h, 6);
  ctx.fillStyle = C.panel;
  ctx.fill();
  ctx.strokeStyle = C.panelEdge;
  ctx.lineWidth = 1;
  ctx.stroke();
  ctx.beginPath();
  ctx.rect(x0, y, w, h);
  ctx.clip();
  if (!shown) drawHeader(ctx, x0, y, w, "computing windows…");
  else if (shown.status === "error") drawError(ctx, shown, x0, y, w, h);
  else if (shown.status === "linked") drawLinked(ctx, shown, x0, y, w, h);
  else if (shown.status === "ok") drawPlan(ctx, shown, x0, y, w, h);
  else drawHeader(ctx, x0, y, w, "computing windows…");
  ctx.restore();
}

function drawHeader(ctx, x0, y, w, right) {
  const ty = y + G.pad + 11;
  ctx.textBaseline = "alphabetic";
  ctx.font = `600 ${FS.title}px ${FONT}`;
  ctx.fillStyle = C.title;
  ctx.textAlign = "left";
  const title = "Context windows";
  ctx.fillText(title, x0 + G.pad, ty);
  const tw = ctx.measureText(title).width;
  ctx.font = `${FS.text}px ${FONT}`;
  ctx.fillStyle = C.dim;
  ctx.textAlign = "right";
  ctx.fillText(fitText(ctx, right, w - tw - 3 * G.pad), x0 + w - G.pad, ty);
  ctx.textAlign = "left";
}

function drawBox(ctx, x0, y, w, height, bg, edge) {
  const bx = x0 + G.pad;
  const by = y + G.pad + G.header;
  const bw = w - 2 * G.pad;
  const bh = Math.max(24, height - G.header - 2 * G.pad);
  roundRect(ctx, bx, by, bw, bh, 5);
  ctx.fillStyle = bg;
  ctx.fill();
  ctx.strokeStyle = edge;
  ctx.stroke();
  return { bx, by, bw, bh };
}

function drawLinked(ctx, shown, x0, y, w, height) {
  const s = shown.settings;
  drawHeader(ctx, x0, y, w, s.schedule);
  const { bx, by, bw } = drawBox(ctx, x0, y, w, height, C.linkedBg, C.linkedEdge);
  shown.drawn = { key: shown.key, linked: shown.message };
  ctx.font = `600 ${FS.title}px ${FONT}`;
  ctx.fillStyle = C.title;
  ctx.fillText(fitText(ctx, `↳ ${shown.message}`, bw - 14), bx + 7, by + 17);
  ctx.font = `${FS.text}px ${FONT}`;
  ctx.fillStyle = C.dim;
  ctx.fillText(fitText(ctx, "known when the graph runs: windows are laid out then", bw - 14), bx + 7, by + 34);
}

function drawError(ctx, shown, x0, y, w, height) {
  const s = shown.settings;
  drawHeader(ctx, x0, y, w, `${s.schedule} · ${s.frames} frames`);
  const { bx, by, bw, bh } = drawBox(ctx, x0, y, w, height, C.errorBg, C.errorEdge);
  const message = shown.error?.message || "invalid settings";
  shown.drawn = { key: shown.key, error: message };
  ctx.font = `600 ${FS.title}px ${FONT}`;
  ctx.fillStyle = C.error;
  const param = shown.error?.param ? ` (${shown.error.param})` : "";
  const unavailable = shown.error?.type === "network" || shown.error?.type === "http";
  const title = unavailable ? "⚠ Window preview unavailable" : `⚠ Windows cannot be built${param}`;
  ctx.fillText(fitText(ctx, title, bw - 12), bx + 7, by + 16);
  ctx.font = `${FS.text}px ${FONT}`;
  ctx.fillStyle = C.text;
  const lines = wrapText(ctx, message, bw - 14, Math.max(1, Math.floor((bh - 26) / 14)));
  lines.forEach((line, i) => ctx.fillText(line, bx + 7, by + 32 + i * 14));
}

function framesNote(s) {
  if (s.framesFrom === "preview") return " (preview)";
  if (s.framesFrom === "latent" || s.framesFrom === "input") return s.sources.frames ? ` (${s.sources.frames})` : " (input)";
  return "";
}

function drawPlan(ctx, shown, x0, y, w, height) {
  const plan = shown.plan;
  const s = shown.settings;
  const N = plan.n_frames;
  const nVis = plan.n_vis;
  drawHeader(ctx, x0, y, w, `${plan.schedule} · ${N} frames${framesNote(s)}`);

  // horizontal layout: [batch bar][label][vision][gap][frames ...][info]
  const showInfo = w >= 300;
  ctx.font = `${FS.small}px ${FONT}`;
  const labelW = Math.max(G.label, Math.ceil(ctx.measureText(`w${plan.n_windows}`).width) + 10);
  const pick0 = pickRows(plan.n_windows, MAX_ROWS);
  let infoW = 0;
  if (showInfo) {
    const texts = pick0.rows.filter((i) => i >= 0).map((i) => spanText(plan.windows[i]));
    texts.push(`${plan.min_count}–${plan.max_count}×`);
    infoW = Math.min(100, 10 + Math.max(...texts.map((t) => ctx.measureText(t).width)));
  }
  const visCell = nVis ? Math.max(10, Math.min(15, 0.6 * G.rowMax + 6)) : 0;
  const visW = nVis * visCell;
  const gx = x0 + G.pad + labelW + (nVis ? visW + 6 : 0);
  const gw = Math.max(20, x0 + w - G.pad - infoW - gx);
  const cw = gw / N;
  const fx = (f) => gx + f * cw;

  // vertical layout
  const top = y + G.pad + G.header;
  const rowsTop = top + G.axis + 4;
  const avail = y + height - G.pad - G.footer - 4 - G.cover - 4 - rowsTop;
  let maxRows = Math.max(1, Math.floor((avail + G.rowGap) / (G.rowMin + G.rowGap)));
  maxRows = Math.min(maxRows, MAX_ROWS);
  const pick = pickRows(plan.n_windows, maxRows);
  const nRows = pick.rows.length;
  const rowH = Math.max(G.rowMin, Math.min(G.rowMax, Math.floor((avail + G.rowGap) / nRows) - G.rowGap));

  // batch (UNet call) of each window; "auto": decided at run time, all windows in one colour
  const batchOf = new Array(plan.n_windows).fill(0);
  if (!s.autoBatch) plan.batches.forEach((b, bi) => b.forEach((wi) => (batchOf[wi] = bi)));

  // axis: frame ticks
  ctx.font = `${FS.small}px ${FONT}`;
  ctx.fillStyle = C.dim;
  ctx.textAlign = "center";
  const step = tickStep(cw);
  const ay = top + G.axis - 3;
  let lastRight = -Infinity;
  const ticks = [];
  for (let f = 0; f < N; f += step) ticks.push(f);
  if (ticks[ticks.length - 1] !== N - 1) ticks.push(N - 1);
  for (const f of ticks) {
    const cx = fx(f) + cw / 2;
    const label = String(f);
    const half = ctx.measureText(label).width / 2;
    if (cx - half < lastRight + 4) continue;
    ctx.fillText(label, cx, ay);
    lastRight = cx + half;
  }
  if (nVis) {
    ctx.fillStyle = C.vision;
    ctx.fillText("vis", x0 + G.pad + labelW + visW / 2, ay);
  }
  ctx.textAlign = "left";
  // faint frame grid behind the rows
  if (cw >= 4) {
    ctx.fillStyle = C.grid;
    const rowsBottom = rowsTop + nRows * (rowH + G.rowGap) - G.rowGap;
    for (let f = 0; f <= N; f++) ctx.fillRect(Math.round(fx(f)), rowsTop, 1, rowsBottom - rowsTop);
  }

  const drawnRows = [];
  pick.rows.forEach((wi, r) => {
    const ry = rowsTop + r * (rowH + G.rowGap);
    if (wi < 0) {
      ctx.font = `${FS.small}px ${FONT}`;
      ctx.fillStyle = C.dim;
      ctx.textAlign = "center";
      ctx.fillText(`… ${pick.hidden} more windows …`, gx + gw / 2, ry + rowH - 1);
      ctx.textAlign = "left";
      return;
    }
    const frames = plan.windows[wi];
    const b = batchOf[wi] ?? 0;
    const color = BATCH_COLORS[b % BATCH_COLORS.length];
    drawnRows.push({ window: wi, frames: frames.slice(), batch: s.autoBatch ? null : b, color, y: ry, height: rowH });
    if (rowH >= 7) {
      ctx.font = `${Math.min(FS.small, rowH)}px ${FONT}`;
      ctx.fillStyle = C.dim;
      ctx.textAlign = "right";
      ctx.fillText(`w${wi + 1}`, x0 + G.pad + labelW - 5, ry + rowH - 1.5);
      ctx.textAlign = "left";
    }
    // batch bar: windows of one UNet call share a colour and a bar on the left
    ctx.fillStyle = color;
    const joins = !s.autoBatch && batchOf[wi + 1] === b && r + 1 < nRows && pick.rows[r + 1] === wi + 1;
    ctx.fillRect(x0 + G.pad - 3, ry, 3, rowH + (joins ? G.rowGap : 0));
    for (let v = 0; v < nVis; v++) {
      const vx = x0 + G.pad + labelW + v * visCell;
      roundRect(ctx, vx + 0.5, ry, visCell - 1.5, rowH, 2);
      ctx.fillStyle = C.vision;
      ctx.fill();
      if (rowH >= 9 && visCell >= 9) {
        ctx.font = `700 ${Math.min(9, rowH - 1)}px ${FONT}`;
        ctx.fillStyle = C.visionText;
        ctx.textAlign = "center";
        ctx.fillText("V", vx + visCell / 2 - 0.5, ry + rowH - 2);
        ctx.textAlign = "left";
      }
    }
    for (const [a, z] of runsOf(frames)) {
      const rx = fx(a) + (cw >= 4 ? 0.75 : 0);
      const rw = Math.max(1, fx(z + 1) - fx(a) - (cw >= 4 ? 1.5 : 0));
      roundRect(ctx, rx, ry, rw, rowH, Math.min(3, rowH / 2));
      ctx.fillStyle = color;
      ctx.fill();
    }
    if (cw >= 7) {
      ctx.fillStyle = "rgba(0, 0, 0, 0.22)";
      for (const f of frames) ctx.fillRect(Math.round(fx(f + 1)) - 0.5, ry + 1, 1, rowH - 2);
    }
    if (showInfo && rowH >= 7) {
      ctx.font = `${Math.min(FS.small, rowH)}px ${FONT}`;
      ctx.fillStyle = C.text;
      ctx.fillText(fitText(ctx, spanText(frames), infoW - 6), gx + gw + 6, ry + rowH - 1.5);
    }
  });

  // coverage strip: windows per frame
  const cy = y + height - G.pad - G.footer - 4 - G.cover;
  const counts = plan.frame_counts;
  const maxCount = plan.max_count;
  let f = 0;
  while (f < N) {
    let g = f;
    while (g + 1 < N && counts[g + 1] === counts[f]) g++;
    ctx.fillStyle = coverColor(counts[f], maxCount);
    ctx.fillRect(fx(f), cy, fx(g + 1) - fx(f), G.cover);
    f = g + 1;
  }
  ctx.font = `${FS.small}px ${FONT}`;
  ctx.fillStyle = C.dim;
  ctx.textAlign = "right";
  ctx.fillText("×", x0 + G.pad + labelW - 5, cy + G.cover - 3);
  if (cw >= 9) {
    ctx.textAlign = "center";
    ctx.fillStyle = "rgba(255, 255, 255, 0.9)";
    for (let i = 0; i < N; i++) ctx.fillText(String(counts[i]), fx(i) + cw / 2, cy + G.cover - 3);
  }
  if (showInfo) {
    ctx.textAlign = "left";
    ctx.fillStyle = C.dim;
    const range = plan.min_count === plan.max_count ? `${plan.max_count}×` : `${plan.min_count}–${plan.max_count}×`;
    ctx.fillText(fitText(ctx, range, infoW - 6), gx + gw + 6, cy + G.cover - 3);
  }
  ctx.textAlign = "left";

  // footer: what one UNet call sees
  const F = Math.max(...plan.windows.map((win) => win.length));
  const perWindow = nVis ? `${nVis}V+${F}` : `${F}`;
  const parts = [`${plan.n_windows} window${plan.n_windows === 1 ? "" : "s"} of ${perWindow}`];
  if (s.autoBatch) parts.push("auto batching (at run time)");
  else {
    const calls = plan.n_batches;
    parts.push(`${calls} UNet call${calls === 1 ? "" : "s"}/step`, `≤${Math.max(...plan.batch_unet_frames)} frames/call`);
  }
  ctx.font = `${FS.text}px ${FONT}`;
  ctx.fillStyle = C.text;
  ctx.fillText(fitText(ctx, parts.join(" · "), w - 2 * G.pad), x0 + G.pad, y + height - G.pad - 3);

  // what was drawn, with its geometry in the element's CSS pixels (frame f spans gridX + f·cellWidth ...)
  shown.drawn = {
    key: shown.key,
    rows: drawnRows,
    hiddenWindows: pick.hidden,
    nVis,
    autoBatch: s.autoBatch,
    footer: parts.join(" · "),
    frameCounts: counts.slice(),
    gridX: gx,
    cellWidth: cw,
    visionX: x0 + G.pad + labelW,
    visionCell: visCell,
    visionColor: C.vision,
    coverY: cy,
    coverHeight: G.cover,
  };
}

// ------------------------------------------------------------------------------------------
// badge: "3 windows" beside the title (readable when the node is collapsed); no node colours
// ------------------------------------------------------------------------------------------
function updateBadge(node) {
  const Badge = window.LGraphBadge;
  if (typeof Badge !== "function" || !Array.isArray(node.badges)) return;
  const st = stateOf(node);
  const shown = st.shown;
  const n = shown?.plan?.n_windows;
  const text = !shown ? "" : shown.status === "ok" ? `${n} window${n === 1 ? "" : "s"}`
    : shown.status === "linked" ? "windows: at run time" : "windows: error";
  if (!st.badge) {
    st.badge = new Badge({ text, fgColor: "#f0f0f4", bgColor: "#3d4656", fontSize: 11, padding: 5, height: 18 });
    node.badges.push(() => st.badge);
  }
  st.badge.text = text;
  st.badge.bgColor = shown && shown.status === "error" ? "#8a2d3a" : "#3d4656";
}

// ------------------------------------------------------------------------------------------
// node setup
// ------------------------------------------------------------------------------------------
const LIVE = new Set();
let pollTimer = null;

function poll() {
  for (const node of LIVE) {
    if (!node.graph) continue;
    try {
      refresh(node);
      draw(node);
    } catch (e) {
      const st = stateOf(node);
      if (!st.pollFailed) console.error("[MuseV] window preview failed", e);
      st.pollFailed = true;
    }
  }
}

function track(node) {
  LIVE.add(node);
  if (pollTimer === null) pollTimer = setInterval(poll, POLL_MS);
}

function addPreviewFramesWidget(node) {
  if (node.widgets?.some((w) => w.name === "frames" || w.name === PREVIEW_WIDGET)) return;
  node.properties ??= {};
  if (node.properties[PREVIEW_PROPERTY] === undefined) node.properties[PREVIEW_PROPERTY] = DEFAULT_PREVIEW_FRAMES;
  const widget = node.addWidget(
    "number",
    PREVIEW_WIDGET,
    node.properties[PREVIEW_PROPERTY],
    (value) => {
      node.properties[PREVIEW_PROPERTY] = toInt(value, DEFAULT_PREVIEW_FRAMES);
      refresh(node);
    },
    { min: 1, max: 4096, step: 10, precision: 0, round: 1, serialize: false, property: PREVIEW_PROPERTY }
  );
  widget.serialize = false;
  widget.tooltip = "Preview only: the video length to draw the windows for when no Empty Latent Image batch is " +
    "found behind the sampler. At sampling time the length comes from the latent (frames = batch); this value is " +
    "not sent to the server.";
}

function addLayoutWidget(node) {
  if (node.widgets?.some((w) => w.name === LAYOUT_WIDGET)) return;
  const st = stateOf(node);
  const el = document.createElement("div");
  el.className = "musev-window-preview";
  el.dataset.musevNode = String(node.id);
  el.style.cssText = `position:relative;width:100%;height:100%;min-height:${MIN_HEIGHT}px;box-sizing:border-box;` +
    "pointer-events:none;overflow:hidden;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%;display:block;";
  el.appendChild(canvas);
  st.element = el;
  st.canvas = canvas;
  node.musevPreview = el;
  const widget = node.addDOMWidget(LAYOUT_WIDGET, "musev.windows", el, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => Math.max(MIN_HEIGHT, desiredHeight(node)),
    getMaxHeight: () => Math.max(MIN_HEIGHT, desiredHeight(node)),
  });
  widget.serialize = false;
  widget.tooltip = "MuseV context windows: rows = windows (frames they denoise), V = vision-condition frame " +
    "every window sees, × = windows averaged per frame; colours = UNet calls (context_batch_size).";
  if (typeof ResizeObserver === "function") new ResizeObserver(() => draw(node)).observe(el);
}

function chain(proto, name, after) {
  const orig = proto[name];
  proto[name] = function (...args) {
    const r = orig?.apply(this, args);
    after.apply(this, args);
    return r;
  };
}

app.registerExtension({
  name: EXTENSION,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!WINDOW_NODES.has(nodeData?.name)) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () {
      addPreviewFramesWidget(this);
      addLayoutWidget(this);
      const size = this.computeSize();
      this.setSize([Math.max(this.size[0], size[0], 340), Math.max(this.size[1], size[1])]);
      this.musevRefresh = () => refresh(this);
      track(this);
    });
    chain(proto, "onConfigure", function () {
      const w = this.widgets?.find((x) => x.name === PREVIEW_WIDGET);
      if (w && this.properties?.[PREVIEW_PROPERTY] !== undefined) w.value = this.properties[PREVIEW_PROPERTY];
      track(this);
    });
    chain(proto, "onAdded", function () {
      track(this);
    });
    chain(proto, "onRemoved", function () {
      LIVE.delete(this);
    });
    chain(proto, "onConnectionsChange", function () {
      if (this.graph) refresh(this);
    });
    chain(proto, "onWidgetChanged", function () {
      refresh(this);
    });
    chain(proto, "onPropertyChanged", function (name, value) {
      if (name !== PREVIEW_PROPERTY) return;
      const w = this.widgets?.find((x) => x.name === PREVIEW_WIDGET);
      if (w) w.value = value;
      refresh(this);
    });
  },
});
