// ranlens page: upload, then draw every module's soft mask from the maps the server sent.
// Display controls recolour in the page. The server sends each reduction as one map; a single channel
// is asked for when the page shows one (the same image again to /explain/channel, cached per model
// and channel), and every channel only for a raw-mask download.

import { ablationTable } from "./ablation.js";
import { RequestError, failureText, getBlob, getJSON, isAbort, postImage } from "./api.js";
import { architectureSvg } from "./architecture.js";
import { decodeChannel, decodeMask, decodeModule, range } from "./masks.js";
import { npyBlob } from "./npy.js";
import { createMiniPanel, createPanel, describeMap, drawInside, drawOverlay, panelId } from "./panels.js";
import { currentModule, installPresenter, onModuleChange, setCurrentModule } from "./presenter.js";

const $ = (id) => document.getElementById(id);

// What is on screen: one analysed image. ``decoded`` holds each module's maps (decodeModule),
// ``channels`` the channel chosen for each module; ``model`` is the weights the page asks for,
// ``compare`` a second model's answer for the same image, ``source`` the image itself, so a change of
// model or a channel can ask about it again; ``fetched``, what was asked for since (freshChannels).
const state = {
  name: null, payload: null, decoded: [], display: null, channels: [], luts: null,
  model: document.body.dataset.model || null, compare: null, source: null, fetched: freshChannels(),
  // the image asked for last while its analysis runs ({name, source}): what a model switch re-analyses,
  // since the one on screen (source) is older; and whether the on-screen image's ablation was cut short
  pending: null, ablationStopped: false,
};
const CHANNEL_DELAY_MS = 250;  // a channel is asked for once the box has been still this long
// the server's RANLENS_MAX_UPLOAD_BYTES (the page's template writes it): a larger file is refused here,
// since a browser may report the server's early 413 as a reset connection instead
const MAX_UPLOAD_BYTES = Number(document.body.dataset.maxUploadBytes) || null;
let catalog = null;  // GET api/v1/models, once: every served model's metadata, for the model line
let headerModel = document.body.dataset.model || null;  // the weights the header and notes describe
let controller = null;  // the analysis in flight; a newer upload aborts it
let lutsPromise = null;

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function hint(text, cls = "hint") {
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  return p;
}

/** The colormaps' lookup tables, fetched once and shared by every analysis. */
function colormaps() {
  lutsPromise ??= getJSON("api/v1/colormaps").catch((err) => { lutsPromise = null; throw err; });
  return lutsPromise;
}

