/* feredge status page. No framework, no build step, nothing fetched from elsewhere (the device may
   be offline). The live feed is Server-Sent Events read with fetch() and a ReadableStream, not
   EventSource: EventSource cannot send headers, and the token must travel in the Authorization
   header, never in a URL. The token lives in this closure only: not in storage, not in the address. */
"use strict";
(() => {
  // The same colours as the annotated images (edge/annotate.py), as RGB.
  const COLORS = {
    angry: "#e62828", disgust: "#288c28", fear: "#b45ab4", happy: "#fac828", sad: "#3c8ce6",
    surprise: "#28c8e6", neutral: "#c8c8c8", uncertain: "#808080",
  };
  const SILENCE_MS = 5000; // no message for this long: the stream is dead, reconnect
  const SNAPSHOT_MS = 500; // snapshot polling period when only snapshots are on
  const EVAL_NAMES = {
    test_set: "test set", accuracy: "accuracy", float_accuracy: "float accuracy",
    agreement: "agreement with float", ece: "calibration error (ECE)", artifact: "measured on",
  };

  let token = null;
  let generation = 0; // bumped by a new login: older streams and loops end themselves
  let lastStats = null;
  let lastTimeline = null;
  let lastModelJson = "";
  const views = new Map(); // camera name -> its card's elements and pixel state

  const $ = (sel, root = document) => root.querySelector(sel);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const colorOf = (label) => COLORS[label] || "#ffffff";
  const pct = (p) => `${Math.round(100 * p)} %`;

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    e.append(...children);
    return e;
  }

  function svg(tag, attrs = {}, text) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function get(path, signal) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    return fetch(path, { headers, cache: "no-store", signal });
  }

  function setConn(text, kind) {
    const c = $("#conn");
    c.textContent = text;
    c.dataset.kind = kind;
  }

  // ---- login ---------------------------------------------------------------------------------
  function showLogin(message) {
    $("#login").hidden = false;
    $("#content").hidden = true;
    $("#login-error").textContent = message;
    setConn("token needed", "warn");
    $("#token").focus();
  }

  function onLogin(e) {
    e.preventDefault();
    const input = $("#token");
    token = input.value.trim() || null;
    input.value = "";
    connect();
  }

  // ---- the live feed ---------------------------------------------------------------------------
  async function connect() {
    const gen = ++generation;
    let delay = 500;
    while (gen === generation) {
      const outcome = await streamOnce(gen);
      if (gen !== generation) return;
      if (outcome === "unauthorized") {
        showLogin(token ? "That token was not accepted." : "");
        return;
      }
      $("#content").classList.add("stale");
      setConn(outcome === "busy" ? "too many viewers, retrying…" : "disconnected, retrying…", "bad");
      delay = outcome === "closed" ? 500 : Math.min(delay * 2, 5000);
      await sleep(delay);
    }
  }

  async function streamOnce(gen) {
    const ctrl = new AbortController();
    let timer = 0;
    const arm = () => { clearTimeout(timer); timer = setTimeout(() => ctrl.abort(), SILENCE_MS); };
    try {
      arm();
      const r = await get("/api/events", ctrl.signal);
      if (r.status === 401) return "unauthorized";
      if (r.status === 503) return "busy";
      if (!r.ok || !r.body) return "error";
      $("#login").hidden = true;
      $("#content").hidden = false;
      $("#content").classList.remove("stale");
      setConn("live", "ok");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      while (gen === generation) {
        const { value, done } = await reader.read();
        if (done) return "closed";
        arm();
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          onMessage(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
      return "replaced";
    } catch (err) {
      return "error";
    } finally {
      clearTimeout(timer);
      ctrl.abort();
    }
  }

  function onMessage(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    let doc;
    try { doc = JSON.parse(data.join("\n")); } catch (err) { return; }
    if (event === "stats") renderStats(doc);
    else if (event === "timeline") { lastTimeline = doc; renderTimeline(); }
  }

  // ---- stats -----------------------------------------------------------------------------------
  function renderStats(s) {
    lastStats = s;
    const names = Object.keys(s.cameras || {});
    for (const name of names) renderCamera(name, s.cameras[name], s);
    for (const [name, v] of views) {
      if (!names.includes(name)) { v.wantPixels = false; v.root.remove(); views.delete(name); }
    }
    const down = names.filter((n) => !s.cameras[n].online);
    const overall = $("#overall");
    overall.textContent = !names.length ? "no camera" : down.length
      ? `${down.length} of ${names.length} camera(s) offline` : `${names.length} camera(s) online`;
    overall.style.color = down.length ? "var(--bad)" : "var(--ok)";
    $("#version").textContent = `v${s.version} · up ${duration(s.uptime)}`;
    const modelJson = JSON.stringify(s.model);
    if (modelJson !== lastModelJson) { lastModelJson = modelJson; renderModel(s.model); }
    renderDevice(s);
  }

  function cameraView(name) {
    let v = views.get(name);
    if (v) return v;
    const root = $("#camera-template").content.firstElementChild.cloneNode(true);
    root.dataset.camera = name;
    $(".cam-name", root).textContent = name;
    v = { root, img: $(".frame", root), overlay: $(".overlay", root), faces: new Map(), wantPixels: false,
      pixelTask: null, retryAt: 0, url: null, prevUrl: null };
    v.img.addEventListener("load", () => { if (v.prevUrl) URL.revokeObjectURL(v.prevUrl); v.prevUrl = null; });
    $(".save-annotated", root).addEventListener("click", () => saveAnnotated(name));
    $("#cameras").append(root);
    views.set(name, v);
    return v;
  }

  function renderCamera(name, cam, s) {
    const v = cameraView(name);
    const r = v.root;
    const state = $(".state", r);
    state.textContent = cam.online ? "online" : "offline";
    state.dataset.kind = cam.online ? (cam.healthy === false ? "warn" : "ok") : "bad";
    r.dataset.online = String(cam.online);
    $(".reason", r).textContent = cam.online ? "" : (cam.reason || "no frames");
    $(".fps", r).textContent = cam.fps.toFixed(1);
    $(".infer", r).textContent = cam.inference_ms ? `${cam.inference_ms.toFixed(2)} ms` : "–";
    $(".nfaces", r).textContent = String(cam.faces);
    $(".frames", r).textContent = cam.frames.toLocaleString("en");
    $(".reconnects", r).textContent = String(cam.reconnects);
    $(".corrupt", r).textContent = String(cam.corrupt);
    const tracks = [...(cam.tracks || [])].sort((a, b) => b.score - a.score);
    const top = tracks[0];
    $(".expr", r).textContent = top ? top.label : (cam.online ? "no face" : "offline");
    $(".expr-score", r).textContent = top ? pct(top.score) : "";
    $(".headline .swatch", r).style.background = top ? colorOf(top.label) : "transparent";
    renderView(v, cam, s);
    renderFaces(v, tracks, (s.model && s.model.labels) || []);
  }

  // ---- the live view: boxes over the frame, or over an empty frame of the right size ------------
  function renderView(v, cam, s) {
    const size = cam.frame_size || { width: 640, height: 480 };
    const { width: w, height: h } = size;
    $(".view", v.root).style.aspectRatio = `${w} / ${h}`;
    v.overlay.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const fs = Math.max(w, h) / 24;
    const parts = [];
    for (const t of cam.tracks || []) {
      if (!t.box) continue;
      const [x, y, bw, bh] = t.box;
      const color = colorOf(t.label);
      parts.push(svg("rect", { x, y, width: bw, height: bh, fill: "none", stroke: color, "stroke-width": 3,
        "vector-effect": "non-scaling-stroke", "data-track": t.track_id }));
      const ty = y - fs * 0.3 > fs ? y - fs * 0.3 : y + bh + fs;
      parts.push(svg("text", { x, y: ty, fill: color, "font-size": fs }, `${t.label} ${pct(t.score)}`));
    }
    v.overlay.replaceChildren(...parts);
    const http = s.http || {};
    const mode = http.mjpeg ? "mjpeg" : http.snapshots ? "snapshot" : "none";
    v.wantPixels = mode !== "none" && cam.online && !!cam.frame_size;
    if (!v.wantPixels) v.img.hidden = true;
    $(".actions", v.root).hidden = !http.snapshots;
    $(".caption", v.root).textContent = mode === "none"
      ? `no pixels (http.snapshots and http.mjpeg are off): boxes on an empty ${w}×${h} frame`
      : `${w}×${h}, ${mode === "mjpeg" ? "live MJPEG" : "snapshots"}`;
    if (v.wantPixels && !v.pixelTask && Date.now() >= v.retryAt) {
      v.pixelTask = (mode === "mjpeg" ? mjpegLoop : snapshotLoop)(cameraOf(v), v);
    }
  }

  const cameraOf = (v) => v.root.dataset.camera;

  function showBlob(v, blob) {
    if (v.prevUrl) URL.revokeObjectURL(v.prevUrl);
    v.prevUrl = v.url;
    v.url = URL.createObjectURL(blob);
    v.img.src = v.url;
    v.img.hidden = false;
  }

  async function snapshotLoop(name, v) {
    const gen = generation;
    try {
      while (gen === generation && v.wantPixels) {
        if (!document.hidden) {
          const r = await get(`/snapshot/${encodeURIComponent(name)}.jpg`);
          if (!r.ok) break;
          showBlob(v, await r.blob());
        }
        await sleep(SNAPSHOT_MS);
      }
    } catch (err) { /* retried below */ }
    v.pixelTask = null;
    v.retryAt = Date.now() + 2000;
  }

  // multipart/x-mixed-replace read by hand: each part is headers, a blank line, Content-Length bytes.
  async function mjpegLoop(name, v) {
    const gen = generation;
    const ctrl = new AbortController();
    try {
      const r = await get(`/mjpeg/${encodeURIComponent(name)}`, ctrl.signal);
      if (!r.ok || !r.body) throw new Error(String(r.status));
      const reader = r.body.getReader();
      let buf = new Uint8Array(0);
      while (gen === generation && v.wantPixels) {
        const { value, done } = await reader.read();
        if (done) break;
        buf = concat(buf, value);
        buf = takeParts(buf, (jpeg) => showBlob(v, new Blob([jpeg], { type: "image/jpeg" })));
      }
    } catch (err) { /* retried below */ }
    ctrl.abort();
    v.pixelTask = null;
    v.retryAt = Date.now() + 2000;
  }

  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  }

  function takeParts(buf, onJpeg) {
    for (;;) {
      let head = -1;
      for (let i = 0; i + 3 < buf.length; i++) {
        if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) { head = i; break; }
      }
      if (head < 0) return buf;
      const m = /content-length:\s*(\d+)/i.exec(new TextDecoder().decode(buf.subarray(0, head)));
      const start = head + 4;
      if (!m) { buf = buf.subarray(start); continue; }
      const end = start + Number(m[1]);
      if (buf.length < end) return buf;
      onJpeg(buf.slice(start, end));
      buf = buf.subarray(end);
    }
  }

  async function saveAnnotated(name) {
    const r = await get(`/snapshot/${encodeURIComponent(name)}.jpg?annotate=1`);
    if (!r.ok) return;
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: `${name}-annotated.jpg` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- faces: smoothed label and a score bar per expression ------------------------------------
  function renderFaces(v, tracks, labels) {
    const list = $(".faces", v.root);
    const seen = new Set();
    for (const t of tracks) {
      seen.add(t.track_id);
      let item = v.faces.get(t.track_id);
      if (!item) { item = faceItem(t, labels); v.faces.set(t.track_id, item); }
      list.append(item.li); // keeps the order: most confident first
      $(".label", item.li).textContent = t.label;
      $(".score", item.li).textContent = pct(t.score);
      $(".face-head .swatch", item.li).style.background = colorOf(t.label);
      for (const [label, row] of item.rows) {
        const p = (t.scores || {})[label] || 0;
        row.fill.style.width = `${(100 * p).toFixed(1)}%`;
        row.pct.textContent = pct(p);
        row.name.classList.toggle("lead", label === t.label);
      }
    }
    for (const [id, item] of v.faces) {
      if (!seen.has(id)) { item.li.remove(); v.faces.delete(id); }
    }
  }

  function faceItem(t, labels) {
    const li = el("li", { class: "face", "data-track": t.track_id });
    li.append(el("div", { class: "face-head" }, el("span", { class: "swatch" }), el("span", { class: "label" }),
      el("span", { class: "score muted" }), el("span", { class: "tid", text: `face #${t.track_id}` })));
    const bars = el("div", { class: "bars" });
    const rows = new Map();
    for (const label of labels.length ? labels : Object.keys(t.scores || {})) {
      const fill = el("i");
      fill.style.background = colorOf(label);
      const row = { name: el("span", { text: label }), fill, pct: el("span", { class: "pct" }) };
      bars.append(row.name, el("span", { class: "bar" }, fill), row.pct);
      rows.set(label, row);
    }
    li.append(bars);
    return { li, rows };
  }

  // ---- timeline: stacked expression counts per minute, fps as a line -----------------------------
  function renderTimeline() {
    const t = lastTimeline;
    const box = $("#timeline");
    if (!t || box.offsetParent === null) return;
    const labels = (lastStats && lastStats.model && lastStats.model.labels) || [];
    const cams = Object.entries(t.cameras || {});
    if (!cams.length) { box.replaceChildren(el("p", { class: "muted", text: "no data yet" })); return; }
    box.replaceChildren(...cams.map(([name, minutes]) => timelineFigure(name, minutes, t, labels, box.clientWidth)));
  }

  function timelineFigure(name, minutes, t, labels, width) {
    const byStart = new Map(minutes.map((m) => [m.t, m]));
    const nowStart = Math.floor(t.now / t.width) * t.width;
    const slots = [];
    for (let i = t.minutes - 1; i >= 0; i--) slots.push(nowStart - i * t.width);
    const order = [...labels, ...new Set(minutes.flatMap((m) => Object.keys(m.expressions)))]
      .filter((l, i, all) => all.indexOf(l) === i);
    const chart = timelineSvg(slots, byStart, order, Math.max(260, width));
    const used = order.filter((l) => minutes.some((m) => m.expressions[l]));
    const legend = el("div", { class: "legend" }, ...used.map((l) => legendItem(l)),
      el("span", {}, el("span", { class: "swatch fps-key" }), "fps"));
    const total = (k) => minutes.reduce((n, m) => n + (m.events[k] || 0), 0);
    const totals = el("p", { class: "totals", text:
      `${total("appeared")} appeared · ${total("changed")} changed · ${total("left")} left` });
    return el("figure", { class: "tl", "data-camera": name }, el("h3", { text: name }), chart, legend, totals);
  }

  function legendItem(label) {
    const sw = el("span", { class: "swatch" });
    sw.style.background = colorOf(label);
    return el("span", {}, sw, label);
  }

  function timelineSvg(slots, byStart, order, W) {
    const H = 170, L = 30, R = 36, T = 10, B = 22;
    const cw = (W - L - R) / slots.length, ch = H - T - B;
    const count = (m) => (m ? Object.values(m.expressions).reduce((a, b) => a + b, 0) : 0);
    const maxCount = niceCeil(Math.max(2, ...slots.map((s) => count(byStart.get(s))))); // ticks at 0, ½, max
    const fpsValues = slots.map((s) => byStart.get(s)?.fps).filter((f) => f != null);
    const maxFps = niceCeil(Math.max(1, ...fpsValues));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": "expressions per minute and fps" });
    for (let k = 0; k <= 2; k++) {
      const y = T + ch - (ch * k) / 2;
      root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: L - 4, y: y + 4, "text-anchor": "end" }, String(Math.round((maxCount * k) / 2))));
      root.append(svg("text", { x: W - R + 4, y: y + 4 }, String(Math.round((maxFps * k) / 2))));
    }
    const points = [];
    slots.forEach((start, i) => {
      const m = byStart.get(start);
      const x = L + i * cw;
      const every = W < 480 ? 3 : 2; // clock labels that fit: every 2nd (laptop) or 3rd minute (phone)
      if ((slots.length - 1 - i) % every === 0) {
        root.append(svg("text", { x: x + cw / 2, y: H - 6, "text-anchor": "middle" }, clock(start)));
      }
      if (!m) return;
      root.append(barStack(m, order, x + cw * 0.15, cw * 0.7, T + ch, ch / maxCount, start));
      if (m.fps != null) points.push([x + cw / 2, T + ch - (ch * m.fps) / maxFps]);
    });
    if (points.length) {
      root.append(svg("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "fps-line" }));
      for (const [x, y] of points) root.append(svg("circle", { cx: x, cy: y, r: 3, class: "fps-dot" }));
    }
    return root;
  }

  function barStack(m, order, x, w, base, unit, start) {
    const g = svg("g", { class: "bar-stack", "data-minute": start });
    let y = base;
    const parts = [];
    for (const label of order) {
      const n = m.expressions[label] || 0;
      if (!n) continue;
      y -= n * unit;
      g.append(svg("rect", { x, y, width: w, height: n * unit, fill: colorOf(label), rx: 2 }));
      parts.push(`${label} ${n}`);
    }
    const ev = m.events;
    g.append(svg("title", {}, `${clock(start)}: ${parts.join(", ") || "no new expression"}; ` +
      `${ev.appeared} appeared, ${ev.changed} changed, ${ev.left} left; fps ${m.fps ?? "–"}`));
    return g;
  }

  // ---- model and device ------------------------------------------------------------------------
  function renderModel(m) {
    const dl = $("#model");
    const rows = [["name", m.name]];
    if (m.file) rows.push(["file", m.bytes != null ? `${m.file} (${bytes(m.bytes)})` : m.file]);
    rows.push(["backend", m.backend]);
    rows.push(["device", m.device === "coral" ? "Coral Edge TPU" : m.device ? "CPU" : "?"]);
    if (m.input) rows.push(["input", `${m.input.width}×${m.input.height} ${m.input.color}`]);
    if (m.labels) rows.push(["labels", el("span", { class: "chips" }, ...m.labels.map(chip))]);
    for (const [k, v] of Object.entries(m.evaluation || {})) rows.push([EVAL_NAMES[k] || k.replace(/_/g, " "), evalValue(k, v)]);
    if (!m.evaluation) rows.push(["model card", "no evaluation figures in its contract"]);
    fillFacts(dl, rows);
  }

  function chip(label) {
    const c = el("span", { class: "chip", text: label });
    c.style.background = colorOf(label);
    return c;
  }

  function evalValue(key, v) {
    if (typeof v !== "number") return typeof v === "object" ? JSON.stringify(v) : String(v);
    if (/accuracy|agreement/.test(key) && v >= 0 && v <= 1) return `${(100 * v).toFixed(1)} %`;
    return String(Math.round(v * 10000) / 10000);
  }

  function renderDevice(s) {
    const rows = [["node", s.node_id || "—"], ["version", s.version], ["uptime", duration(s.uptime)]];
    const q = s.mqtt;
    rows.push(["MQTT", !q ? "off" : `${q.connected ? "connected" : "disconnected"} · ${q.published} sent · ` +
      `${q.queued} queued · ${q.dropped} dropped`]);
    const h = s.http || {};
    rows.push(["pixels", h.snapshots || h.mjpeg
      ? [h.snapshots && "snapshots", h.mjpeg && "MJPEG"].filter(Boolean).join(" and ") + " on"
      : "none leave the device (snapshots and MJPEG off)"]);
    fillFacts($("#device"), rows);
  }

  function fillFacts(dl, rows) {
    dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }),
      v instanceof Node ? el("dd", {}, v) : el("dd", { text: String(v), "data-key": k })]));
  }

  async function showRaw(e) {
    e.preventDefault();
    const path = e.currentTarget.getAttribute("href");
    $("#raw-title").textContent = path;
    $("#raw").hidden = false;
    try {
      const r = await get(path);
      const text = await r.text();
      $("#raw-text").textContent = r.headers.get("Content-Type")?.includes("json")
        ? JSON.stringify(JSON.parse(text), null, 2) : text;
    } catch (err) {
      $("#raw-text").textContent = `failed: ${err}`;
    }
  }

  // ---- formatting ------------------------------------------------------------------------------
  function duration(sec) {
    const s = Math.floor(sec || 0), d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
  }
  const clock = (epoch) => new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit",
    hour12: false });
  const bytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : `${Math.round(n / 1024)} KiB`);
  function niceCeil(v) { // a round maximum whose half is round too
    const step = v <= 10 ? 2 : v <= 40 ? 10 : v <= 100 ? 20 : 10 ** Math.floor(Math.log10(v));
    return Math.ceil(v / step) * step;
  }

  // ---- start -----------------------------------------------------------------------------------
  $("#login-form").addEventListener("submit", onLogin);
  for (const a of document.querySelectorAll("a[data-raw]")) a.addEventListener("click", showRaw);
  $("#raw-close").addEventListener("click", () => { $("#raw").hidden = true; });
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(renderTimeline, 150); });
  connect();
})();
