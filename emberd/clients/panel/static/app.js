// emberd panel: live matches, library map with channel cursors, similarity heat map
// (mixdown.js: the mix-down view, class colours, map search/zoom, sample view).
// Talks only to the server that served it: /ws (JSON messages), /map.json, /audio/<id>.
// The connection badge tells the truth: data replayed on (re)load or left over after the
// daemon went away is dimmed and labelled with its age, never shown as "connected".
"use strict";

const PALETTE = ["#ff8a3d", "#4cc9f0", "#80ed99", "#f72585", "#ffd166", "#b388ff", "#06d6a0", "#ef476f"];
const TRAIL_POINTS = 24;        // past cursor positions drawn per channel
const CURSOR_SMOOTHING = 0.35;  // fraction of the way to the target per animation frame
const RECONNECT_MS = 1000;      // wait before reopening a dropped WebSocket
const SHOW_MATCHES = 5;
const RESTART_NOTE_MS = 10000;  // "daemon restarted" shows this long, then plain "connected"
const AGE_TICK_MS = 1000;       // stale-age labels refresh this often

const state = {
  connected: false, messages: 0, matchMessages: 0, cursorMoves: 0,
  map: { points: [], model: null }, cursors: {}, channels: {}, similarity: null,
  playingId: null, clockOffset: 0, connState: "waiting", restartedAt: 0, lastDataAt: null,
  player: { id: null, position: 0, duration: 0, playing: false },
  // mix-down view (mixdown.js); here so that a frame drawn before mixdown.js runs finds them
  mix: { channels: {}, masking: null, maskCells: [], selected: null, similar: [] },
  view: { zoom: 1, cx: 0, cy: 0, query: "", matches: 0, dragged: false },
};
window.emberdState = state;  // for tests and curious users

const colour = (ch) => PALETTE[ch % PALETTE.length];
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- connection
function setConn(cls, text) {
  const el = $("conn");
  el.className = "conn " + cls;
  el.dataset.state = cls;
  el.textContent = text;
  state.connState = cls;
  if (cls === "restarted") state.restartedAt = Date.now();
  updateAges();
}

// Server time now (the server stamps every message with received_at, its own clock).
const serverNow = () => Date.now() / 1000 + state.clockOffset;

function age(seconds) {
  const s = Math.max(0, seconds);
  return s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}

// Stale = the data on screen is not live: the daemon is silent or stopped, or the page
// only has replayed data. Dim it and label it with its age; clear the restart note.
function isStale() {
  return state.connState === "silent" || state.connState === "stopped" ||
    (state.connState === "waiting" && state.lastDataAt !== null);
}
function updateAges() {
  const stale = isStale();
  document.body.classList.toggle("stale", stale);
  const now = serverNow();
  for (const [ch, c] of Object.entries(state.channels)) {
    const el = document.querySelector(`#ch-${ch} .age`);
    if (el) el.textContent = stale && c.receivedAt ? `stale · ${age(now - c.receivedAt)} old` : "";
  }
  const conn = $("conn");
  if (stale && state.lastDataAt !== null && state.connState !== "waiting") {
    const what = state.connState === "stopped" ? "daemon stopped" : "daemon silent";
    conn.textContent = `${what} — last data ${age(now - state.lastDataAt)} ago; waiting…`;
  }
  if (state.connState === "restarted" && Date.now() - state.restartedAt > RESTART_NOTE_MS) {
    setConn("connected", "connected");
  }
}
setInterval(updateAges, AGE_TICK_MS);

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => { state.connected = true; setConn("waiting", "waiting for daemon…"); };
  ws.onclose = () => {
    state.connected = false;
    setConn("waiting", "panel server gone — retrying…");
    setTimeout(connect, RECONNECT_MS);
  };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    state.messages++;
    handle(msg);
  };
}

