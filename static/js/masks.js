// Soft masks as numbers: decoding what /api/v1/explain sends, reducing over channels, colouring.

/** The (channels, h, w) mask of one module as float32, from base64 little-endian uint16 over [lo, hi]. */
export function decodeMask(entry) {
  const bytes = Uint8Array.from(atob(entry.data), (c) => c.charCodeAt(0));
  const q = new Uint16Array(bytes.buffer);
  const expected = entry.channels * entry.shape[0] * entry.shape[1];
  if (q.length !== expected) throw new Error(`${entry.module}: got ${q.length} mask values, expected ${expected}`);
  const out = new Float32Array(q.length);
  const step = (entry.hi - entry.lo) / 65535;
  for (let i = 0; i < q.length; i++) out[i] = entry.lo + q[i] * step;
  return out;
}

/** One (h, w) map: the mean or max over channels, a single channel, or "added": the mean over channels
 * of M * |T|. Since M > 0, (1 + M) * |T| - |T| = M * |T|, so it is the trunk magnitude after (1 + M)
 * minus before, both of which the server sends per position. */
export function reduce(mask, entry, reduction, channel) {
  const [h, w] = entry.shape, n = h * w, c = entry.channels;
  if (reduction === "channel") return mask.slice(channel * n, (channel + 1) * n);
  if (reduction === "added") {
    const before = entry.trunk_before.flat(), after = entry.trunk_after.flat();
    return Float32Array.from(after, (v, i) => v - before[i]);
  }
  const out = new Float32Array(n);
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

export function range(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}

export const fmt = (v) => v.toFixed(3);

/** A w x h canvas of ``values`` coloured through a 256-entry RGB lookup table, lo..hi onto its ends. */
export function colourCanvas(values, h, w, lut, lo, hi) {
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

/** [variance, channel] of every channel's map, largest first: the channels that vary most over the image. */
export function channelVariances(mask, entry) {
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

/** Counts of values in ``bins`` equal bins over [0, 1), with the mean and standard deviation. */
export function histogram(values, bins = 50) {
  const counts = new Array(bins).fill(0);
  let sum = 0, sq = 0;
  for (const v of values) {
    counts[Math.max(0, Math.min(bins - 1, Math.floor(v * bins)))]++;
    sum += v; sq += v * v;
  }
  const mean = sum / values.length;
  return { counts, mean, sd: Math.sqrt(Math.max(0, sq / values.length - mean * mean)) };
}
