// comfyui-musev: live context-window preview on ParallelDenoiseSampler / MuseVContextWindows.
//
// Draws, inside the node, which latent frames every window covers (one row per window), the clean
// vision-condition frame(s) every window sees (a leading amber block when a vision input is
// connected), how many windows cover each frame (the divisor of MuseV's average) and how windows
// are grouped into UNet calls (context_batch_size).  The numbers come from the server
// (GET /musev/windows = musev_core.windows.describe), so Python stays the single source of truth.
//
// Frontend APIs used (ComfyUI frontend 1.2x): app.registerExtension / beforeRegisterNodeDef,
// api.fetchApi, LGraphNode.addCustomWidget / addWidget, widget.draw + computeLayoutSize (the
// LiteGraph canvas-widget protocol), node.badges + window.LGraphBadge (optional).
// The last drawn layout is exposed as node.musevLayout (used by the tests).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "MuseV.ContextWindows";
const CATEGORY = "MuseV";
const WINDOW_NODES = new Set(["ParallelDenoiseSampler", "MuseVContextWindows"]);
const ROUTE = "/musev/windows";
const VISION_INPUTS = ["vision_image", "vision_latent"];
const LAYOUT_WIDGET = "musev_window_layout";
const PREVIEW_WIDGET = "preview_frames";
const PREVIEW_PROPERTY = "MuseV preview frames";
const DEFAULT_PREVIEW_FRAMES = 24;
const MAX_ROWS = 16;
const RETRY_MS = 3000;

// Look: MuseV nodes get a deep violet; windows cycle through a palette by batch (UNet call).
const NODE_COLOR = "#4b3a6b";
const NODE_BGCOLOR = "#2a2436";
const C = {
  panel: "rgba(10, 10, 16, 0.55)",
  panelEdge: "rgba(255, 255, 255, 0.08)",
  title: "#cdb8ff",
  text: "#d8d8e0",
  dim: "#8d8a9e",
  grid: "rgba(255, 255, 255, 0.06)",
  vision: "#e8b64c",
  visionText: "#2a2000",
  error: "#ff7b7b",
  errorBg: "rgba(120, 25, 35, 0.55)",
  errorEdge: "rgba(255, 110, 110, 0.7)",
};
const BATCH_COLORS = ["#5aa9e6", "#a37cf0", "#45c4a0", "#f27fa5", "#f2a65a", "#9ccc4f", "#6fd3e0", "#e6d25a"];
const FONT = "Inter, Arial, sans-serif";

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
// settings from the node
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

// Value of a widget; when its input socket is linked, the value of a primitive source if known.
function settingValue(node, name) {
  const widget = node.widgets?.find((w) => w.name === name);
  const out = { value: widget?.value, linked: false, known: widget !== undefined };
  const slot = node.inputs?.find((i) => i.widget?.name === name);
  if (slot && slot.link != null) {
    out.linked = true;
    out.known = false;
    const link = getLink(node.graph, slot.link);
    const origin = link ? node.graph.getNodeById(link.origin_id) : null;
    const src = origin?.widgets?.find((w) => w.name === "value") ?? (origin?.type === "PrimitiveNode" ? origin.widgets?.[0] : null);
    if (src && src.value !== undefined && src.value !== null && src.value !== "") {
      out.value = src.value;
      out.known = true;
    }
  }
  return out;
}

function toInt(v, fallback) {
  const n = Number(v);
  return Number.isFinite(n) ? Math.round(n) : fallback;
}

function readSettings(node) {
  const hasFramesWidget = !!node.widgets?.some((w) => w.name === "frames");
  const frames = hasFramesWidget
    ? settingValue(node, "frames")
    : { value: node.properties?.[PREVIEW_PROPERTY] ?? DEFAULT_PREVIEW_FRAMES, linked: false, known: true };
  const schedule = settingValue(node, "context_schedule");
  const cf = settingValue(node, "context_frames");
  const co = settingValue(node, "context_overlap");
  const cb = settingValue(node, "context_batch_size");
  const unknown = [];
  for (const [name, s] of [["frames", frames], ["context_schedule", schedule], ["context_frames", cf],
                           ["context_overlap", co], ["context_batch_size", cb]]) {
    if (s.linked && !s.known) unknown.push(name);
  }
  return {
    schedule: String(schedule.value ?? "uniform_v2"),
    frames: toInt(frames.value, DEFAULT_PREVIEW_FRAMES),
    context_frames: toInt(cf.value, 12),
    context_overlap: toInt(co.value, 4),
    batch: toInt(cb.value, 1),
    n_vis: VISION_INPUTS.some((name) => isConnected(node, name)) ? 1 : 0,
    framesFrom: hasFramesWidget ? (frames.linked ? "input" : "widget") : "preview",
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
    batch: String(s.batch),
  }).toString();
}

