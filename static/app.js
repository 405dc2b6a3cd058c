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
    </div>
    <details class="inside"><summary>Look inside this module</summary>
      <p class="hint">The 8 channels whose masks vary most across the image (each on its own scale):</p>
      <div class="multiples"></div>
      <p class="hint">All ${entry.channels * entry.shape[0] * entry.shape[1]} mask values:</p>
      <canvas class="histogram" width="320" height="90" role="img"></canvas>
      <p class="hist-stats"></p>
      <p class="hint">Trunk output magnitude (mean |T| over channels) before and after (1 + M), on one scale:</p>
      <div class="trunkmaps">
        <figure><canvas class="t-before" role="img"></canvas><figcaption class="t-before-cap"></figcaption></figure>
        <figure><canvas class="t-after" role="img"></canvas><figcaption class="t-after-cap"></figcaption></figure>
      </div>
    </details>`;
  el.querySelector(".dl-png").addEventListener("click", () => downloadPng(index));
  el.querySelector(".dl-npy").addEventListener("click", () => downloadNpy(index));
  return el;
}

function channelVariances(mask, entry) {
  const n = entry.shape[0] * entry.shape[1];
  const out = [];
  for (let k = 0; k < entry.channels; k++) {
    let sum = 0, sq = 0;
    for (let i = k * n; i < (k + 1) * n; i++) { sum += mask[i]; sq += mask[i] * mask[i]; }
    const mean = sum / n;
    out.push([sq / n - mean * mean, k]);
  }
  return out.sort((a, b) => b[0] - a[0]);
}

function drawInside(el, entry, mask, lut) {
  const [h, w] = entry.shape, n = h * w;
  const multiples = el.querySelector(".multiples");
  multiples.replaceChildren(...channelVariances(mask, entry).slice(0, 8).map(([variance, k]) => {
    const values = mask.subarray(k * n, (k + 1) * n);
    const [lo, hi] = range(values);
    const fig = document.createElement("figure");
    fig.title = `channel ${k}: ${fmt(lo)} to ${fmt(hi)}`;
    const c = colourCanvas(values, h, w, lut, lo, hi);
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", `channel ${k}, values ${fmt(lo)} to ${fmt(hi)}`);
    const cap = document.createElement("figcaption");
    cap.textContent = `ch ${k} (${fmt(lo)}–${fmt(hi)})`;
    fig.append(c, cap);
    return fig;
  }));
  // histogram of every mask value, 50 bins over (0, 1)
  const bins = new Array(50).fill(0);
  let sum = 0, sq = 0;
  for (const v of mask) { bins[Math.min(49, Math.floor(v * 50))]++; sum += v; sq += v * v; }
  const mean = sum / mask.length, sd = Math.sqrt(Math.max(0, sq / mask.length - mean * mean));
  const hist = el.querySelector(".histogram"), ctx = hist.getContext("2d");
  ctx.clearRect(0, 0, hist.width, hist.height);
  const top = Math.max(...bins);
  bins.forEach((count, b) => {
    ctx.fillStyle = "#2a7f62";
    const bh = (count / top) * (hist.height - 14);
    ctx.fillRect(b * hist.width / 50, hist.height - 14 - bh, hist.width / 50 - 1, bh);
  });
  ctx.fillStyle = "#b7791f";
  ctx.fillRect(mean * hist.width - 1, 0, 2, hist.height - 14);
  ctx.fillStyle = "#111"; ctx.font = "11px system-ui";
  ctx.fillText("0", 0, hist.height - 2); ctx.fillText("0.5", hist.width / 2 - 8, hist.height - 2);
  ctx.fillText("1", hist.width - 8, hist.height - 2);
  const stats = `mean ${fmt(mean)}, standard deviation ${fmt(sd)}`;
  el.querySelector(".hist-stats").textContent = stats;
  hist.setAttribute("aria-label", `histogram of mask values between 0 and 1; ${stats}`);
  // trunk magnitude before / after (1 + M), shared scale so the gain is visible
  const before = Float32Array.from(entry.trunk_before.flat()), after = Float32Array.from(entry.trunk_after.flat());
  const lo = Math.min(range(before)[0], range(after)[0]), hi = Math.max(range(before)[1], range(after)[1]);
  const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  for (const [cls, values, label] of [["t-before", before, "before"], ["t-after", after, "after"]]) {
    const target = el.querySelector(`canvas.${cls}`);
    target.width = 128; target.height = 128;
    const tctx = target.getContext("2d");
    tctx.imageSmoothingEnabled = true;
    tctx.drawImage(colourCanvas(values, h, w, lut, lo, hi), 0, 0, 128, 128);
    const text = `${label} (1 + M): mean |T| ${avg(values).toFixed(3)}`;
    el.querySelector(`.${cls}-cap`).textContent = text;
    target.setAttribute("aria-label", text);
  }
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
    drawInside(el, entry, state.masks[i], lut);
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
    setPresenterModule(0);
    const top3 = p.predictions.slice(0, 3).map((q) => `${q.label} ${(100 * q.probability).toFixed(1)}%`).join(" · ");
    $("topbar-text").textContent = `${name}: ${top3}`;
    $("topbar").hidden = false;
    ablate(blob, name);
    setStatus(`${name}: ${p.predictions[0].label} (${(100 * p.predictions[0].probability).toFixed(1)}%).`);
  } catch (err) {
    setStatus(`Request failed: ${err.message}`, true);
  }
}

async function ablate(blob, name) {
  const box = $("ablation");
  box.innerHTML = '<p class="hint">Running with attention off…</p>';
  const form = new FormData();
  form.append("file", blob, name);
  const response = await fetch("api/v1/ablate?top_k=5", { method: "POST", body: form });
  if (!response.ok) { box.textContent = await problemText(response); return; }
  const a = await response.json();
  const columns = [["attention on", a.normal], ["all masks off", a.all_off],
                   ...a.per_module.map((m) => [`${m.module} off`, m])];
  const rows = a.normal.top.map((t) => t.index);
  const table = document.createElement("table");
  table.className = "ablation-table";
  table.innerHTML = `<caption class="hint">Probability of the top 5 classes (with attention on) in each run;
    the bold cell is that run's top class.</caption>
    <thead><tr><th scope="col">class</th>${columns.map(([title]) => `<th scope="col">${title}</th>`).join("")}</tr></thead>`;
  const body = document.createElement("tbody");
  for (const index of rows) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<th scope="row">${a.normal.top.find((t) => t.index === index).label}</th>` +
      columns.map(([, run]) => {
        const winner = run.top[0].index === index;
        return `<td class="${winner ? "top" : ""}">${(100 * run.probabilities[index]).toFixed(1)}%</td>`;
      }).join("");
    body.append(tr);
  }
  const changed = columns.slice(1).filter(([, run]) => run.top[0].index !== a.normal.top[0].index).map(([t]) => t);
  const tr = document.createElement("tr");
  tr.innerHTML = `<th scope="row">top class</th>` + columns.map(([, run]) => `<td>${run.top[0].label}</td>`).join("");
  body.append(tr);
  table.append(body);
  const note = document.createElement("p");
  note.textContent = changed.length ? `The top class changes with: ${changed.join(", ")}.`
                                    : "The top class stays the same in every run; compare the probabilities.";
  box.replaceChildren(table, note);
}

