// The bench page: one bundle variant in onnxruntime-web, timed inside the page. bench.mjs
// (driven by `edgedistill bench --device browser`) calls window.edgedistillBench.load(options)
// once, then .run(batch, runs, seconds) for each slice of timed runs.
//
// load() returns the cold start in parts: fetching the model and the runtime's .wasm, compiling
// that .wasm (measured on its own: the same compile happens again inside session creation,
// which instantiates it), creating the session, and the first run.

const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0,
  65, 0, 253, 15, 253, 98, 11]);  // a function returning a v128: valid only with WebAssembly SIMD
const ORT = new URL("ort/", location.href).href;
const state = { session: null, ort: null, inputs: new Map(), options: null };

const now = () => performance.now();
const unavailable = (message) => Object.assign(new Error(message), { unavailable: true });

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch ${url} (HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

async function load({ model, engine = "wasm", threads = 1, inputName, inputShape }) {
  const info = { engine, threads, isolated: self.crossOriginIsolated, simd: WebAssembly.validate(SIMD_PROBE),
    hardware_concurrency: navigator.hardwareConcurrency, user_agent: navigator.userAgent };
  if (engine === "wasm" && threads > 1 && !self.crossOriginIsolated) {
    throw unavailable("the page is not cross-origin isolated (no COOP/COEP headers), so WebAssembly threads are off");
  }
  let adapter = null;
  if (engine === "webgpu") {
    adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
    if (!adapter) throw unavailable("WebGPU: this browser exposes no GPU adapter");
    info.adapter = adapter.info ? `${adapter.info.vendor} ${adapter.info.architecture} ${adapter.info.description}`.trim() : "yes";
  }
  // WASM rows load the build the web example ships; WebGPU needs the WebGPU build.
  const ort = await import(engine === "webgpu" ? "./ort/ort.webgpu.min.mjs" : "./ort/ort.wasm.min.mjs");
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = ORT;
  ort.env.wasm.proxy = false;
  info.ort_version = ort.env.versions?.web ?? null;

  let started = now();
  const bytes = await fetchBytes(new URL(model, location.href));
  info.model_fetch_ms = now() - started;
  info.model_bytes = bytes.length;
  if (engine === "wasm") {
    started = now();
    const wasm = await fetchBytes(ORT + "ort-wasm-simd-threaded.wasm");
    info.wasm_fetch_ms = now() - started;
    started = now();
    await WebAssembly.compile(wasm);
    info.wasm_compile_ms = now() - started;
    ort.env.wasm.wasmBinary = wasm;  // session creation instantiates these bytes (no second fetch)
  }
  started = now();
  state.session = await ort.InferenceSession.create(bytes, { executionProviders: [engine], graphOptimizationLevel: "all" });
  info.session_ms = now() - started;
  Object.assign(state, { ort, options: { inputName, inputShape } });
  started = now();
  const out = await runOnce(1);
  info.first_run_ms = now() - started;
  info.output_shape = out.dims;
  if (!Array.from(out.data).every(Number.isFinite)) throw new Error("the model returned non-finite outputs");
  return info;
}

function input(batch) {
  if (!state.inputs.has(batch)) {
    const [c, h, w] = state.options.inputShape;
    const data = new Float32Array(batch * c * h * w);
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.37);  // fixed, not all zeros
    state.inputs.set(batch, new state.ort.Tensor("float32", data, [batch, c, h, w]));
  }
  return state.inputs.get(batch);
}

async function runOnce(batch) {
  const result = await state.session.run({ [state.options.inputName]: input(batch) });
  return result[state.session.outputNames[0]];
}

// Milliseconds of each call: `runs` calls, or calls until `seconds` passed (at least one).
async function run(batch, runs, seconds, rewarm = 1) {
  for (let i = 0; i < rewarm; i++) await runOnce(batch);
  const times = [];
  const deadline = seconds ? now() + seconds * 1000 : Infinity;
  for (;;) {
    const start = now();
    await runOnce(batch);
    const end = now();
    times.push(end - start);
    if (runs && times.length >= runs) return times;
    if (!runs && end >= deadline) return times;
  }
}

window.edgedistillBench = { load, run, ready: true };
document.getElementById("status").dataset.state = "ready";