// ------------------------------------------------------------------------------------------
// state per node: request the plan for the current settings, keep the last one for display
// ------------------------------------------------------------------------------------------
function stateOf(node) {
  if (!node.__musev) node.__musev = { key: null, shown: null, desired: 0 };
  return node.__musev;
}

function refresh(node) {
  const st = stateOf(node);
  const settings = readSettings(node);
  const key = queryOf(settings);
  if (st.key === key) return st.pending ?? Promise.resolve(node.musevLayout);
  if (st.retryKey === key && Date.now() < st.retryAt) return Promise.resolve(node.musevLayout);
  st.key = key;
  const layout = { key, settings, status: "loading", plan: null, error: null, drawn: null };
  if (!node.musevLayout) node.musevLayout = layout;
  st.pending = fetchPlan(key).then((body) => {
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
      batches: body.ok ? body.batches : null,
      unetFrames: body.ok ? body.unet_frames : null,
      drawn: null,
    };
    node.musevLayout = done;
    st.shown = done;
    if (body.transient) {
      // server unreachable / odd answer: show it, retry in a few seconds (not on every frame)
      st.key = null;
      st.retryKey = key;
      st.retryAt = Date.now() + RETRY_MS;
      setTimeout(() => node.setDirtyCanvas?.(true, true), RETRY_MS + 50);
    }
    updateBadge(node);
    growToFit(node);
    node.setDirtyCanvas?.(true, true);
    return done;
  });
  node.setDirtyCanvas?.(true, false);
  return st.pending;
}

// ------------------------------------------------------------------------------------------
// geometry
// ------------------------------------------------------------------------------------------
const G = {
  margin: 12,
  pad: 8,
  header: 18,
  axis: 13,
  rowGap: 2,
  rowMax: 12,
  rowMin: 4,
  cover: 13,
  footer: 16,
  label: 24,
};

function fixedHeight() {
  return G.pad + G.header + G.axis + 4 + G.cover + 4 + G.footer + G.pad;
}

function desiredHeight(node) {
  const plan = stateOf(node).shown?.plan;
  const rows = plan ? Math.min(plan.n_windows, MAX_ROWS) : 2;
  const shown = stateOf(node).shown;
  if (shown && shown.status === "error") {
    // room for the wrapped message (about 5.6 px per character at 10.5 px)
    const textWidth = Math.max(120, (node.size?.[0] ?? 340) - 2 * G.margin - 2 * G.pad - 14);
    const lines = Math.min(8, Math.ceil(((shown.error?.message || "").length * 5.6) / textWidth) + 1);
    return G.pad + G.header + 30 + lines * 13 + G.pad;
  }
  return fixedHeight() + rows * (G.rowMax + G.rowGap);
}

const MIN_HEIGHT = 96;

function growToFit(node) {
  const st = stateOf(node);
  const widget = node.widgets?.find((w) => w.name === LAYOUT_WIDGET);
  if (!widget) return;
  const want = desiredHeight(node);
  // computedHeight is from the last layout pass, which may predate the node's size (a loaded
  // workflow sets the saved size after creation): lay the widgets out for the current size first,
  // else every load grows the node again.
  node.arrange?.();
  const have = widget.computedHeight ?? 0;
  // Grow only when the plan needs more room than before (never fight a user's resize).
  if (want > st.desired && have > 0 && want > have + 1) {
    node.setSize([node.size[0], node.size[1] + (want - have)]);
  }
  st.desired = want;
}

