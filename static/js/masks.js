// Soft masks as numbers: decoding what /api/v1/explain sends, and colouring it.

/** Float32 values from ``{data, lo, hi}``: base64 little-endian uint16, 0..65535 onto [lo, hi]. */
export function decodeQuantized(q, count, what) {
  const bytes = Uint8Array.from(atob(q.data), (c) => c.charCodeAt(0));
  const u = new Uint16Array(bytes.buffer);
  if (u.length !== count) throw new Error(`${what}: got ${u.length} values, expected ${count}`);
  const out = new Float32Array(u.length);
  const step = (q.hi - q.lo) / 65535;
  for (let i = 0; i < u.length; i++) out[i] = q.lo + u[i] * step;
  return out;
}

/** What the page draws of one module from a default answer: each reduction's (h, w) map (mean, max,
 * added), the most varied channels as [channel, map] pairs, the histogram and the trunk magnitudes. */
export function decodeModule(entry) {
  const n = entry.shape[0] * entry.shape[1], what = entry.module;
  const maps = Object.fromEntries(Object.entries(entry.reductions)
    .map(([name, q]) => [name, decodeQuantized(q, n, `${what} ${name}`)]));
  const varied = decodeQuantized(entry.varied, entry.varied.index.length * n, `${what} varied`);
  return {
    maps,
    varied: entry.varied.index.map((k, j) => [k, varied.subarray(j * n, (j + 1) * n)]),
    histogram: entry.histogram,
    trunkBefore: decodeQuantized(entry.trunk_before, n, `${what} trunk_before`),
    trunkAfter: decodeQuantized(entry.trunk_after, n, `${what} trunk_after`),
  };
}

/** The one channel a ``channel=k`` answer adds to a module, as an (h, w) map; null where it has none. */
export function decodeChannel(entry) {
  return entry.channel ? decodeQuantized(entry.channel, entry.shape[0] * entry.shape[1], `${entry.module} channel`) : null;
}

/** The whole (channels, h, w) mask of an ``all_channels=true`` answer. */
export function decodeMask(entry) {
  return decodeQuantized(entry, entry.channels * entry.shape[0] * entry.shape[1], entry.module);
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
