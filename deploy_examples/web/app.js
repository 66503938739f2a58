// The page: an edgedistill bundle's ONNX model in onnxruntime-web (wasm, 1 thread) and a
// k-NN over gallery embeddings. Query parameters: ?bundle=bundle/ (the bundle directory's
// URL) and ?gallery=gallery.json (written by classify.py --gallery-json); serve.py maps them.
import * as ort from "./ort/ort.wasm.min.mjs";
import { cosine, knnPredict, preprocessPixels, resizedSize } from "./preprocess.mjs";

const params = new URLSearchParams(location.search);
const bundleUrl = new URL(params.get("bundle") || "bundle/", location.href);
const galleryUrl = new URL(params.get("gallery") || "gallery.json", location.href);

// One thread: no SharedArrayBuffer, so no cross-origin isolation headers are needed.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;

const $ = (id) => document.getElementById(id);
const state = { manifest: null, gallery: null, session: null, bank: null, files: [], runs: 0 };
// What the page computed, for scripts and tests: one entry per shown image.
window.edgedistill = { ready: false, results: [], error: null };

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
}

async function fetchJson(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${what} (${url.pathname}: HTTP ${response.status})`);
  return response.json();
}

const megabytes = (n) => `${(n / 1e6).toFixed(1)} MB`;

async function load() {
  const manifest = await fetchJson(new URL("manifest.json", bundleUrl), "the bundle's manifest.json");
  if (manifest.format_version !== 1) throw new Error(`bundle format_version ${manifest.format_version}: this page reads 1`);
  const gallery = await fetchJson(galleryUrl, "the gallery (write it with classify.py --gallery-json)");
  if (gallery.format !== "edgedistill-gallery") throw new Error(`${galleryUrl.pathname} is not an edgedistill gallery`);
  // The model that embedded the gallery embeds the queries too.
  const variant = manifest.variants[gallery.variant];
  if (!variant || variant.format !== "onnx") {
    throw new Error(`the gallery was embedded with ${gallery.variant}, which is not an ONNX variant of this bundle`);
  }
  const response = await fetch(new URL(variant.file, bundleUrl));
  if (!response.ok) throw new Error(`cannot load the model ${variant.file} (HTTP ${response.status})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const started = performance.now();
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const loadMs = performance.now() - started;
  // One warm-up run, so the first image's time is the model's, not the kernels' set-up.
  const warm = new Float32Array(manifest.input.shape.slice(1).reduce((a, b) => a * b, 1));
  await session.run({ [manifest.input.name]: new ort.Tensor("float32", warm, [1, ...manifest.input.shape.slice(1)]) });

  const dim = gallery.dim;
  const bank = new Float32Array(gallery.labels.length * dim);
  gallery.embeddings.forEach((row, i) => bank.set(row, i * dim));
  Object.assign(state, { manifest, gallery, session, bank, variantName: gallery.variant });

  const pp = manifest.preprocessing;
  const [crop] = Array.isArray(pp.crop) ? pp.crop : [pp.crop];
  $("m-bundle").textContent = manifest.name;
  $("m-variant").textContent = `${gallery.variant} (${variant.precision})`;
  $("m-model").textContent = `${megabytes(variant.size_bytes)}, ${crop} px input, ${dim}-d embedding`;
  $("m-gallery").textContent = `${gallery.labels.length} images, ${gallery.classes.length} classes`;
  $("m-runtime").textContent = `onnxruntime-web ${ort.env.versions?.web ?? ""} · wasm, 1 thread · loaded in ${loadMs.toFixed(0)} ms`;
  $("model").hidden = false;
  $("files").disabled = false;
  $("k").value = Math.min(20, gallery.labels.length);
  window.edgedistill.ready = true;
  setStatus("Ready: choose images to classify.", "ready");
}

// RGBA pixels of the image as decoded, without colour management or premultiplication, so
// a PNG gives exactly the bytes PIL reads. EXIF orientation is applied, as Python does.
async function decode(file) {
  const bitmap = await createImageBitmap(file, {
    colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image",
  });
  const pixels = (w, h, smooth) => {
    const canvas = new OffscreenCanvas(w, h);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.imageSmoothingEnabled = smooth;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, w, h);
    return ctx.getImageData(0, 0, w, h).data;
  };
  return { width: bitmap.width, height: bitmap.height, pixels };
}