// ---- presenter mode: one module at a time, big type, keyboard navigation
let presenterIndex = 0;
function setPresenterModule(i) {
  const panels = [...$("modules").children];
  if (!panels.length) return;
  presenterIndex = (i + panels.length) % panels.length;
  panels.forEach((el, k) => el.classList.toggle("current", k === presenterIndex));
  $("presenter-pos").textContent = `module ${presenterIndex + 1} of ${panels.length}`;
  if (document.body.classList.contains("presenter")) {
    panels[presenterIndex].querySelector("details.inside").open = true;
    panels[presenterIndex].scrollIntoView({ block: "start" });
  }
}
function togglePresenter(on = !document.body.classList.contains("presenter")) {
  document.body.classList.toggle("presenter", on);
  $("presenter-toggle").setAttribute("aria-pressed", String(on));
  setPresenterModule(presenterIndex);
}
$("presenter-toggle").addEventListener("click", () => togglePresenter());
$("next-module").addEventListener("click", () => setPresenterModule(presenterIndex + 1));
$("prev-module").addEventListener("click", () => setPresenterModule(presenterIndex - 1));
document.addEventListener("keydown", (e) => {
  if (e.target.closest("input, select, textarea")) return;
  const presenting = document.body.classList.contains("presenter");
  if ((e.key === "p" || e.key === "P") && state.payload) togglePresenter();
  else if (presenting && (e.key === "ArrowRight" || e.key === "PageDown")) setPresenterModule(presenterIndex + 1);
  else if (presenting && (e.key === "ArrowLeft" || e.key === "PageUp")) setPresenterModule(presenterIndex - 1);
  else if (presenting && e.key === "Escape") togglePresenter(false);
  else return;
  e.preventDefault();
});

