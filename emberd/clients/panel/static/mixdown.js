// emberd panel, mix-down view: per-channel class and loudness, masking heat map with its
// scale and suggestions; the library map's class colours, legend, search, zoom/pan;
// the sample view (waveform, play/stop, duration, find similar, drag out as a file).
// Loaded after app.js; shares its `state` (window.emberdState) and helpers.
"use strict";

const CLASS_COLOURS = {
  kick: "#ff5d5d", snare: "#ffb13d", clap: "#ffe066", closed_hat: "#9be564", open_hat: "#3ddc97",
  tom: "#ff8fab", cymbal: "#4cc9f0", percussion: "#b388ff", bass: "#4361ee", keys: "#c77dff",
  pad: "#72efdd", lead: "#f72585", vocal: "#fca311", fx: "#adb5bd", loop: "#8d99ae",
};
const UNKNOWN_COLOUR = "rgba(160, 165, 175, 0.55)";
const METER_FLOOR_LUFS = -60;  // the loudness meter's left end
const SILENT_CELL = "#2b2f37";  // masking cell where the maskee never played (no evidence)


// ---------------------------------------------------------------- colour ramps
// 0 -> dark blue, 0.5 -> orange, 1 -> hot yellow-red: "hot" where masking is strong.
function heat(t) {
  t = Math.max(0, Math.min(1, t));
  const stops = [[0, [22, 30, 60]], [0.5, [230, 110, 40]], [1, [255, 40, 30]]];
  let i = 0;
  while (i < stops.length - 2 && t > stops[i + 1][0]) i++;
  const [t0, a] = stops[i], [t1, b] = stops[i + 1], u = (t - t0) / (t1 - t0);
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * u)).join(",")})`;
}
const classColour = (cls) => CLASS_COLOURS[cls] || UNKNOWN_COLOUR;
const classLabel = (cls) => (cls ? cls.replace("_", " ") : "–");

// ---------------------------------------------------------------- messages
function mixChannel(ch) {
  if (!state.mix.channels[ch]) {
    state.mix.channels[ch] = { cls: null, confidence: 0, signal: false };
    const div = document.createElement("div");
    div.className = "mix-ch nosignal";
    div.dataset.ch = ch;
    div.innerHTML = `<span class="mname">ch ${ch}</span><span class="cls">–</span>
      <div class="meter" title="momentary loudness, ${METER_FLOOR_LUFS} to 0 LUFS"><span></span></div>
      <span class="lufs">no signal</span>
      <canvas class="balance" width="300" height="34" title="1/3-octave balance (dB re the stem's total); line: the reference"></canvas>`;
    const list = $("mix");
    const after = [...list.children].find((c) => Number(c.dataset.ch) > ch);
    list.insertBefore(div, after || null);
  }
  return state.mix.channels[ch];
}

function mixHandle(msg) {
  if (msg.kind === "class") {
    const c = mixChannel(msg.channel);
    c.cls = msg.cls; c.confidence = msg.confidence; c.signal = msg.signal;
    drawMixChannel(msg.channel);
  } else if (msg.kind === "loudness") {
    const c = mixChannel(msg.channel);
    Object.assign(c, { signal: msg.signal, momentary: msg.momentary, short_term: msg.short_term,
      integrated: msg.integrated, true_peak: msg.true_peak, crest_db: msg.crest_db,
      balance: msg.balance_db || [], reference: msg.reference_db });
    drawMixChannel(msg.channel);
  } else if (msg.kind === "masking") {
    state.mix.masking = msg;
    drawMasking();
  }
}

const num = (v, d = 1) => (typeof v === "number" ? v.toFixed(d) : "–");

function drawMixChannel(ch) {
  const c = state.mix.channels[ch];
  const div = document.querySelector(`.mix-ch[data-ch="${ch}"]`);
  div.classList.toggle("nosignal", !c.signal);
  const cls = div.querySelector(".cls");
  cls.textContent = c.signal ? `${classLabel(c.cls)} ${c.cls ? num(c.confidence, 2) : ""}` : "–";
  cls.style.color = c.signal ? classColour(c.cls) : "";
  const pct = c.signal ? Math.max(0, Math.min(100, (c.momentary - METER_FLOOR_LUFS) / -METER_FLOOR_LUFS * 100)) : 0;
  div.querySelector(".meter > span").style.width = pct + "%";
  div.querySelector(".lufs").textContent = c.signal
    ? `M ${num(c.momentary)} · S ${num(c.short_term)} · I ${num(c.integrated)} LUFS · TP ${num(c.true_peak)} dBTP · crest ${num(c.crest_db)} dB`
    : "no signal";
  drawBalance(div.querySelector(".balance"), c);
}

// 1/3-octave balance, 20 Hz to 20 kHz, -40..0 dB re the stem's total; the reference as a line.
function drawBalance(cv, c) {
  const ctx = cv.getContext("2d"), w = cv.width, h = cv.height, b = c.balance || [];
  ctx.clearRect(0, 0, w, h);
  if (!c.signal || !b.length) return;
  const bw = w / b.length, y = (db) => Math.max(0, Math.min(h, -db / 40 * h));
  ctx.fillStyle = classColour(c.cls);
  b.forEach((db, i) => { if (db !== null) ctx.fillRect(i * bw, y(db), Math.max(1, bw - 1), h - y(db)); });
  if (c.reference) {
    ctx.strokeStyle = "#e4e6eb"; ctx.lineWidth = 1; ctx.beginPath();
    c.reference.forEach((db, i) => { const x = (i + 0.5) * bw; i ? ctx.lineTo(x, y(db)) : ctx.moveTo(x, y(db)); });
    ctx.stroke();
  }
}

// ---------------------------------------------------------------- masking heat map
function drawMasking() {
  const m = state.mix.masking, cv = $("mask"), ctx = cv.getContext("2d");
  ctx.fillStyle = "#101217"; ctx.fillRect(0, 0, cv.width, cv.height);
  state.mix.maskCells = [];
  if (!m || !m.channels || m.channels.length < 2) {
    ctx.fillStyle = "#8a909c"; ctx.font = "12px system-ui";
    ctx.fillText("masking needs two or more channels", 12, 24);
    drawSuggestions([]);
    return;
  }
  const chans = m.channels, n = chans.length, bands = m.band_edges_hz.length - 1;
  const rows = [];
  for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) if (a !== b) rows.push([a, b]);
  const left = 64, top = 6, bottom = 22;
  const cw = (cv.width - left - 4) / bands, rh = Math.max(4, (cv.height - top - bottom) / rows.length);
  rows.forEach(([a, b], r) => {
    const y = top + r * rh;
    for (let z = 0; z < bands; z++) {
      const v = m.fraction[a][b][z];
      const x = left + z * cw;
      ctx.fillStyle = v === null || v === undefined ? SILENT_CELL : heat(v);
      ctx.fillRect(x, y, Math.max(1, cw - 1), Math.max(1, rh - 1));
      state.mix.maskCells.push({ masker: chans[a], maskee: chans[b], band: z, value: v,
        x: x + cw / 2, y: y + rh / 2 });
    }
    if (rh >= 9) {
      ctx.fillStyle = "#c9ccd3"; ctx.font = `${Math.min(11, rh - 1)}px system-ui`; ctx.textAlign = "right";
      ctx.fillText(`${chans[a]}→${chans[b]}`, left - 6, y + rh / 2 + 4);
    }
  });
  // Frequency axis: a few band edges.
  ctx.fillStyle = "#8a909c"; ctx.font = "10px system-ui"; ctx.textAlign = "center";
  const edges = m.band_edges_hz;
  for (const f of [100, 500, 1000, 4000, 12000]) {
    const z = edges.findIndex((e) => e >= f);
    if (z > 0) ctx.fillText(f >= 1000 ? `${f / 1000}k` : `${f}`, left + z * cw, cv.height - 6);
  }
  ctx.textAlign = "left";
  ctx.fillText("Hz", cv.width - 18, cv.height - 6);
  drawSuggestions(m.suggestions || []);
}

function drawScale() {
  const cv = $("mask-scale"), ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  const w = cv.width - 20;
  for (let x = 0; x < w; x++) { ctx.fillStyle = heat(x / (w - 1)); ctx.fillRect(10 + x, 4, 1, 10); }
  ctx.fillStyle = SILENT_CELL; ctx.fillRect(10, 4, 0, 10);
  ctx.fillStyle = "#8a909c"; ctx.font = "10px system-ui";
  ctx.textAlign = "left"; ctx.fillText("0 %", 10, 26);
  ctx.textAlign = "center"; ctx.fillText("50 %", 10 + w / 2, 26);
  ctx.textAlign = "right"; ctx.fillText("100 % of the time masked", 10 + w, 26);
  ctx.textAlign = "left";
}

function drawSuggestions(list) {
  const ul = $("suggestions");
  const html = list.length
    ? list.map((s) => `<li>${esc(s.text)}</li>`).join("")
    : '<li class="none">no stem masks another</li>';
  if (ul.innerHTML !== html) ul.innerHTML = html;
}

// ---------------------------------------------------------------- library map: classes
function pointColour(p) { return classColour(p.cls); }

function drawMapLegend() {
  const counts = {};
  for (const p of state.map.points) counts[p.cls || "unknown"] = (counts[p.cls || "unknown"] || 0) + 1;
  const order = [...Object.keys(CLASS_COLOURS), "unknown"].filter((c) => counts[c]);
  $("map-legend").innerHTML = order.map((c) =>
    `<span class="legend-item" data-cls="${c}"><i style="background:${c === "unknown" ? UNKNOWN_COLOUR : classColour(c)}"></i>${esc(classLabel(c === "unknown" ? null : c) === "–" ? "unknown" : classLabel(c))} <b>${counts[c]}</b></span>`).join("");
}

function searchMap(q) {
  state.view.query = q.trim().toLowerCase();
  state.view.matches = state.view.query
    ? state.map.points.filter((p) => p.name.toLowerCase().includes(state.view.query)).length : 0;
  $("map-search-info").textContent = state.view.query ? `${state.view.matches} found` : "";
}
const isHit = (p) => !state.view.query || p.name.toLowerCase().includes(state.view.query);

// Zoom about the pointer with the wheel, pan by dragging, double-click to reset.
function initMapView() {
  const cv = $("map");
  cv.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const before = fromCanvasEvent(ev);
    state.view.zoom = Math.max(1, Math.min(40, state.view.zoom * (ev.deltaY < 0 ? 1.25 : 0.8)));
    const after = fromCanvasEvent(ev);
    state.view.cx += before[0] - after[0]; state.view.cy += before[1] - after[1];
  }, { passive: false });
  let drag = null;
  cv.addEventListener("mousedown", (ev) => { drag = [ev.clientX, ev.clientY, state.view.cx, state.view.cy, false]; });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const r = cv.getBoundingClientRect();
    const dx = (ev.clientX - drag[0]) / r.width * 2 / state.view.zoom;
    const dy = (ev.clientY - drag[1]) / r.height * 2 / state.view.zoom;
    if (Math.abs(dx) + Math.abs(dy) > 0.01) drag[4] = true;
    state.view.cx = drag[2] - dx; state.view.cy = drag[3] + dy;
  });
  window.addEventListener("mouseup", () => { state.view.dragged = drag && drag[4]; drag = null; });
  cv.addEventListener("dblclick", () => { Object.assign(state.view, { zoom: 1, cx: 0, cy: 0 }); });
  $("map-search").addEventListener("input", (ev) => searchMap(ev.target.value));
  $("map-search").addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter") return;
    const p = state.map.points.find(isHit);
    if (p) { select(p.id); Object.assign(state.view, { cx: p.x, cy: p.y, zoom: Math.max(state.view.zoom, 4) }); }
  });
}

function fromCanvasEvent(ev) {
  const cv = $("map"), r = cv.getBoundingClientRect();
  const sx = (ev.clientX - r.left) * cv.width / r.width, sy = (ev.clientY - r.top) * cv.height / r.height;
  const w = cv.width - 2 * PAD, h = cv.height - 2 * PAD;
  const x = ((sx - PAD) / w * 2 - 1) / state.view.zoom + state.view.cx;
  const y = (1 - (sy - PAD) / h * 2) / state.view.zoom + state.view.cy;
  return [x, y];
}

// ---------------------------------------------------------------- sample view
function select(id) {
  const p = state.map.points.find((q) => q.id === id);
  if (!p) return;
  state.mix.selected = id;
  state.mix.similar = [];
  $("sample").hidden = false;
  $("sample-name").textContent = p.name;
  $("sample-cls").textContent = classLabel(p.cls) + (p.cls_src === "model" ? " (guessed)" : "");
  $("sample-cls").style.color = classColour(p.cls);
  $("sample-dur").textContent = typeof p.dur === "number" ? p.dur.toFixed(2) + " s" : "–";
  const drag = $("sample-drag");
  drag.dataset.id = id;
  drag.dataset.name = p.name;
  $("similar").innerHTML = "";
  drawWaveform(id);
}

async function drawWaveform(id) {
  const cv = $("wave"), ctx = cv.getContext("2d");
  ctx.fillStyle = "#101217"; ctx.fillRect(0, 0, cv.width, cv.height);
  try {
    const buf = await (await fetch(`/audio/${id}`)).arrayBuffer();
    const audio = await new OfflineAudioContext(1, 1, 44100).decodeAudioData(buf);
    if (state.mix.selected !== id) return;
    const data = audio.getChannelData(0), w = cv.width, h = cv.height, per = Math.max(1, Math.floor(data.length / w));
    ctx.fillStyle = classColour((state.map.points.find((q) => q.id === id) || {}).cls);
    for (let x = 0; x < w; x++) {
      let lo = 0, hi = 0;
      for (let i = x * per; i < Math.min(data.length, (x + 1) * per); i++) { lo = Math.min(lo, data[i]); hi = Math.max(hi, data[i]); }
      ctx.fillRect(x, (1 - hi) * h / 2, 1, Math.max(1, (hi - lo) * h / 2));
    }
    state.mix.waveformDrawn = id;
  } catch (e) {
    ctx.fillStyle = "#8a909c"; ctx.font = "12px system-ui"; ctx.fillText("cannot decode this sample", 10, 20);
  }
}

async function findSimilar() {
  const id = state.mix.selected;
  if (id === null) return;
  const found = await (await fetch(`/similar/${id}`)).json();
  state.mix.similar = found;
  $("similar").innerHTML = found.map((m) =>
    `<li data-id="${m.id}"><span>${esc(m.name)}</span><b>${m.score.toFixed(3)}</b></li>`).join("")
    || '<li class="none">nothing similar</li>';
}

function initSampleView() {
  $("sample-play").addEventListener("click", () => { if (state.mix.selected !== null) audition(state.mix.selected); });
  $("sample-stop").addEventListener("click", () => { const pl = $("player"); pl.pause(); pl.currentTime = 0; });
  $("sample-similar").addEventListener("click", findSimilar);
  $("similar").addEventListener("click", (ev) => {
    const li = ev.target.closest("li[data-id]");
    if (li) select(Number(li.dataset.id));
  });
  // Drag the sample out of the page: Chromium saves DownloadURL data as a file.
  $("sample-drag").addEventListener("dragstart", (ev) => {
    const d = ev.currentTarget.dataset;
    const name = (d.name || "sample").replace(/:/g, "_").replace(/\.[^.]*$/, "") + ".wav";
    ev.dataTransfer.setData("DownloadURL", `audio/wav:${name}:${location.origin}/audio/${d.id}`);
    ev.dataTransfer.setData("text/uri-list", `${location.origin}/audio/${d.id}`);
  });
}

window.emberdMix = { handle: mixHandle, select, findSimilar, pointColour, isHit, searchMap, drawMapLegend };
drawScale();
drawMasking();
initMapView();
initSampleView();