async function loadImage(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

function settings() {
  return {
    opacity: Number($("opacity").value) / 100,
    cmap: $("colormap").value,
    reduction: $("reduction").value,
    scale: $("scale").value,
  };
}

const sharedRange = (ranges) => [Math.min(...ranges.map((r) => r[0])), Math.max(...ranges.map((r) => r[1]))];

// ---- single channels, on demand: one answer per (weights, channel) holds that channel of every module
// that has it. Keyed by weights, so the compare view's second model shares the cache; new per image.
function freshChannels() {
  return { maps: new Map(), inflight: new Set(), failed: new Map(), full: null, timer: null };
}

const channelKey = (weights, k) => `${weights}\n${k}`;

/** The (h, w) map a panel shows: a reduction the answer carried, or a fetched channel (null: not yet). */
function mapFor(p, decoded, i, reduction, channel) {
  if (reduction !== "channel") return decoded[i].maps[reduction];
  return state.fetched.maps.get(channelKey(p.weights, channel))?.get(p.attention[i].module) ?? null;
}

/** Why the channel a panel would show could not be loaded (null: it did not fail, or no channel is shown). */
function failureFor(weights, reduction, channel) {
  return reduction === "channel" ? state.fetched.failed.get(channelKey(weights, channel)) ?? null : null;
}

/** [weights, channel] of every channel on screen that is neither fetched nor failed. */
function missingChannels() {
  if ($("reduction").value !== "channel" || !state.payload) return [];
  const wanted = [...new Set(state.channels)].map((k) => [state.payload.weights, k]);
  if (state.compare?.cells) wanted.push([state.compare.payload.weights, 0]);
  const f = state.fetched;
  return wanted.filter(([w, k]) => !f.maps.has(channelKey(w, k)) && !f.failed.has(channelKey(w, k)));
}

function showChannelState() {
  const f = state.fetched, missing = missingChannels();
  const failed = [...f.failed.values()];
  $("channel-status").textContent = failed.length ? failed[failed.length - 1]
    : missing.length ? `Loading channel ${[...new Set(missing.map(([, k]) => k))].join(", ")}…` : "";
  $("channel-status").classList.toggle("error", failed.length > 0);
}

/** Asks for the missing channels once the channel box has been still for CHANNEL_DELAY_MS. */
function wantChannels() {
  const f = state.fetched;
  clearTimeout(f.timer);
  showChannelState();
  if (missingChannels().length) f.timer = setTimeout(() => fetchChannels(f), CHANNEL_DELAY_MS);
}

async function fetchChannels(f) {
  if (f !== state.fetched) return;  // another image since
  const { blob, name } = state.source, signal = controller.signal;
  const todo = missingChannels().filter(([w, k]) => !f.inflight.has(channelKey(w, k)));
  await Promise.all(todo.map(async ([weights, k]) => {
    const key = channelKey(weights, k);
    f.inflight.add(key);
    try {
      const answer = await postImage(withModel(`api/v1/explain/channel?channel=${k}`, weights), blob, name, signal);
      f.maps.set(key, new Map(answer.attention.map((entry) => [entry.module, decodeChannel(entry)])));
    } catch (err) {
      if (isAbort(err)) return;
      f.failed.set(key, `Could not load channel ${k} of ${weights}: ${failureText(err)}`);
    } finally {
      f.inflight.delete(key);
    }
    if (f === state.fetched) drawOverlays();
  }));
}

/** Panels that show ``values`` (null: still loading, left as they are and marked busy; or, with
 *  ``failed``, not coming: the caption says why and the panel is no longer busy). */
function drawPanels(cells, s, lut) {
  const ready = cells.filter((c) => c.values);
  const ranges = new Map(ready.map((c) => [c, range(c.values)]));
  const shared = ready.length ? sharedRange([...ranges.values()]) : null;
  for (const c of cells) {
    const waiting = !c.values && !c.failed;
    c.el.classList.toggle("loading", waiting);
    c.el.classList.toggle("failed", !c.values && Boolean(c.failed));
    c.el.setAttribute("aria-busy", String(waiting));
    const caption = c.el.querySelector(".shows");
    caption.classList.toggle("error", !c.values && Boolean(c.failed));
    if (!c.values) {
      if (c.failed) caption.textContent = `${c.failed}.`;
      continue;
    }
    const [lo, hi] = s.scale === "shared" ? shared : ranges.get(c);
    drawOverlay(c.el, c.entry, {
      values: c.values, lo, hi, display: state.display, lut, opacity: s.opacity,
      what: describeMap(c.entry, s.reduction, c.channel),
    });
  }
}

/** The overlays and colorbars: cheap, redrawn on every control change. */
function drawOverlays() {
  const p = state.payload, s = settings();
  $("opacity-out").textContent = `${Math.round(s.opacity * 100)}%`;
  if (!p) return;
  const lut = state.luts[s.cmap];
  drawPanels(p.attention.map((entry, i) => ({
    el: $("modules").children[i], entry, channel: state.channels[i],
    values: mapFor(p, state.decoded, i, s.reduction, state.channels[i]),
    failed: failureFor(p.weights, s.reduction, state.channels[i]),
  })), s, lut);
  drawCompare(s, lut);
  wantChannels();
}

// ---- side by side: a second model's masks beside the first's, row by row for each module name
function compareCells() {
  const cells = [];
  const sides = [
    { payload: state.payload, decoded: state.decoded, channel: (i) => state.channels[i] },
    { payload: state.compare.payload, decoded: state.compare.decoded, channel: () => 0 },
  ];
  for (const [column, side] of sides.entries()) {
    side.payload.attention.forEach((entry, i) => cells.push({ column, entry, side, i }));
  }
  return cells;
}

function showCompare() {
  const c = state.compare, p = state.payload;
  $("compare-section").hidden = !c;
  if (!c) { $("compare-grid").replaceChildren(); return; }
  const q = c.payload;
  $("compare-h").textContent = `Side by side: ${p.weights} and ${q.weights}`;
  const top = (x) => `${x.weights} says ${x.predictions[0].label} (${(100 * x.predictions[0].probability).toFixed(1)}%)`;
  $("compare-summary").textContent = `${top(p)}; ${top(q)}. Modules with the same name sit in one row; ` +
    "the display controls apply to both (single channels: the second model shows channel 0).";
  const names = [...new Set([...p.attention, ...q.attention].map((a) => a.module))]
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  const head = [p, q].map((x) => Object.assign(document.createElement("p"), { className: "col-head", textContent: x.weights }));
  c.cells = compareCells();
  const rows = names.flatMap((name) => [0, 1].map((column) => {
    const cell = c.cells.find((k) => k.column === column && k.entry.module === name);
    if (!cell) {
      const model = column ? q.weights : p.weights;
      return Object.assign(document.createElement("p"), { className: "absent", textContent: `${model} has no ${name}.` });
    }
    cell.el = createMiniPanel(cell.entry, column ? q.weights : p.weights);
    return cell.el;
  }));
  $("compare-grid").replaceChildren(...head, ...rows);
}

function drawCompare(s, lut) {
  const c = state.compare;
  if (!c?.cells) return;
  // one scale across both models when shared: the point is to compare them
  drawPanels(c.cells.map((k) => {
    const channel = Math.min(k.side.channel(k.i), k.entry.channels - 1);
    return { el: k.el, entry: k.entry, channel, values: mapFor(k.side.payload, k.side.decoded, k.i, s.reduction, channel),
             failed: failureFor(k.side.payload.weights, s.reduction, channel) };
  }), s, lut);
}

/** The "look inside" views: heavier, and they depend only on the image and the colormap. */
function drawInsides() {
  const p = state.payload;
  if (!p) return;
  const lut = state.luts[$("colormap").value];
  p.attention.forEach((entry, i) => drawInside($("modules").children[i], entry, state.decoded[i], lut));
}

// ---- the channel box: bounded by the channel count of the module it edits
function syncChannelBox() {
  const p = state.payload, i = Number($("channel-module").value) || 0;
  const oneChannel = $("reduction").value === "channel";
  $("channel").disabled = $("channel-module").disabled = !oneChannel || !p;
  if (!p) return;
  const channels = p.attention[i].channels;
  $("channel").max = channels - 1;
  $("channel").value = state.channels[i];
  $("channel-range").textContent = `0 to ${channels - 1} for ${p.attention[i].module}`;
}

function fillModuleSelect(p) {
  $("channel-module").replaceChildren(...p.attention.map((entry, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = `${entry.module} (${entry.channels} channels)`;
    return option;
  }));
}

function channelInput(commit) {
  const i = Number($("channel-module").value) || 0;
  const channels = state.payload.attention[i].channels;
  const typed = Number.parseInt($("channel").value, 10);
  if (Number.isNaN(typed)) { if (commit) $("channel").value = state.channels[i]; return; }
  state.channels[i] = Math.max(0, Math.min(channels - 1, typed));
  // browsers let a typed number past max through; show the channel actually drawn
  if (commit || typed !== state.channels[i]) $("channel").value = state.channels[i];
  state.fetched.failed.clear();  // a new choice tries again
  drawOverlays();
}

// ---- predictions
function showPredictions(p) {
  $("predictions").replaceChildren(...p.predictions.slice(0, 5).map((pred) => {
    const li = document.createElement("li");
    const pct = (100 * pred.probability).toFixed(1);
    const label = document.createElement("span");
    label.textContent = pred.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `${pct} percent`);
    const fill = document.createElement("span");
    fill.style.width = `${pct}%`;  // CSSOM, which the page's CSP allows (a style="" attribute it would not)
    bar.append(fill);
    const value = document.createElement("span");
    value.textContent = `${pct}%`;
    li.append(label, bar, value);
    return li;
  }));
  showOutOfDistribution(p);
  const t = p.timing_ms;
  $("timing").textContent = `Server time ${t.total.toFixed(0)} ms (model ${t.inference.toFixed(0)} ms).`;
}