// Rows to draw: all windows, or the first ones, an ellipsis row and the last one.
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
  for (const s of steps) if (s * cellWidth >= 26) return s;
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
  if (typeof ctx.roundRect === "function") ctx.roundRect(x, y, w, h, Math.min(r, w / 2, h / 2));
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
// drawing
// ------------------------------------------------------------------------------------------
function drawLayout(ctx, node, widget, width, y, lowQuality) {
  refresh(node);   // cheap when nothing changed: requests a plan when the settings did
  const st = stateOf(node);
  const shown = st.shown;
  const height = Math.max(MIN_HEIGHT, widget.computedHeight ?? MIN_HEIGHT) - 4;
  const x0 = G.margin;
  const w = Math.max(60, width - 2 * G.margin);

  ctx.save();
  // the widget is 'disabled' so that dragging on it moves the node; undo the disabled dimming
  ctx.globalAlpha = Math.min(1, ctx.globalAlpha * 2);
  roundRect(ctx, x0, y, w, height, 6);
  ctx.fillStyle = C.panel;
  ctx.fill();
  ctx.strokeStyle = C.panelEdge;
  ctx.lineWidth = 1;
  ctx.stroke();
  ctx.beginPath();
  ctx.rect(x0, y, w, height);
  ctx.clip();

  const loading = !shown || shown.key !== st.key;
  if (!shown) {
    drawHeader(ctx, x0, y, w, "computing windows…", null, lowQuality);
  } else if (shown.status === "error") {
    drawError(ctx, node, shown, x0, y, w, height, lowQuality);
  } else {
    if (loading) ctx.globalAlpha *= 0.55;
    drawPlan(ctx, node, shown, x0, y, w, height, lowQuality);
  }
  ctx.restore();
}

function drawHeader(ctx, x0, y, w, right, settings, lowQuality) {
  if (lowQuality) return;
  const ty = y + G.pad + 10;
  ctx.textBaseline = "alphabetic";
  ctx.font = `600 11px ${FONT}`;
  ctx.fillStyle = C.title;
  ctx.textAlign = "left";
  const title = "Context windows";
  ctx.fillText(title, x0 + G.pad, ty);
  const tw = ctx.measureText(title).width;
  ctx.font = `10px ${FONT}`;
  ctx.fillStyle = C.dim;
  ctx.textAlign = "right";
  ctx.fillText(fitText(ctx, right, w - tw - 3 * G.pad), x0 + w - G.pad, ty);
  ctx.textAlign = "left";
}

function drawError(ctx, node, shown, x0, y, w, height, lowQuality) {
  const s = shown.settings;
  drawHeader(ctx, x0, y, w, `${s.schedule} · ${s.frames} frames`, s, lowQuality);
  const bx = x0 + G.pad;
  const by = y + G.pad + G.header;
  const bw = w - 2 * G.pad;
  const bh = Math.max(24, height - G.header - 2 * G.pad);
  roundRect(ctx, bx, by, bw, bh, 5);
  ctx.fillStyle = C.errorBg;
  ctx.fill();
  ctx.strokeStyle = C.errorEdge;
  ctx.stroke();
  const message = shown.error?.message || "invalid settings";
  shown.drawn = { key: shown.key, error: message };
  if (lowQuality) return;
  ctx.font = `600 11px ${FONT}`;
  ctx.fillStyle = C.error;
  const param = shown.error?.param ? ` (${shown.error.param})` : "";
  const unavailable = shown.error?.type === "network" || shown.error?.type === "http";
  const title = unavailable ? "⚠ Window preview unavailable" : `⚠ Windows cannot be built${param}`;
  ctx.fillText(fitText(ctx, title, bw - 12), bx + 7, by + 15);
  ctx.font = `10.5px ${FONT}`;
  ctx.fillStyle = C.text;
  const lines = wrapText(ctx, message, bw - 14, Math.max(1, Math.floor((bh - 24) / 13)));
  lines.forEach((line, i) => ctx.fillText(line, bx + 7, by + 30 + i * 13));
}

