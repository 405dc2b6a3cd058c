// ranlens page: upload, then draw every module's soft mask from the arrays the server sent.
// All display controls recolour in the page; only a new image goes back to the server.

const $ = (id) => document.getElementById(id);
const state = { payload: null, masks: [], luts: null, display: null };

async function problemText(response) {
  try {
    const body = await response.json();
    return `${body.title || response.statusText}: ${body.detail || ""}`;
  } catch { return `${response.status} ${response.statusText}`; }
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function colormaps() {
  if (!state.luts) {
    const response = await fetch("api/v1/colormaps");
    if (!response.ok) throw new Error(await problemText(response));
    state.luts = await response.json();
  }
  return state.luts;
}

function decodeMask(entry) {
  // base64 little-endian uint16 over [lo, hi], shape (channels, h, w)
  const bytes = Uint8Array.from(atob(entry.data), (c) => c.charCodeAt(0));
  const q = new Uint16Array(bytes.buffer);
  const out = new Float32Array(q.length);
  const step = (entry.hi - entry.lo) / 65535;
  for (let i = 0; i < q.length; i++) out[i] = entry.lo + q[i] * step;
  return out;
}

function reduce(mask, entry, reduction, channel) {
  const [h, w] = entry.shape, n = h * w, c = entry.channels;
  const out = new Float32Array(n);
  if (reduction === "channel") {
    out.set(mask.subarray(channel * n, (channel + 1) * n));
    return out;
  }
  if (reduction === "max") out.fill(-Infinity);
  for (let k = 0; k < c; k++) {
    const base = k * n;
    for (let i = 0; i < n; i++) {
      const v = mask[base + i];
      if (reduction === "max") { if (v > out[i]) out[i] = v; } else out[i] += v;
    }
  }
  if (reduction === "mean") for (let i = 0; i < n; i++) out[i] /= c;
  return out;
}

function range(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}

function colourCanvas(values, h, w, lut, lo, hi) {
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const span = hi - lo;
  for (let i = 0; i < values.length; i++) {
    const t = span > 0 ? (values[i] - lo) / span : 0;
    const [r, g, b] = lut[Math.max(0, Math.min(255, Math.round(t * 255)))];
    img.data.set([r, g, b, 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

const fmt = (v) => v.toFixed(3);

function panel(entry, index) {
  const el = document.createElement("article");
  el.className = "module";
  el.id = `module-${entry.module.replace(".", "-")}`;
  el.innerHTML = `
    <h3>${entry.module}</h3>
    <p class="meta">stage ${entry.stage} &middot; mask ${entry.shape[0]}&times;${entry.shape[1]}
      &middot; ${entry.channels} channels</p>
    <canvas class="overlay" width="256" height="256" role="img" tabindex="0"></canvas>
    <div class="colorbar"><span class="lo"></span><canvas width="256" height="1" aria-hidden="true"></canvas><span class="hi"></span></div>
    <div class="downloads">
      <button type="button" class="dl-png">Overlay PNG</button>
      <button type="button" class="dl-npy">Raw mask (.npy)</button>
    </div>`;
  el.querySelector(".dl-png").addEventListener("click", () => downloadPng(index));
  el.querySelector(".dl-npy").addEventListener("click", () => downloadNpy(index));
  return el;
}

function settings() {
  return {
    opacity: Number($("opacity").value) / 100,
    cmap: $("colormap").value,
    reduction: $("reduction").value,
    channel: Number($("channel").value) || 0,
    scale: $("scale").value,
  };
}

function draw() {
  const p = state.payload;
  if (!p || !state.display || !state.luts) return;
  const s = settings();
  $("opacity-out").textContent = `${Math.round(s.opacity * 100)}%`;
  const lut = state.luts[s.cmap];
  const maps = p.attention.map((entry, i) =>
    reduce(state.masks[i], entry, s.reduction, Math.min(s.channel, entry.channels - 1)));
  const ranges = maps.map(range);
  const shared = [Math.min(...ranges.map((r) => r[0])), Math.max(...ranges.map((r) => r[1]))];
  p.attention.forEach((entry, i) => {
    const el = $("modules").children[i];
    const [lo, hi] = s.scale === "shared" ? shared : ranges[i];
    const [h, w] = entry.shape;
    const canvas = el.querySelector("canvas.overlay");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.globalAlpha = 1;
    ctx.drawImage(state.display, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = s.opacity;
    ctx.drawImage(colourCanvas(maps[i], h, w, lut, lo, hi), 0, 0, canvas.width, canvas.height);
    const what = s.reduction === "channel" ? `channel ${Math.min(s.channel, entry.channels - 1)}` : `channel ${s.reduction}`;
    canvas.setAttribute("aria-label",
      `${entry.module} soft mask (${what}, ${h}x${w}) over the image; values ${fmt(ranges[i][0])} to ${fmt(ranges[i][1])}`);
    const bar = el.querySelector(".colorbar canvas");
    const bctx = bar.getContext("2d");
    lut.forEach(([r, g, b], k) => { bctx.fillStyle = `rgb(${r},${g},${b})`; bctx.fillRect(k, 0, 1, 1); });
    el.querySelector(".lo").textContent = fmt(lo);
    el.querySelector(".hi").textContent = fmt(hi);
  });
}

function showPredictions(p) {
  const list = $("predictions");
  list.replaceChildren(...p.predictions.slice(0, 5).map((pred) => {
    const li = document.createElement("li");
    const pct = (100 * pred.probability).toFixed(1);
    li.innerHTML = `<span>${pred.label}</span><span class="bar" role="img" aria-label="${pct} percent"><span style="width:${pct}%"></span></span><span>${pct}%</span>`;
    return li;
  }));
  const t = p.timing_ms;
  $("timing").textContent = `Server time ${t.total.toFixed(0)} ms (model ${t.inference.toFixed(0)} ms).`;
}

async function explain(blob, name) {
  setStatus(`Analysing ${name}…`);
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const [response] = await Promise.all([fetch("api/v1/explain", { method: "POST", body: form }), colormaps()]);
    if (!response.ok) { setStatus(await problemText(response), true); return; }
    const p = await response.json();
    state.payload = p;
    state.masks = p.attention.map(decodeMask);
    const display = new Image();
    display.src = p.images.display;
    await display.decode();
    state.display = display;
    $("uploaded").src = p.images.uploaded;
    $("uploaded-size").textContent = `(${p.image.width}×${p.image.height})`;
    $("model-input").src = p.images.model_input;
    $("input-size").textContent = "(centre crop, 32×32)";
    showPredictions(p);
    $("channel").max = Math.min(...p.attention.map((a) => a.channels)) - 1;
    $("modules").replaceChildren(...p.attention.map(panel));
    $("results").hidden = false;
    draw();
    setStatus(`${name}: ${p.predictions[0].label} (${(100 * p.predictions[0].probability).toFixed(1)}%).`);
  } catch (err) {
    setStatus(`Request failed: ${err.message}`, true);
  }
}

function save(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function downloadPng(i) {
  const canvas = $("modules").children[i].querySelector("canvas.overlay");
  canvas.toBlob((blob) => save(blob, `${state.payload.attention[i].module}.overlay.png`), "image/png");
}

function downloadNpy(i) {
  // NumPy .npy v1.0: magic, header length, a Python-literal header padded to 64 bytes, raw data
  const entry = state.payload.attention[i];
  const shape = `(${entry.channels}, ${entry.shape[0]}, ${entry.shape[1]})`;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shape}, }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const pre = new Uint8Array(10);
  pre.set([0x93, 78, 85, 77, 80, 89, 1, 0, header.length & 255, header.length >> 8]);
  save(new Blob([pre, header, state.masks[i].buffer], { type: "application/octet-stream" }),
       `${entry.module}.mask.npy`);
}

function pickFile(file) { if (file) explain(file, file.name || "pasted image"); }

$("file").addEventListener("change", (e) => pickFile(e.target.files[0]));
const drop = $("dropzone");
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  pickFile(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((it) => it.type.startsWith("image/"));
  if (item) pickFile(item.getAsFile());
});
document.querySelectorAll(".example").forEach((button) => button.addEventListener("click", async () => {
  const response = await fetch(button.dataset.src);
  explain(await response.blob(), button.dataset.name);
}));
["opacity", "colormap", "reduction", "channel", "scale"].forEach((id) => $(id).addEventListener("input", () => {
  $("channel").disabled = $("reduction").value !== "channel";
  draw();
}));