/** What a view of the forward pass (model/ood.py) reads, in words. */
function describeView(view) {
  if (view === "head") return "the features the classifier reads";
  const [module, statistic] = view.split(":");
  return statistic === "std" ? `the texture of ${module}'s output` : `the mean of ${module}'s output`;
}

/** A plain warning when the picture scores below the training images' threshold, saying which views
 *  found it unfamiliar; a note when the weights have no calibration (out_of_distribution null). */
function showOutOfDistribution(p) {
  $("ood-warning").hidden = p.out_of_distribution !== true;
  $("ood-missing").hidden = p.out_of_distribution !== null;
  if (!p.out_of_distribution) {
    $("ood-detail").textContent = "";
    return;
  }
  const unfamiliar = Object.entries(p.ood_views ?? {}).filter(([, value]) => value < p.ood_threshold);
  const which = unfamiliar.length
    ? ` Unfamiliar in ${unfamiliar.map(([view, value]) => `${describeView(view)} (${value.toFixed(4)})`).join(" and ")}.`
    : "";
  $("ood-detail").textContent =
    `Its score ${p.ood_score.toFixed(4)} is below ${p.ood_threshold.toFixed(4)}, which 95% of the training images reach.${which}`;
}

/** A file size in words: "12.3 MB" (MB of 1,048,576 bytes), exact bytes where a rounded size would
 *  hide the difference from ``other``. */