// ---- architecture view, drawn from the served model's own description
function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawArchitecture(arch) {
  const W = 640, rowH = 34, gap = 10;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} 100`, role: "group", "aria-label": `${arch.name} architecture` });
  svg.append(svgEl("title", {}, `${arch.name}: stem, ${arch.stages.length} stages, head`));
  let y = 4;
  const block = (label, detail) => {
    const g = svgEl("g", { class: "block" });
    g.append(svgEl("rect", { x: 10, y, width: W - 20, height: rowH, rx: 6 }));
    g.append(svgEl("text", { x: 22, y: y + 21 }, label));
    g.append(svgEl("text", { x: W - 22, y: y + 21, "text-anchor": "end" }, detail));
    svg.append(g);
    y += rowH + gap;
  };
  const dims = (s) => s.length === 3 ? `${s[0]} ch, ${s[1]}×${s[2]}` : `${s[0]}×${s[1]}`;
  block(`Input image`, `${arch.input[1]}×${arch.input[2]} RGB`);
  block(`Stem (${arch.stem.kind === "cifar" ? "3×3 conv" : "7×7/2 conv + max-pool"})`, dims(arch.stem.output));
  for (const stage of arch.stages) {
    block(`Stage ${stage.stage}: residual unit${stage.transition_stride > 1 ? " (stride 2)" : ""}`,
          `${stage.channels} ch, ${dims(stage.resolution)}`);
    for (const m of stage.modules) {
      const h = 3 * rowH + 8;
      const g = svgEl("g", { class: "att", tabindex: "0", role: "button", "data-module": m.name,
                             "aria-label": `${m.name}: attention module at ${dims(m.resolution)}; show its mask` });
      g.append(svgEl("rect", { class: "frame", x: 10, y, width: W - 20, height: h, rx: 8 }));
      g.append(svgEl("text", { x: 22, y: y + 18, "font-weight": "700" }, `Attention module ${m.name}`));
      g.append(svgEl("text", { x: W - 22, y: y + 18, "text-anchor": "end" }, `H = (1 + M) × T, mask ${dims(m.resolution)}`));
      g.append(svgEl("text", { x: 36, y: y + 42 }, `Trunk T: ${m.trunk_units} residual units at ${dims(m.resolution)}`));
      const levels = m.mask_levels.map((l) => l[0]);
      const path = [...levels, ...levels.slice(0, -1).reverse()].join(" → ");
      g.append(svgEl("text", { x: 36, y: y + 64 }, `Soft mask M: ${path}, then 1×1, 1×1, sigmoid`));
      g.append(svgEl("text", { x: 36, y: y + 86, class: "hint" },
        `${m.mask_depth} max-pool${m.mask_depth > 1 ? "s" : ""} down, bilinear up-sampling back, skip connections`));
      const go = () => {
        const panel = document.getElementById(`module-${m.name.replace(".", "-")}`);
        if (!panel) { setStatus("Analyse an image first to see this module's mask."); return; }
        const index = [...$("modules").children].indexOf(panel);
        setPresenterModule(index);
        panel.querySelector("details.inside").open = true;
        panel.scrollIntoView({ behavior: "smooth", block: "center" });
        panel.querySelector("canvas.overlay").focus({ preventScroll: true });
      };
      g.addEventListener("click", go);
      g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
      svg.append(g);
      y += h + gap;
    }
  }
  block(`Head: ${arch.head.units} residual units`, dims(arch.head.output));
  block(`Global average pool + linear`, `${arch.classifier.in_features} → ${arch.classifier.classes} classes`);
  svg.setAttribute("viewBox", `0 0 ${W} ${y}`);
  $("arch-svg").replaceChildren(svg);
}

async function loadArchitecture() {
  const name = document.body.dataset.model;
  if (!name) return;
  const response = await fetch(`api/v1/models/${name}/architecture`);
  if (response.ok) drawArchitecture(await response.json());
}
loadArchitecture();

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