function drawPlan(ctx, node, shown, x0, y, w, height, lowQuality) {
  const plan = shown.plan;
  const s = shown.settings;
  const N = plan.n_frames;
  const nVis = plan.n_vis;
  const frameSrc = s.framesFrom === "preview" ? " (preview)" : s.framesFrom === "input" ? " (input)" : "";
  drawHeader(ctx, x0, y, w, `${plan.schedule} · ${N} frames${frameSrc}`, s, lowQuality);

  // horizontal layout: [batch bar][label][vision][gap][frames ...][info]
  const showInfo = w >= 300 && !lowQuality;
  ctx.font = `10px ${FONT}`;
  const labelW = Math.max(G.label, Math.ceil(ctx.measureText(`w${plan.n_windows}`).width) + 9);
  const pick0 = pickRows(plan.n_windows, MAX_ROWS);
  let infoW = 0;
  if (showInfo) {
    ctx.font = `10px ${FONT}`;
    const texts = pick0.rows.filter((i) => i >= 0).map((i) => spanText(plan.windows[i]));
    texts.push(`${plan.min_count}–${plan.max_count}×`);
    infoW = Math.min(96, 10 + Math.max(...texts.map((t) => ctx.measureText(t).width)));
  }
  const visCell = nVis ? Math.max(9, Math.min(14, 0.6 * G.rowMax + 6)) : 0;
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

  // batch of each window
  const batchOf = new Array(plan.n_windows);
  plan.batches.forEach((b, bi) => b.forEach((wi) => (batchOf[wi] = bi)));

  // axis: frame ticks
  if (!lowQuality) {
    ctx.font = `9px ${FONT}`;
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
  }
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
      if (!lowQuality) {
        ctx.font = `10px ${FONT}`;
        ctx.fillStyle = C.dim;
        ctx.textAlign = "center";
        ctx.fillText(`… ${pick.hidden} more windows …`, gx + gw / 2, ry + rowH - 1);
        ctx.textAlign = "left";
      }
      return;
    }
    const frames = plan.windows[wi];
    const b = batchOf[wi] ?? 0;
    const color = BATCH_COLORS[b % BATCH_COLORS.length];
    drawnRows.push({ window: wi, frames: frames.slice(), batch: b, color, y: ry, height: rowH });
    // label
    if (!lowQuality && rowH >= 7) {
      ctx.font = `${Math.min(10, rowH)}px ${FONT}`;
      ctx.fillStyle = C.dim;
      ctx.textAlign = "right";
      ctx.fillText(`w${wi + 1}`, x0 + G.pad + labelW - 5, ry + rowH - 1.5);
      ctx.textAlign = "left";
    }
    // batch bar: windows of one UNet call share a colour and a bar on the left
    ctx.fillStyle = color;
    ctx.fillRect(x0 + G.pad - 3, ry, 3, rowH + (batchOf[wi + 1] === b && r + 1 < nRows && pick.rows[r + 1] === wi + 1 ? G.rowGap : 0));
    // vision frames
    for (let v = 0; v < nVis; v++) {
      const vx = x0 + G.pad + labelW + v * visCell;
      roundRect(ctx, vx + 0.5, ry, visCell - 1.5, rowH, 2);
      ctx.fillStyle = C.vision;
      ctx.fill();
      if (!lowQuality && rowH >= 9 && visCell >= 9) {
        ctx.font = `700 ${Math.min(9, rowH - 1)}px ${FONT}`;
        ctx.fillStyle = C.visionText;
        ctx.textAlign = "center";
        ctx.fillText("V", vx + visCell / 2 - 0.5, ry + rowH - 2);
        ctx.textAlign = "left";
      }
    }
    // the window's frames, as runs (a looped window that wraps draws two runs)
    for (const [a, z] of runsOf(frames)) {
      const rx = fx(a) + (cw >= 4 ? 0.75 : 0);
      const rw = Math.max(1, fx(z + 1) - fx(a) - (cw >= 4 ? 1.5 : 0));
      roundRect(ctx, rx, ry, rw, rowH, Math.min(3, rowH / 2));
      ctx.fillStyle = color;
      ctx.fill();
    }
    // frame separators inside the runs when frames are wide enough
    if (cw >= 7) {
      ctx.fillStyle = "rgba(0, 0, 0, 0.22)";
      for (const f of frames) ctx.fillRect(Math.round(fx(f + 1)) - 0.5, ry + 1, 1, rowH - 2);
    }
    if (showInfo && rowH >= 7) {
      ctx.font = `${Math.min(10, rowH)}px ${FONT}`;
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
  if (!lowQuality) {
    ctx.font = `9px ${FONT}`;
    ctx.fillStyle = C.dim;
    ctx.textAlign = "right";
    ctx.fillText("×", x0 + G.pad + labelW - 5, cy + G.cover - 3);
    if (cw >= 8) {
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
  }

  // footer: what one UNet call sees
  if (!lowQuality) {
    const F = Math.max(...plan.windows.map((win) => win.length));
    const perCall = Math.max(...plan.batch_unet_frames);
    const calls = plan.n_batches;
    const perWindow = nVis ? `${nVis}V+${F}` : `${F}`;
    const parts = [
      `${plan.n_windows} window${plan.n_windows === 1 ? "" : "s"} of ${perWindow}`,
      `${calls} UNet call${calls === 1 ? "" : "s"}/step`,
      `≤${perCall} frames/call`,
    ];
    if (s.unknown.length) parts.push(`linked: ${s.unknown.join(", ")} (widget value shown)`);
    ctx.font = `10px ${FONT}`;
    ctx.fillStyle = C.text;
    ctx.fillText(fitText(ctx, parts.join(" · "), w - 2 * G.pad), x0 + G.pad, y + height - G.pad - 3);
  }

  // what was drawn, with its geometry in node coordinates (frame f spans gridX + f·cellWidth ...)
  shown.drawn = {
    key: shown.key,
    rows: drawnRows,
    hiddenWindows: pick.hidden,
    nVis,
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
// badge: "3 windows" above the title, readable when the node is collapsed
// ------------------------------------------------------------------------------------------
function updateBadge(node) {
  const Badge = window.LGraphBadge;
  if (typeof Badge !== "function" || !Array.isArray(node.badges)) return;
  const st = stateOf(node);
  const shown = st.shown;
  const n = shown?.plan?.n_windows;
  const text = !shown ? "" : shown.status === "ok" ? `${n} window${n === 1 ? "" : "s"}` : "windows: error";
  if (!st.badge) {
    st.badge = new Badge({ text, fgColor: "#efe6ff", bgColor: "#5b4387", fontSize: 11, padding: 5, height: 18 });
    node.badges.push(() => st.badge);
  }
  st.badge.text = text;
  st.badge.bgColor = shown && shown.status !== "ok" ? "#8a2d3a" : "#5b4387";
}

// ------------------------------------------------------------------------------------------
// node setup
// ------------------------------------------------------------------------------------------
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
      node.setDirtyCanvas?.(true, true);
    },
    { min: 1, max: 4096, step: 10, precision: 0, round: 1, serialize: false, property: PREVIEW_PROPERTY }
  );
  widget.serialize = false;
  widget.tooltip = "Preview only: the video length to draw the windows for. At sampling time the length " +
    "comes from the latent (frames = batch); this value is not sent to the server.";
}

