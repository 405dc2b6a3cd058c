// NumPy's .npy format, version 1.0: magic, header length, a Python-literal header padded so the data
// starts on a 64-byte boundary, then the raw little-endian array.

/** A .npy Blob of float32 ``values`` with the given ``shape`` (C order). */
export function npyBlob(values, shape) {
  if (!(values instanceof Float32Array)) throw new TypeError("npyBlob takes a Float32Array");
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== values.length) throw new RangeError(`shape ${shape} needs ${count} values, got ${values.length}`);
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${dims}, }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const preamble = new Uint8Array(10);
  preamble.set([0x93, 78, 85, 77, 80, 89, 1, 0, header.length & 255, header.length >> 8]);
  // typed arrays use the machine's byte order, little-endian on every platform browsers run on
  const data = values.byteOffset === 0 && values.byteLength === values.buffer.byteLength
    ? values.buffer : values.slice().buffer;
  return new Blob([preamble, header, data], { type: "application/octet-stream" });
}
