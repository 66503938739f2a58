// The bundle's preprocessing and the k-NN, in plain JavaScript (no DOM, no dependencies):
// imported by app.js in the page and runnable under node for checks.
//
// resamplePIL() is Pillow's resampling (src/libImaging/Resample.c: the convolution filters
// with 8-bit fixed-point coefficients, horizontal pass then vertical pass), so a decoded PNG
// becomes bit-for-bit the tensor that Python's preprocessing (PIL + numpy) makes, and the
// float32 arithmetic (Math.fround after every operation) is numpy's. A canvas drawImage()
// resize is not: browsers use their own (bilinear/Lanczos-ish, not PIL-identical) scalers.

const PRECISION_BITS = 32 - 8 - 2;

const FILTERS = {
  box: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  hamming: {
    support: 1.0,
    f: (x) => {
      x = Math.abs(x);
      if (x === 0.0) return 1.0;
      if (x >= 1.0) return 0.0;
      x *= Math.PI;
      return (Math.sin(x) / x) * (Math.fround(0.54) + Math.fround(0.46) * Math.cos(x));
    },
  },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: {
    support: 3.0,
    f: (x) => {
      const sinc = (v) => (v === 0.0 ? 1.0 : Math.sin(v * Math.PI) / (v * Math.PI));
      return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
    },
  },
};

export const INTERPOLATIONS = Object.keys(FILTERS);

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input
// pixel, the count, and integer weights scaled by 2^22.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.f((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

const clip8 = (ss) => Math.min(255, Math.max(0, ss >> PRECISION_BITS));

// One pass along x (horizontal) or y: src is RGB, w x h.
function pass(src, w, h, outSize, filter, horizontal) {
  const { ksize, bounds, kk } = coefficients(horizontal ? w : h, outSize, filter);
  const ow = horizontal ? outSize : w, oh = horizontal ? h : outSize;
  const dst = new Uint8Array(ow * oh * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < oh; yy++) {
    for (let xx = 0; xx < ow; xx++) {
      const o = horizontal ? xx : yy;
      const start = bounds[o * 2], n = bounds[o * 2 + 1], k0 = o * ksize;
      let s0 = half, s1 = half, s2 = half;
      for (let i = 0; i < n; i++) {
        const p = (horizontal ? yy * w + start + i : (start + i) * w + xx) * 3, k = kk[k0 + i];
        s0 += src[p] * k; s1 += src[p + 1] * k; s2 += src[p + 2] * k;
      }
      const q = (yy * ow + xx) * 3;
      dst[q] = clip8(s0); dst[q + 1] = clip8(s1); dst[q + 2] = clip8(s2);
    }
  }
  return dst;
}