function handle(msg) {
  if (msg.received_at !== undefined) {
    state.lastDataAt = Math.max(state.lastDataAt ?? 0, msg.received_at);
    if (msg.channel !== undefined && msg.channel >= 0 && msg.kind !== "cursor") {
      channel(msg.channel).receivedAt = msg.received_at;
    }
    if (!msg.replay) live();  // replayed data (page reload) is old: it proves nothing
  }
  switch (msg.kind) {
    case "hello":
      if (typeof msg.server_time === "number") state.clockOffset = msg.server_time - Date.now() / 1000;
      break;
    case "connection":
      if (msg.state === "waiting") setConn("waiting", "waiting for daemon…");
      else if (msg.state === "silent") setConn("silent", "daemon silent — waiting…");
      else if (msg.state === "stopped") setConn("stopped", "daemon stopped — waiting…");
      else if (msg.state === "restarted") { setConn("restarted", "connected — daemon restarted"); resetChannels(); }
      else setConn("connected", "connected");
      break;
    case "match": onMatch(msg); break;
    case "tag": channel(msg.channel).tags = msg.tags; renderChannel(msg.channel); break;
    case "level": onLevel(msg); break;
    case "hit": onHit(msg); break;
    case "cursor": onCursor(msg); break;
    case "similarity": state.similarity = msg; drawSimilarity(); break;
    case "class": case "loudness": case "masking": window.emberdMix.handle(msg); break;
    case "status":
      onStatus(msg.status || {});
      if (msg.status && msg.status.final && !msg.replay) setConn("stopped", "daemon stopped — waiting…");
      break;
  }
  $("st-msgs").textContent = state.messages;
}

function live() {
  const s = state.connState;
  if (s === "waiting" || s === "silent" || s === "stopped") setConn("connected", "connected");
}

// ---------------------------------------------------------------- status
function find(obj, names) {
  for (const n of names) if (obj && obj[n] !== undefined && obj[n] !== null) return obj[n];
  for (const v of Object.values(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      const f = find(v, names);
      if (f !== undefined) return f;
    }
  }
  return undefined;
}
const ms = (v) => (typeof v === "number" ? v.toFixed(1) + " ms" : "–");

function onStatus(st) {
  const model = find(st, ["model"]);
  $("st-model").textContent = model ?? "–";
  if (model && state.map.model && model !== state.map.model) {
    // Live embeddings of another model cannot be placed on this map.
    $("map-info").textContent = `map is ${state.map.model}, daemon runs ${model}: no cursors`;
  }
  $("st-provider").textContent = find(st, ["provider"]) ?? "–";
  $("st-p50").textContent = ms(find(st, ["latency_p50_ms", "hop_latency_p50_ms", "p50_ms"]));
  $("st-p99").textContent = ms(find(st, ["latency_p99_ms", "hop_latency_p99_ms", "p99_ms"]));
  $("st-overflows").textContent = find(st, ["overflows"]) ?? "0";
  $("st-outputs").textContent = outputsText(st.outputs);
}

// Per output: "zmq ok · osc 12 dropped · mysink disabled, 50 errors" (daemon status.outputs).
function outputsText(outputs) {
  if (!outputs || typeof outputs !== "object") return "–";
  return Object.keys(outputs).sort().map((name) => {
    const o = outputs[name] || {};
    const bits = [];
    if (o.disabled) bits.push("disabled");
    if (o.dropped) bits.push(`${o.dropped} dropped`);
    if (o.errors) bits.push(`${o.errors} errors`);
    return `${name} ${bits.length ? bits.join(", ") : "ok"}`;
  }).join(" · ") || "–";
}

// ---------------------------------------------------------------- channels
function channel(ch) {
  if (!state.channels[ch]) {
    const c = { matches: [], tags: [], rms_db: -120, onset: false, receivedAt: null, hold: false };
    state.channels[ch] = c;
    const div = document.createElement("div");
    div.className = "channel";
    div.id = "ch-" + ch;
    div.style.setProperty("--c", colour(ch));
    div.innerHTML = `<div class="head"><span class="name">ch ${ch}</span>
      <div class="level"><span></span></div><span class="db">–</span></div>
      <div class="age"></div>
      <div class="hit" aria-live="polite"></div>
      <div class="tags"></div><ol class="matches"></ol>`;
    // Hold the list while the pointer is over it: rows re-sort every hop, and a click
    // must audition the row that was read, not the one that moved under the pointer.
    const ol = div.querySelector(".matches");
    ol.addEventListener("mouseenter", () => { c.hold = true; ol.classList.add("held"); });
    ol.addEventListener("mouseleave", () => { c.hold = false; ol.classList.remove("held"); renderChannel(ch); });
    const list = $("channels");
    const after = [...list.children].find((c) => Number(c.id.slice(3)) > ch);
    list.insertBefore(div, after || null);
  }
  return state.channels[ch];
}

function resetChannels() {
  state.channels = {};
  state.cursors = {};
  $("channels").innerHTML = "";
}

function onMatch(msg) {
  state.matchMessages++;
  channel(msg.channel).matches = msg.matches || [];
  renderChannel(msg.channel);
}