function addLayoutWidget(node) {
  if (node.widgets?.some((w) => w.name === LAYOUT_WIDGET)) return;
  const widget = {
    name: LAYOUT_WIDGET,
    type: "musev.windows",
    value: "",
    options: { serialize: false },
    serialize: false,
    disabled: true, // pointer events go to the node (drag it by the chart), not to the widget
    y: 0,
    tooltip: "MuseV context windows: rows = windows (frames they denoise), V = vision-condition frame " +
      "every window sees, × = windows averaged per frame; colours = UNet calls (context_batch_size).",
    computeLayoutSize() {
      return { minHeight: MIN_HEIGHT, maxHeight: Math.max(MIN_HEIGHT, desiredHeight(node)), minWidth: 240 };
    },
    draw(ctx, n, width, y, _H, lowQuality) {
      try {
        drawLayout(ctx, n, this, width, y, lowQuality);
      } catch (e) {
        if (!stateOf(n).drawFailed) console.error("[MuseV] window preview failed to draw", e);
        stateOf(n).drawFailed = true;
      }
    },
  };
  node.addCustomWidget(widget);
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
    const isMuseV = typeof nodeData?.category === "string" &&
      (nodeData.category === CATEGORY || nodeData.category.startsWith(CATEGORY + "/"));
    if (!isMuseV) return;
    const proto = nodeType.prototype;
    chain(proto, "onNodeCreated", function () {
      if (!this.color) this.color = NODE_COLOR;
      if (!this.bgcolor) this.bgcolor = NODE_BGCOLOR;
    });
    if (!WINDOW_NODES.has(nodeData.name)) return;
    chain(proto, "onNodeCreated", function () {
      addPreviewFramesWidget(this);
      addLayoutWidget(this);
      const size = this.computeSize();
      this.setSize([Math.max(this.size[0], size[0], 340), Math.max(this.size[1], size[1])]);
      this.musevRefresh = () => refresh(this);
    });
    chain(proto, "onConfigure", function () {
      const w = this.widgets?.find((x) => x.name === PREVIEW_WIDGET);
      if (w && this.properties?.[PREVIEW_PROPERTY] !== undefined) w.value = this.properties[PREVIEW_PROPERTY];
      this.setDirtyCanvas?.(true, true);
    });
    chain(proto, "onConnectionsChange", function () {
      this.setDirtyCanvas?.(true, true);
    });
    chain(proto, "onWidgetChanged", function () {
      this.setDirtyCanvas?.(true, true);
    });
    chain(proto, "onPropertyChanged", function (name, value) {
      if (name !== PREVIEW_PROPERTY) return;
      const w = this.widgets?.find((x) => x.name === PREVIEW_WIDGET);
      if (w) w.value = value;
      this.setDirtyCanvas?.(true, true);
    });
  },
});
