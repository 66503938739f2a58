// One `edgedistill bench --device browser` row: a fresh headless Chromium on the bench page
// (benchpage.js), speaking the bench worker's JSON-lines protocol (edgedistill/bench/worker.py)
// so the runner interleaves it with the native rows:
//
//   node bench.mjs '<spec JSON>'      spec: {url, model, engine, threads, batches, warmup, input: {name, shape}}
//   -> {"event": "ready", ...cold start}   then per stdin line {"cmd": "run", "batch", "runs" | "seconds"}
//   -> {"event": "times", "batch", "ms": [...]}; {"cmd": "exit"} -> {"event": "exit", "peak_rss_all_mb"}
//
// Failures: {"event": "error", "error": "one line", "unavailable": bool} (unavailable: the
// browser cannot run this row at all, e.g. no WebGPU adapter or no cross-origin isolation).
import { createInterface } from "node:readline";
import { descendantsPeakMb, launch } from "./browser.mjs";

const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");
const started = performance.now();
let browser = null;

async function main() {
  const spec = JSON.parse(process.argv[2] ?? "");
  browser = await launch();
  const launchSeconds = (performance.now() - started) / 1000;
  const page = await browser.context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(new URL("bench.html", spec.url).href);
  await page.waitForFunction(() => window.edgedistillBench?.ready, null, { timeout: 60000 });
  const options = { model: `bundle/${spec.model_url}`, engine: spec.engine, threads: spec.threads,
    inputName: spec.input.name, inputShape: spec.input.shape };
  const loaded = await page.evaluate(async (o) => {
    try {
      return { info: await window.edgedistillBench.load(o) };
    } catch (e) {
      return { error: e.message, unavailable: Boolean(e.unavailable) };
    }
  }, options);
  if (loaded.error) {
    send({ event: "error", error: loaded.error, unavailable: loaded.unavailable });
    return;
  }
  const info = loaded.info;
  const run = (batch, runs, seconds, rewarm) => page.evaluate(
    ([b, r, s, w]) => window.edgedistillBench.run(b, r, s, w), [batch, runs ?? null, seconds ?? null, rewarm ?? 1]);
  for (const batch of spec.batches) await run(batch, spec.warmup || 1, null, 0);  // warm-up, like the native rows
  const fetchMs = info.model_fetch_ms + (info.wasm_fetch_ms ?? 0);
  send({
    event: "ready",
    // the runner's cold-start fields: "import" = launching the browser and fetching the runtime
    // and the model; "load" = session creation (instantiating the .wasm, parsing, optimizing)
    import_seconds: launchSeconds + fetchMs / 1000, load_seconds: info.session_ms / 1000, first_run_ms: info.first_run_ms,
    cold_start: { browser_launch_ms: launchSeconds * 1000, fetch_ms: fetchMs, model_fetch_ms: info.model_fetch_ms,
      wasm_fetch_ms: info.wasm_fetch_ms ?? null, wasm_compile_ms: info.wasm_compile_ms ?? null,
      session_ms: info.session_ms, first_run_ms: info.first_run_ms,
      page_ms: fetchMs + info.session_ms + info.first_run_ms },
    output_shape: info.output_shape, peak_rss_mb: descendantsPeakMb(),
    settings: { runtime: `onnxruntime-web ${info.ort_version ?? ""}`.trim(), engine: info.engine, threads: info.threads,
      cross_origin_isolated: info.isolated, wasm_simd: info.simd, adapter: info.adapter ?? null,
      hardware_concurrency: info.hardware_concurrency, browser: browser.browser.version(),
      user_agent: info.user_agent, input: "a fixed synthetic tensor (latency does not depend on the pixel values)",
      timing: "performance.now() around each awaited session.run inside the page" },
  });
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === "exit") break;
    const ms = await run(command.batch, command.runs, command.seconds, command.rewarm);
    if (pageErrors.length) throw new Error(pageErrors.join(" | "));
    send({ event: "times", batch: command.batch, ms });
  }
  send({ event: "exit", peak_rss_all_mb: descendantsPeakMb() });
}

let code = 0;
try {
  await main();
} catch (err) {
  send({ event: "error", error: String(err.message ?? err).split("\n")[0], unavailable: false });
  code = 1;
} finally {
  if (browser) await browser.close();
}
process.exit(code);