// rgb: Uint8Array/Uint8ClampedArray, `channels` bytes per pixel (3, or 4 for RGBA from a
// canvas: alpha ignored). Returns {data: Uint8Array RGB, width, height}.
export function resamplePIL(rgb, width, height, outW, outH, interpolation = "bicubic", channels = 4) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation ${interpolation} is not supported here (${INTERPOLATIONS.join(", ")})`);
  let img = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < width * height; i++, j += channels) {
    img[i * 3] = rgb[j]; img[i * 3 + 1] = rgb[j + 1]; img[i * 3 + 2] = rgb[j + 2];
  }
  // Pillow 13 runs the vertical pass first when the height shrinks more than twice as much
  // as the width (older Pillow: always horizontal first; results differ by a level or two).
  const horizontalFirst = !(height - outH > 0 && height - outH > (width - outW) * 2);
  if (horizontalFirst && outW !== width) img = pass(img, width, height, outW, filter, true);
  const w = horizontalFirst ? outW : width;
  if (outH !== height) img = pass(img, w, height, outH, filter, false);
  if (!horizontalFirst && outW !== width) img = pass(img, width, outH, outW, filter, true);
  return { data: img, width: outW, height: outH };
}

// torchvision's Resize(int): the short side becomes `resize`, the long side
// int(resize * long / short), truncated. [h, w]: exactly that. Returns [width, height].
export function resizedSize(width, height, resize) {
  if (Array.isArray(resize) && resize.length === 1) resize = resize[0];
  if (resize === null || resize === undefined || resize === 0) return [width, height];
  if (Array.isArray(resize)) return [resize[1], resize[0]];
  return width <= height
    ? [resize, Math.trunc((resize * height) / width)]
    : [Math.trunc((resize * width) / height), resize];
}

// Python's round() on halves: to even.
function roundHalfEven(v) {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

const pair = (v) => (Array.isArray(v) ? [v[0], v[v.length - 1]] : [v, v]);

// The manifest's preprocessing on RGB(A) pixels: resize (PIL-exact), center crop (zero
// padding when smaller, offsets rounded half-to-even), x * scale (as x / 255 in float32),
// (x - mean) / std, NCHW (or NHWC) float32. `resized` (optional) replaces the resize step
// with pixels already at resizedSize() (the page's canvas mode).
export function preprocessPixels(rgba, width, height, pp, channels = 4, resized = null) {
  let img;
  const [rw, rh] = resizedSize(width, height, pp.resize);
  if (resized) img = resized;
  else if (rw !== width || rh !== height) img = resamplePIL(rgba, width, height, rw, rh, pp.interpolation || "bicubic", channels);
  else img = resamplePIL(rgba, width, height, width, height, "bicubic", channels); // copy to RGB
  const [ch, cw] = pair(pp.crop);
  // zero padding (left/top get the floor half), as torchvision's CenterCrop
  const padW = Math.max(cw, img.width), padH = Math.max(ch, img.height);
  const offX = Math.floor((padW - img.width) / 2), offY = Math.floor((padH - img.height) / 2);
  const left = roundHalfEven((padW - cw) / 2), top = roundHalfEven((padH - ch) / 2);
  const divisor = Math.fround(1.0 / Number(pp.scale ?? 1 / 255));
  const mean = (pp.mean).map(Math.fround), std = (pp.std).map(Math.fround);
  const bgr = String(pp.channel_order || "RGB").toUpperCase() === "BGR";
  const nchw = String(pp.layout || "NCHW").toUpperCase() === "NCHW";
  const out = new Float32Array(3 * ch * cw);
  for (let y = 0; y < ch; y++) {
    for (let x = 0; x < cw; x++) {
      const sx = x + left - offX, sy = y + top - offY;
      const inside = sx >= 0 && sy >= 0 && sx < img.width && sy < img.height;
      for (let c = 0; c < 3; c++) {
        const srcC = bgr ? 2 - c : c;
        const v = inside ? img.data[(sy * img.width + sx) * 3 + srcC] : 0;
        const value = Math.fround(Math.fround(Math.fround(v / divisor) - mean[srcC]) / std[srcC]);
        out[nchw ? c * ch * cw + y * cw + x : (y * cw + x) * 3 + c] = value;
      }
    }
  }
  return out;
}

export function l2normalize(v) {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  const n = Math.max(Math.sqrt(s), 1e-12);
  return Float32Array.from(v, (x) => x / n);
}

export function cosine(a, b) {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i]; }
  return ab / Math.max(Math.sqrt(aa * bb), 1e-24);
}

// DINO-weighted k-NN against a gallery of L2-normalized rows (Float32Array, n x dim): the k
// most similar (ties: lower index) vote exp(sim / T) for their class; most votes wins (ties:
// lower class). Returns {label, votes, neighbours: [{index, similarity}]}.
export function knnPredict(gallery, labels, numClasses, query, k = 20, temperature = 0.07) {
  const dim = query.length, n = labels.length;
  const q = l2normalize(query);
  const sims = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += q[d] * gallery[i * dim + d];
    sims[i] = Math.fround(s);
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => sims[b] - sims[a] || a - b);
  const top = order.slice(0, Math.min(k, n));
  const votes = new Float64Array(numClasses);
  for (const i of top) votes[labels[i]] += Math.fround(Math.exp(sims[i] / temperature));
  let label = 0;
  for (let c = 1; c < numClasses; c++) if (votes[c] > votes[label]) label = c;
  return { label, votes: Array.from(votes), neighbours: top.map((i) => ({ index: i, similarity: sims[i] })) };
}