function onLevel(msg) {
  const c = channel(msg.channel);
  c.rms_db = msg.rms_db; c.onset = msg.onset;
  const div = $("ch-" + msg.channel);
  const pct = Math.max(0, Math.min(100, (msg.rms_db + 60) / 60 * 100));
  div.querySelector(".level > span").style.width = pct + "%";
  div.querySelector(".level").classList.toggle("onset", !!msg.onset);
  div.querySelector(".db").textContent = msg.rms_db.toFixed(1) + " dB";
}

// A hit: the newest stage of the newest hit (provisional, refined, final), with its
// answer's kind and calibrated confidence and the onset-to-publish latency.
function onHit(msg) {
  channel(msg.channel);
  const top = (msg.matches || [])[0];
  const what = top ? `${top.name} (${top.kind} ${(top.confidence ?? 0).toFixed(2)})` : "no answer";
  const el = $("ch-" + msg.channel).querySelector(".hit");
  el.textContent = `hit ${msg.hit} ${msg.stage}: ${what} · ${Math.round(msg.latency_ms ?? 0)} ms`;
  el.dataset.kind = top ? top.kind : "none";
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// Messages arrive every hop (~43/s per channel): mark channels dirty and redraw them
// once per animation frame, updating rows in place so a click never hits a replaced row.
const dirty = new Set();
function renderChannel(ch) {
  if (!dirty.size) requestAnimationFrame(flushChannels);
  dirty.add(Number(ch));
}
function flushChannels() {
  for (const ch of dirty) if (state.channels[ch]) drawChannel(ch);
  dirty.clear();
}

function drawChannel(ch) {
  const c = state.channels[ch];
  const div = $("ch-" + ch);
  const tagHtml = (c.tags || []).slice(0, 4)
    .map((t) => `<span class="tag">${esc(t.tag)} <b>${t.confidence.toFixed(2)}</b></span>`).join("");
  const tagsEl = div.querySelector(".tags");
  if (tagsEl.innerHTML !== tagHtml) tagsEl.innerHTML = tagHtml;
  const list = div.querySelector(".matches");
  if (c.hold) return;  // held under the pointer (see channel()); redrawn on mouseleave
  const shown = c.matches.slice(0, SHOW_MATCHES);
  while (list.children.length < shown.length) {
    const li = document.createElement("li");
    li.className = "match";
    li.innerHTML = '<span class="mname"><span class="n"></span><small></small></span>' +
      '<span class="score"></span><span class="bar"></span>';
    list.appendChild(li);
  }
  while (list.children.length > shown.length) list.lastChild.remove();
  const top = shown.length ? shown[0].score : 1;
  shown.forEach((m, i) => {
    const li = list.children[i];
    const id = m.id === null || m.id === undefined ? "" : String(m.id);
    const tags = (m.tags || []).join(" · ");
    li.dataset.id = id;
    li.dataset.name = m.name;
    li.title = tags;
    li.classList.toggle("playing", id !== "" && Number(id) === state.playingId);
    li.querySelector(".n").textContent = m.name;
    li.querySelector("small").textContent = tags;
    li.querySelector(".score").textContent = m.score.toFixed(3);
    const width = Math.max(2, Math.round(100 * Math.max(0, m.score) / Math.max(top, 1e-6)));
    li.querySelector(".bar").style.width = width + "%";
  });
}

$("channels").addEventListener("click", (ev) => {
  const li = ev.target.closest(".match");
  if (li && li.dataset.id !== "") audition(Number(li.dataset.id));  // the row's own id
});

// ---------------------------------------------------------------- player
// A click on a match row auditions that row's own library id (the list is held under the
// pointer, see channel()) and shows it in the sample view (mixdown.js: name, class,
// waveform, play/stop); the position readout and playhead follow the audio element.
function audition(id) {
  const player = $("player");
  state.playingId = id;
  state.player = { id, position: 0, duration: 0, playing: false };
  if (window.emberdMix && state.mix.selected !== id) window.emberdMix.select(id);
  player.src = `/audio/${id}`;
  player.play().catch(() => {});  // autoplay rules: the click itself allows playback
  Object.keys(state.channels).forEach(renderChannel);
}

const audioEl = $("player");
for (const ev of ["timeupdate", "play", "pause", "ended", "seeked", "loadedmetadata"]) {
  audioEl.addEventListener(ev, () => {
    const p = state.player || {};
    p.position = audioEl.currentTime || 0;
    p.duration = Number.isFinite(audioEl.duration) ? audioEl.duration : 0;
    p.playing = !audioEl.paused && !audioEl.ended;
    const pos = $("sample-pos");
    if (pos) pos.textContent = `${p.position.toFixed(2)} / ${p.duration.toFixed(2)} s`;
    const head = $("sample-head-pos");
    if (head && p.duration > 0) head.style.left = `${(100 * p.position) / p.duration}%`;
  });
}

// ---------------------------------------------------------------- map
const mapCanvas = $("map");
const mctx = mapCanvas.getContext("2d");
const PAD = 28;

function toCanvas(x, y) {  // zoom and pan: state.view (mixdown.js)
  const w = mapCanvas.width - 2 * PAD, h = mapCanvas.height - 2 * PAD, v = state.view;
  x = (x - v.cx) * v.zoom; y = (y - v.cy) * v.zoom;
  return [PAD + (x + 1) / 2 * w, PAD + (1 - (y + 1) / 2) * h];
}

function onCursor(msg) {
  let c = state.cursors[msg.channel];
  if (!c) c = state.cursors[msg.channel] = { x: msg.x, y: msg.y, tx: msg.x, ty: msg.y, trail: [] };
  if (c.tx !== msg.x || c.ty !== msg.y) state.cursorMoves++;
  c.tx = msg.x; c.ty = msg.y;
  c.trail.push([msg.x, msg.y]);
  if (c.trail.length > TRAIL_POINTS) c.trail.shift();
}

function drawMap() {
  const w = mapCanvas.width, h = mapCanvas.height;
  mctx.clearRect(0, 0, w, h);
  mctx.strokeStyle = "#22262e"; mctx.lineWidth = 1;
  for (let i = -1; i <= 1; i += 0.5) {
    const [x0, y0] = toCanvas(i, -1), [x1, y1] = toCanvas(i, 1);
    mctx.beginPath(); mctx.moveTo(x0, y0); mctx.lineTo(x1, y1); mctx.stroke();
    const [a0, b0] = toCanvas(-1, i), [a1, b1] = toCanvas(1, i);
    mctx.beginPath(); mctx.moveTo(a0, b0); mctx.lineTo(a1, b1); mctx.stroke();
  }
  const highlighted = new Set();
  for (const c of Object.values(state.channels)) for (const m of c.matches.slice(0, 1)) highlighted.add(m.id);
  for (const p of state.map.points) {
    const [x, y] = toCanvas(p.x, p.y);
    const hot = highlighted.has(p.id) || p.id === state.mix.selected;
    const mix = window.emberdMix;  // undefined for a frame drawn before mixdown.js ran
    mctx.globalAlpha = !mix || mix.isHit(p) ? 1 : 0.15;  // search dims the others
    mctx.fillStyle = mix ? mix.pointColour(p) : "#a0a5af";
    mctx.beginPath(); mctx.arc(x, y, hot ? 5 : 3, 0, 2 * Math.PI); mctx.fill();
    if (hot) {
      mctx.strokeStyle = "#fff"; mctx.lineWidth = 1.5; mctx.stroke();
      mctx.fillStyle = "#e4e6eb"; mctx.font = "11px system-ui";
      label(p.name, x, y - 6, 7);
    }
    mctx.globalAlpha = 1;
  }
  const labels = [];  // cursor label positions drawn so far: stack labels that would overlap
  for (const [ch, c] of Object.entries(state.cursors)) {
    c.x += (c.tx - c.x) * CURSOR_SMOOTHING;
    c.y += (c.ty - c.y) * CURSOR_SMOOTHING;
    const col = colour(Number(ch));
    mctx.strokeStyle = col; mctx.globalAlpha = 0.45; mctx.lineWidth = 2;
    mctx.beginPath();
    c.trail.forEach(([tx, ty], i) => { const [x, y] = toCanvas(tx, ty); i ? mctx.lineTo(x, y) : mctx.moveTo(x, y); });
    mctx.stroke(); mctx.globalAlpha = 1;
    const [x, y] = toCanvas(c.x, c.y);
    mctx.fillStyle = col; mctx.strokeStyle = "#fff"; mctx.lineWidth = 2;
    mctx.beginPath(); mctx.arc(x, y, 8, 0, 2 * Math.PI); mctx.fill(); mctx.stroke();
    mctx.fillStyle = "#fff"; mctx.font = "bold 11px system-ui";
    let ly = y + 4;
    while (labels.some(([lx, l]) => Math.abs(lx - x) < 40 && Math.abs(l - ly) < 12)) ly += 13;
    labels.push([x, ly]);
    label("ch " + ch, x, ly, 11);
  }
  requestAnimationFrame(drawMap);
}

// Text beside a point, flipped to the left side near the right edge so it stays readable.
function label(text, x, y, gap) {
  const w = mctx.measureText(text).width;
  if (x + gap + w > mapCanvas.width - 4) { mctx.textAlign = "right"; mctx.fillText(text, x - gap, y); }
  else { mctx.textAlign = "left"; mctx.fillText(text, x + gap, y); }
  mctx.textAlign = "left";
}

function nearestPoint(ev) {
  const r = mapCanvas.getBoundingClientRect();
  const sx = (ev.clientX - r.left) * mapCanvas.width / r.width, sy = (ev.clientY - r.top) * mapCanvas.height / r.height;
  let best = null, bestD = 100;  // within 10 canvas px
  for (const p of state.map.points) {
    const [x, y] = toCanvas(p.x, p.y);
    const d = (x - sx) ** 2 + (y - sy) ** 2;
    if (d < bestD) { best = p; bestD = d; }
  }
  return best;
}
mapCanvas.addEventListener("mousemove", (ev) => {
  const p = nearestPoint(ev), tip = $("map-tip");
  if (!p) { tip.hidden = true; return; }
  tip.hidden = false;
  tip.textContent = `${p.name} — ${(p.cls || "unknown").replace("_", " ")} — ${(p.tags || []).join(", ")}`;
  tip.style.left = ev.offsetX + 18 + "px"; tip.style.top = ev.offsetY + 30 + "px";
});
mapCanvas.addEventListener("click", (ev) => {
  const p = nearestPoint(ev);
  if (p && !state.view.dragged) { window.emberdMix.select(p.id); audition(p.id); }
});

// ---------------------------------------------------------------- similarity
function drawSimilarity() {
  const cv = $("sim"), ctx = cv.getContext("2d"), s = state.similarity;
  ctx.clearRect(0, 0, cv.width, cv.height);
  if (!s || !s.matrix.length) {
    ctx.fillStyle = "#8a909c"; ctx.font = "12px system-ui";
    ctx.fillText("similarity needs two or more channels", 8, 20);
    return;
  }
  const n = s.matrix.length, lab = 26, cell = (cv.width - lab) / n;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      if (s.matrix[i][j] === null) {  // a silent channel: no embedding worth comparing
        ctx.fillStyle = "#23262d";
        ctx.fillRect(lab + j * cell, lab + i * cell, cell - 1, cell - 1);
        if (cell > 28 && i === j) {
          ctx.fillStyle = "#8a909c"; ctx.font = "10px system-ui"; ctx.textAlign = "center";
          ctx.fillText("silent", lab + (j + 0.5) * cell, lab + (i + 0.5) * cell + 3);
        }
        continue;
      }
      const v = Math.max(-1, Math.min(1, s.matrix[i][j]));
      // cool (dissimilar) to hot (similar): stems that clash in a mix light up.
      const t = (v + 1) / 2;
      ctx.fillStyle = `hsl(${(1 - t) * 220}, 75%, ${18 + t * 42}%)`;
      ctx.fillRect(lab + j * cell, lab + i * cell, cell - 1, cell - 1);
      if (cell > 28) {
        ctx.fillStyle = t > 0.6 ? "#111" : "#ddd"; ctx.font = "10px system-ui"; ctx.textAlign = "center";
        ctx.fillText(v.toFixed(2), lab + (j + 0.5) * cell, lab + (i + 0.5) * cell + 3);
      }
    }
    const name = String((s.channels || [])[i] ?? i);
    ctx.fillStyle = colour(Number(name)); ctx.font = "11px system-ui"; ctx.textAlign = "center";
    ctx.fillText(name, lab + (i + 0.5) * cell, 16);
    ctx.textAlign = "right"; ctx.fillText(name, 20, lab + (i + 0.5) * cell + 4);
  }
  ctx.textAlign = "left";
}

// ---------------------------------------------------------------- start
fetch("/map.json").then((r) => r.json()).then((m) => {
  state.map = m;
  window.emberdMix.drawMapLegend();
  $("map-info").textContent = m.points.length ? `${m.points.length} files · ${m.model}` : "(no library given)";
}).catch(() => {});
requestAnimationFrame(drawMap);
drawSimilarity();  // "needs two or more channels" until a matrix arrives
connect();