function sizeText(bytes, other) {
  const mb = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${(n / 1024).toFixed(1)} KB`);
  return mb(bytes) === mb(other) ? `${bytes.toLocaleString("en")} bytes` : mb(bytes);
}

/** Why the server would refuse ``blob`` for its size, or null. */
function tooLarge(blob) {
  if (!MAX_UPLOAD_BYTES || blob.size <= MAX_UPLOAD_BYTES) return null;
  return `it is too large (${sizeText(blob.size, MAX_UPLOAD_BYTES)}; the limit is ${sizeText(MAX_UPLOAD_BYTES, blob.size)})`;
}

// ---- one analysis: explain, draw, then the ablation; a newer one cancels it
// switched: the analysis a model switch started, whose failure takes the Model box back (rollBackModel)
async function analyse(name, source, { switched = false } = {}) {
  // a file over the server's limit is never sent, and what is on screen or on its way goes on undisturbed
  const refused = source instanceof Blob && tooLarge(source);
  if (refused) { setStatus(`Could not analyse ${name}: ${refused}`, true); return; }
  controller?.abort();
  const ctl = new AbortController();
  controller = ctl;
  state.pending = { name, source };
  setStatus(`Analysing ${name}…`);
  try {
    const blob = typeof source === "function" ? await source(ctl.signal) : source;
    const refusedNow = tooLarge(blob);
    if (refusedNow) throw new RequestError(refusedNow);
    const model = state.model, other = $("compare")?.value || "";
    const [p, luts, q] = await Promise.all([
      postImage(withModel("api/v1/explain", model), blob, name, ctl.signal), colormaps(),
      other && other !== model ? postImage(withModel("api/v1/explain", other), blob, name, ctl.signal) : null,
    ]);
    const decoded = p.attention.map(decodeModule);
    const [display, input] = await Promise.all([loadImage(p.images.display), loadImage(p.images.model_input)]);
    if (ctl.signal.aborted) return;  // superseded while the images decoded
    state.luts = luts;
    state.source = { name, blob };
    state.pending = null;
    state.compare = q ? { payload: q, decoded: q.attention.map(decodeModule) } : null;
    show(name, p, decoded, display, input);
    setStatus(`${name}: ${p.predictions[0].label} (${(100 * p.predictions[0].probability).toFixed(1)}%) ` +
              `by ${p.weights}.`);
    runAblation(blob, name, ctl.signal, p.weights);
  } catch (err) {
    if (isAbort(err) || ctl.signal.aborted) return;
    state.pending = null;
    const back = switched ? rollBackModel() : null;
    setStatus(`Could not analyse ${name}: ${failureText(err)}` +
              (back ? ` The model is back to ${back}, whose results are on screen.` : ""), true);
    resumeOnScreen(ctl.signal);
  }
}

/** After a failed analysis with another model than the results on screen were made with, the Model
 *  box goes back to theirs (the header never left it); returns that model's name, or null. */
function rollBackModel() {
  const shown = state.payload?.weights;
  if (!shown || shown === state.model) return null;
  chooseModel(shown);
  if ($("model")) $("model").value = shown;
  return shown;
}

/** After a new image failed, the one still on screen gets back what starting the new one stopped:
 * its ablation and the channels it was loading. */
function resumeOnScreen(signal) {
  if (!state.payload || !state.source) return;
  if (state.ablationStopped) runAblation(state.source.blob, state.source.name, signal, state.payload.weights);
  drawOverlays();  // asks again for any channel whose request was cut short
}

/** Analyses again what was asked for last (a model or comparison changed): the image whose analysis
 * is still running, or else the one on screen. */
function reanalyse(options = {}) {
  const next = state.pending ?? (state.source && { name: state.source.name, source: state.source.blob });
  if (next) analyse(next.name, next.source, options);
}

function show(name, p, decoded, display, input) {
  clearTimeout(state.fetched.timer);
  Object.assign(state, { name, payload: p, decoded, display, channels: p.attention.map(() => 0), fetched: freshChannels() });
  $("uploaded").src = p.images.uploaded;
  $("uploaded-size").textContent = `(${p.image.width}×${p.image.height})`;
  $("model-input").src = input.src;
  $("input-size").textContent = `(centre crop, ${input.naturalWidth}×${input.naturalHeight})`;
  showPredictions(p);
  $("modules").replaceChildren(...p.attention.map((entry, i) => createPanel(entry, {
    onPng: () => downloadPng(i), onNpy: () => downloadNpy(i),
  })));
  fillModuleSelect(p);
  showCompare();
  $("results").hidden = false;
  setCurrentModule(0);
  syncChannelBox();
  drawOverlays();
  drawInsides();
  const top3 = p.predictions.slice(0, 3).map((q) => `${q.label} ${(100 * q.probability).toFixed(1)}%`).join(" · ");
  $("topbar-text").textContent = `${name}: ${top3}`;
  $("topbar").hidden = false;
  describeModel(p.weights);
}

async function runAblation(blob, name, signal, model) {
  // model: the weights that answered the analysis, so the table is always the masks' model's;
  // top_k left to the server (5, or fewer for a model with fewer classes)
  const box = $("ablation");
  box.replaceChildren(hint("Running with attention off…"));
  state.ablationStopped = false;
  try {
    box.replaceChildren(...ablationTable(await postImage(withModel("api/v1/ablate", model), blob, name, signal)));
  } catch (err) {
    state.ablationStopped = isAbort(err);
    box.replaceChildren(isAbort(err) ? hint("Stopped: another image was chosen.")
                                     : hint(`Could not run with attention off: ${failureText(err)}`, "error"));
  }
}

// ---- downloads
function save(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function downloadPng(i) {
  const module = state.payload.attention[i].module;
  $("modules").children[i].querySelector("canvas.overlay")
    .toBlob((blob) => save(blob, `${module}.overlay.png`), "image/png");
}

/** The raw mask, every channel: the one request for the whole masks (all_channels=true), made once
 *  per image and model, on the first download. */
async function downloadNpy(i) {
  const p = state.payload, f = state.fetched, module = p.attention[i].module;
  const { blob, name } = state.source;
  const button = $("modules").children[i].querySelector(".dl-npy");
  button.setAttribute("aria-busy", "true");
  try {
    f.full ??= postImage(withModel("api/v1/explain?all_channels=true", p.weights), blob, name, controller.signal);
    const entry = (await f.full).attention.find((a) => a.module === module);
    save(npyBlob(decodeMask(entry), [entry.channels, ...entry.shape]), `${module}.mask.npy`);
  } catch (err) {
    if (f.full && f === state.fetched) f.full = null;  // try again on the next click
    if (!isAbort(err)) setStatus(`Could not fetch the raw mask of ${module}: ${failureText(err)}`, true);
  } finally {
    button.removeAttribute("aria-busy");
  }
}

// ---- architecture
function selectModule(name) {
  const panel = document.getElementById(panelId(name));
  if (!panel) { setStatus("Analyse an image first to see this module's mask."); return; }
  setCurrentModule([...$("modules").children].indexOf(panel));
  panel.querySelector("details.inside").open = true;
  panel.scrollIntoView({ behavior: "smooth", block: "center" });
  panel.querySelector("canvas.overlay").focus({ preventScroll: true });
}

let archDrawn = null;  // the weights whose architecture is drawn (or being fetched)

async function loadArchitecture(name) {
  if (!name || name === archDrawn) return;
  archDrawn = name;
  try {
    const arch = await getJSON(`api/v1/models/${encodeURIComponent(name)}/architecture`);
    if (name !== archDrawn) return;  // another model since, while it loaded: the newer answer draws
    $("arch-svg").replaceChildren(architectureSvg(arch, selectModule));
  } catch (err) {
    if (name !== archDrawn) return;
    archDrawn = null;  // the next description tries again
    $("arch-svg").replaceChildren(hint(`Could not draw the architecture: ${failureText(err)}`, "error"));
  }
}

// ---- which model: the switcher re-analyses the image on screen and redraws the architecture
function withModel(url, model) {
  if (!model) return url;
  return `${url}${url.includes("?") ? "&" : "?"}model=${encodeURIComponent(model)}`;
}

function modelLine(m) {
  const top1 = m.metrics?.top1 === undefined ? "" : `, top-1 ${(100 * m.metrics.top1).toFixed(1)}% on ${m.metrics.dataset}`;
  const strong = Object.assign(document.createElement("strong"), { textContent: m.name });
  return ["Model ", strong, ` (${m.weights}), ${m.classes.length} classes, input ${m.input_size[0]}×${m.input_size[1]}, ` +
    `${m.modules.length} attention modules${top1}.`];
}

/** A model cannot be compared with itself: its own option is disabled, and chosen as Model it ends the comparison. */
function syncCompareOptions() {
  const compare = $("compare");
  if (!compare) return;
  for (const option of compare.options) option.disabled = option.value !== "" && option.value === state.model;
  if (compare.value === state.model) compare.value = "";
}

/** The notes that name the model's classes and calibration data, for the model now chosen. */
function showModelNotes(m) {
  const classes = m.classes.join(", ");
  for (const [id, text] of [["class-count", String(m.classes.length)], ["class-list", classes],
                            ["predictions-classes", classes], ["ood-data", m.ood ? `${m.ood.data} ` : ""]]) {
    if ($(id)) $(id).textContent = text;
  }
}

/** The model the header, the class notes and the architecture describe: the one whose results are on
 *  screen, or with none yet, the one chosen. */
const describedModel = () => state.payload?.weights ?? state.model;

/** Every served model's metadata, fetched once (again after a failure). */
function models() {
  catalog ??= getJSON("api/v1/models").catch((err) => { catalog = null; throw err; });
  return catalog;
}

/** Points the header, the class notes and the architecture at ``weights``, unless another model is to
 *  be described by the time its details arrive. A failure to read them is said in the header itself,
 *  where no later status line overwrites it. */
async function describeModel(weights) {
  loadArchitecture(weights);
  if (!$("model-line") || weights === headerModel) return;
  try {
    const m = (await models()).models.find((x) => x.weights === weights);
    if (m && weights === describedModel()) {
      headerModel = weights;
      $("model-line").classList.remove("error");
      $("model-line").replaceChildren(...modelLine(m));
      showModelNotes(m);
    }
  } catch (err) {
    if (weights !== describedModel()) return;
    headerModel = null;  // the next description tries again
    $("model-line").classList.add("error");
    $("model-line").textContent = `Model ${weights}: could not read its details (${failureText(err)}); ` +
      "the class notes on this page may be another model's.";
  }
}

/** The model later requests ask for. */
function chooseModel(weights) {
  state.model = weights;
  document.body.dataset.model = weights;
  syncCompareOptions();
}

/** A new Model: the image asked for last is analysed again with it, and the header, notes and
 *  architecture follow once its results are shown (at once when there are none to contradict them). */
function switchModel(weights) {
  chooseModel(weights);
  if (!state.payload) describeModel(weights);
  reanalyse({ switched: true });
}

// ---- wiring
function pickFile(file) { if (file) analyse(file.name || "pasted image", file); }

$("choose-file").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (e) => {
  pickFile(e.target.files[0]);
  e.target.value = "";  // choosing the same file again is a new upload too
});
// A file dropped anywhere on the page is analysed as one dropped on the drop zone: the browser's own
// action for a file let go outside it would be to leave the page and open the file.
const drop = $("dropzone");
const carriesFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
drop.addEventListener("dragover", (e) => { if (carriesFiles(e)) drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
document.addEventListener("dragover", (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = "copy";
});
document.addEventListener("drop", (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  drop.classList.remove("over");
  const files = [...e.dataTransfer.files];
  // an image among several; else the first file, and the server says why it is not one
  pickFile(files.find((f) => f.type.startsWith("image/")) ?? files[0]);
});
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((it) => it.type.startsWith("image/"));
  if (item) pickFile(item.getAsFile());
});
document.querySelectorAll(".example").forEach((button) => button.addEventListener("click", () =>
  analyse(button.dataset.name, (signal) => getBlob(button.dataset.src, signal))));

for (const id of ["opacity", "scale"]) $(id).addEventListener("input", drawOverlays);
$("colormap").addEventListener("input", () => { drawOverlays(); drawInsides(); });
$("reduction").addEventListener("input", () => { state.fetched.failed.clear(); syncChannelBox(); drawOverlays(); });
$("channel-module").addEventListener("input", () => setCurrentModule(Number($("channel-module").value)));
$("channel").addEventListener("input", () => channelInput(false));
$("channel").addEventListener("change", () => channelInput(true));
onModuleChange((i) => {
  // the current module (presenter, diagram, or the Module box) is the one the Channel box edits
  if (!state.payload) return;
  $("channel-module").value = String(i);
  syncChannelBox();
});
installPresenter(() => state.payload !== null);
$("model")?.addEventListener("change", (e) => switchModel(e.target.value));
$("compare")?.addEventListener("change", () => reanalyse());
syncCompareOptions();
loadArchitecture(state.model);
