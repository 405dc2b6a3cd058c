// One panel per attention module: the mask over the image with its colorbar, downloads, and the
// "look inside" view (most varying channels, histogram, trunk magnitude before and after (1 + M)).

import { colourCanvas, fmt, range } from "./masks.js";

const SKELETON = `
  <h3></h3>
  <p class="meta"></p>
  <p class="shows"></p>
  <canvas class="overlay" width="256" height="256" role="img" tabindex="0"></canvas>
  <div class="colorbar"><span class="lo"></span><canvas width="256" height="1" aria-hidden="true"></canvas><span class="hi"></span></div>
  <div class="downloads">
    <button type="button" class="dl-png">Overlay PNG</button>
    <button type="button" class="dl-npy">Raw mask (.npy)</button>
  </div>
  <details class="inside"><summary>Look inside this module</summary>
    <p class="hint">The 8 channels whose masks vary most across the image (each on its own scale):</p>
    <div class="multiples"></div>
    <p class="hint all-values"></p>
    <canvas class="histogram" width="320" height="90" role="img"></canvas>
    <p class="hist-stats"></p>
    <p class="hint">Trunk output magnitude (mean |T| over channels) before and after (1 + M), on one scale:</p>
    <div class="trunkmaps">
      <figure><canvas class="t-before" width="128" height="128" role="img"></canvas><figcaption class="t-before-cap"></figcaption></figure>
      <figure><canvas class="t-after" width="128" height="128" role="img"></canvas><figcaption class="t-after-cap"></figcaption></figure>
    </div>
  </details>`;

export const panelId = (module) => `module-${module.replaceAll(".", "-")}`;

export function createPanel(entry, { onPng, onNpy }) {
  const el = document.createElement("article");
  el.className = "module";
  el.id = panelId(entry.module);
  el.innerHTML = SKELETON;
  el.querySelector("h3").textContent = entry.module;
  el.querySelector(".meta").textContent =
    `stage ${entry.stage} · mask ${entry.shape[0]}×${entry.shape[1]} · ${entry.channels} channels`;
  el.querySelector(".all-values").textContent =
    `All ${entry.channels * entry.shape[0] * entry.shape[1]} mask values:`;
  el.querySelector(".dl-png").addEventListener("click", onPng);
  el.querySelector(".dl-npy").addEventListener("click", onNpy);
  return el;
}

const MINI = `
  <h4></h4>
  <p class="meta"></p>
  <p class="shows"></p>
  <canvas class="overlay" width="256" height="256" role="img" tabindex="0"></canvas>
  <div class="colorbar"><span class="lo"></span><canvas width="256" height="1" aria-hidden="true"></canvas><span class="hi"></span></div>`;

/** A smaller panel for the side-by-side view: the overlay and its colorbar, titled with the model. */
export function createMiniPanel(entry, model) {
  const el = document.createElement("article");
  el.className = "module mini";
  el.innerHTML = MINI;
  el.querySelector("h4").textContent = `${entry.module} · ${model}`;
  el.querySelector(".meta").textContent = `mask ${entry.shape[0]}×${entry.shape[1]} · ${entry.channels} channels`;
  return el;
}

/** What a panel's map is, in words: "mean over 64 channels", "channel 17 of 256". */
export function describeMap(entry, reduction, channel) {
  if (reduction === "channel") return `channel ${channel} of ${entry.channels}`;
  if (reduction === "added") return `what the mask adds: mean of M·|T| over ${entry.channels} channels`;
  return `${reduction} over ${entry.channels} channels`;
}

/** The image with the (h, w) map ``values`` on top, coloured over [lo, hi], at ``opacity``. */
export function drawOverlay(el, entry, { values, lo, hi, display, lut, opacity, what }) {
  const [h, w] = entry.shape;
  const canvas = el.querySelector("canvas.overlay");
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.globalAlpha = 1;
  ctx.drawImage(display, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = opacity;
  ctx.drawImage(colourCanvas(values, h, w, lut, lo, hi), 0, 0, canvas.width, canvas.height);
  const [vmin, vmax] = range(values);
  canvas.setAttribute("aria-label",
    `${entry.module} soft mask (${what}, ${h}x${w}) over the image; values ${fmt(vmin)} to ${fmt(vmax)}`);
  el.querySelector(".shows").textContent = `Shows ${what}.`;
  const bar = el.querySelector(".colorbar canvas");
  const bctx = bar.getContext("2d");
  lut.forEach(([r, g, b], k) => { bctx.fillStyle = `rgb(${r},${g},${b})`; bctx.fillRect(k, 0, 1, 1); });
  el.querySelector(".lo").textContent = fmt(lo);
  el.querySelector(".hi").textContent = fmt(hi);
}

function drawMultiples(el, entry, varied, lut) {
  const [h, w] = entry.shape;
  el.querySelector(".multiples").replaceChildren(...varied.map(([k, values]) => {
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
}

/** The server's counts of every mask value in equal bins over [0, 1), with their mean and sd. */
function drawHistogram(el, { counts, mean, sd }) {
  const bins = counts.length;
  const hist = el.querySelector(".histogram"), ctx = hist.getContext("2d");
  ctx.clearRect(0, 0, hist.width, hist.height);
  const top = Math.max(...counts), floor = hist.height - 14;
  ctx.fillStyle = "#2a7f62";
  counts.forEach((count, b) => {
    const bh = (count / top) * floor;
    ctx.fillRect(b * hist.width / bins, floor - bh, hist.width / bins - 1, bh);
  });
  ctx.fillStyle = "#b7791f";
  ctx.fillRect(mean * hist.width - 1, 0, 2, floor);
  ctx.fillStyle = "#111"; ctx.font = "11px system-ui";
  ctx.fillText("0", 0, hist.height - 2); ctx.fillText("0.5", hist.width / 2 - 8, hist.height - 2);
  ctx.fillText("1", hist.width - 8, hist.height - 2);
  const stats = `mean ${fmt(mean)}, standard deviation ${fmt(sd)}`;
  el.querySelector(".hist-stats").textContent = stats;
  hist.setAttribute("aria-label", `histogram of mask values between 0 and 1; ${stats}`);
}

function drawTrunk(el, entry, before, after, lut) {
  // one shared scale for before and after, so the gain (1 + M) is visible as brightening
  const [h, w] = entry.shape;
  const lo = Math.min(range(before)[0], range(after)[0]), hi = Math.max(range(before)[1], range(after)[1]);
  const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  for (const [cls, values, label] of [["t-before", before, "before"], ["t-after", after, "after"]]) {
    const target = el.querySelector(`canvas.${cls}`);
    const ctx = target.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(colourCanvas(values, h, w, lut, lo, hi), 0, 0, target.width, target.height);
    const text = `${label} (1 + M): mean |T| ${avg(values).toFixed(3)}`;
    el.querySelector(`.${cls}-cap`).textContent = text;
    target.setAttribute("aria-label", text);
  }
}

/** The "look inside" view, from a module decoded by decodeModule: it depends on the image and the
 *  colormap only, not on the display sliders. */
export function drawInside(el, entry, decoded, lut) {
  drawMultiples(el, entry, decoded.varied, lut);
  drawHistogram(el, decoded.histogram);
  drawTrunk(el, entry, decoded.trunkBefore, decoded.trunkAfter, lut);
}