async function embed(file, mode) {
  const pp = state.manifest.preprocessing;
  const img = await decode(file);
  const rgba = img.pixels(img.width, img.height, false);
  let resized = null;
  if (mode === "canvas") { // the browser's scaler instead of PIL's bicubic
    const [rw, rh] = resizedSize(img.width, img.height, pp.resize);
    const data = img.pixels(rw, rh, true);
    const rgb = new Uint8Array(rw * rh * 3);
    for (let i = 0; i < rw * rh; i++) rgb.set(data.subarray(i * 4, i * 4 + 3), i * 3);
    resized = { data: rgb, width: rw, height: rh };
  }
  const x = preprocessPixels(rgba, img.width, img.height, pp, 4, resized);
  const shape = state.manifest.input.shape.map((d, i) => (i === 0 ? 1 : d));
  const started = performance.now();
  const feeds = { [state.manifest.input.name]: new ort.Tensor("float32", x, shape) };
  const output = state.manifest.outputs[0].name;
  const result = await state.session.run(feeds, [output]);
  return { embedding: Float32Array.from(result[output].data), ms: performance.now() - started, input: x };
}

function card(entry) {
  const { gallery } = state;
  const el = document.createElement("article");
  el.className = "result";
  el.dataset.file = entry.file;
  const img = document.createElement("img");
  img.src = entry.url;
  img.alt = entry.file;
  const text = document.createElement("div");
  const file = document.createElement("div");
  file.className = "file";
  file.textContent = entry.file;
  const label = document.createElement("div");
  label.className = "label";
  label.textContent = entry.label;
  el.dataset.label = entry.label;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${(entry.share * 100).toFixed(1)}% of the votes · ${entry.ms.toFixed(1)} ms`;
  text.append(file, label, meta);
  const bars = document.createElement("div");
  bars.className = "bars";
  const total = entry.votes.reduce((a, b) => a + b, 0) || 1;
  const ranked = entry.votes.map((v, c) => [v, c]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  for (const [v, c] of ranked) {
    const row = document.createElement("div");
    row.className = c === entry.labelIndex ? "bar top" : "bar";
    const name = document.createElement("span");
    name.textContent = gallery.classes[c];
    name.title = gallery.classes[c];
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${((100 * v) / total).toFixed(1)}%`;
    track.append(fill);
    const pct = document.createElement("span");
    pct.textContent = `${((100 * v) / total).toFixed(0)}%`;
    row.append(name, track, pct);
    bars.append(row);
  }
  const near = document.createElement("p");
  near.className = "neighbours";
  near.textContent = "nearest: " + entry.neighbours.slice(0, 3)
    .map((n) => `${gallery.paths?.[n.index] ?? n.index} (${n.similarity.toFixed(3)})`).join(", ");
  el.append(img, text, bars, near);
  return el;
}

function classify(entry) {
  const { gallery, bank } = state;
  const k = Math.max(1, parseInt($("k").value, 10) || 20);
  const p = knnPredict(bank, gallery.labels, gallery.classes.length, entry.embedding, k);
  const total = p.votes.reduce((a, b) => a + b, 0) || 1;
  return Object.assign(entry, {
    labelIndex: p.label, label: gallery.classes[p.label], votes: p.votes, share: p.votes[p.label] / total,
    neighbours: p.neighbours,
  });
}

function render() {
  $("results").replaceChildren(...window.edgedistill.results.map(card));
}

async function run(files) {
  const run = ++state.runs;
  const mode = $("resize").value;
  setStatus(`Classifying ${files.length} image(s)…`, "busy");
  const results = [];
  for (const file of files) {
    try {
      const { embedding, ms, input } = await embed(file, mode);
      results.push(classify({ file: file.name, url: URL.createObjectURL(file), embedding, ms, input, mode }));
    } catch (err) {
      results.push({ file: file.name, error: String(err.message || err) });
    }
    if (run !== state.runs) return; // a newer selection took over
  }
  window.edgedistill.results = results.filter((r) => !r.error);
  render();
  for (const r of results.filter((r) => r.error)) {
    const el = document.createElement("article");
    el.className = "result error";
    el.dataset.file = r.file;
    el.textContent = `${r.file}: ${r.error}`;
    $("results").append(el);
  }
  const ms = window.edgedistill.results.map((r) => r.ms);
  const mean = ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : 0;
  setStatus(`Classified ${window.edgedistill.results.length} image(s), ${mean.toFixed(1)} ms per image (model only).`, "done");
}

function choose(files) {
  state.files = [...files].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|bmp|gif|webp)$/i.test(f.name));
  if (state.files.length) run(state.files);
}

$("files").addEventListener("change", (e) => choose(e.target.files));
$("resize").addEventListener("change", () => state.files.length && run(state.files));
$("k").addEventListener("change", () => {
  window.edgedistill.results.forEach(classify);
  render();
});
$("clear").addEventListener("click", () => {
  state.files = [];
  window.edgedistill.results = [];
  render();
  $("files").value = "";
  setStatus("Ready: choose images to classify.", "ready");
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (!$("files").disabled) choose(e.dataTransfer.files);
});

// Exposed for checks (e.g. the cosine between two embeddings).
window.edgedistill.cosine = cosine;

load().catch((err) => {
  window.edgedistill.error = String(err.message || err);
  setStatus(`Error: ${window.edgedistill.error}`, "error");
  console.error(err);
});
