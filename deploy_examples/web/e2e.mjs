// Drive the page in headless Chromium: pick images through the file input, wait for the
// predictions, read them off the page, save a screenshot.
//
//   node e2e.mjs --url http://127.0.0.1:8000/ --out result.json --screenshot page.png [--mode pil|canvas] IMAGE...
//
// Writes {labels: [{file, label}], results: [{file, label, embedding, input, ms}], status, console}
// to --out. Chromium: browser.mjs's ($CHROMIUM, else /usr/bin/chromium).
import { writeFileSync } from "node:fs";
import { CHROMIUM, launch } from "./browser.mjs";

function parse(argv) {
  const opts = { images: [], mode: "pil", timeout: 60000, chromium: CHROMIUM };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === "--url") opts.url = next();
    else if (a === "--out") opts.out = next();
    else if (a === "--screenshot") opts.screenshot = next();
    else if (a === "--mode") opts.mode = next();
    else if (a === "--timeout") opts.timeout = Number(next()) * 1000;
    else if (a === "--chromium") opts.chromium = next();
    else opts.images.push(a);
  }
  if (!opts.url || !opts.images.length) throw new Error("usage: node e2e.mjs --url URL [--out F] [--screenshot F] IMAGE...");
  return opts;
}

const opts = parse(process.argv.slice(2));
const browser = await launch({ executablePath: opts.chromium });
const consoleLines = [];
let exitCode = 0;
try {
  const page = await browser.context.newPage();
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(opts.url);
  await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout: opts.timeout });
  const loadError = await page.evaluate(() => window.edgedistill.error);
  if (loadError) throw new Error(`the page failed to load: ${loadError}`);
  if (opts.mode !== "pil") await page.selectOption("#resize", opts.mode);
  await page.setInputFiles("#files", opts.images);
  await page.waitForFunction(
    (n) => document.querySelector("#status").dataset.state === "done" && document.querySelectorAll(".result").length === n,
    opts.images.length, { timeout: opts.timeout },
  );
  // What a user sees: the label on each card.
  const labels = await page.$$eval(".result", (cards) => cards.map((c) => ({
    file: c.dataset.file,
    label: c.querySelector(".label")?.textContent ?? null,
    error: c.classList.contains("error") ? c.textContent : null,
  })));
  const results = await page.evaluate(() => window.edgedistill.results.map((r) => ({
    file: r.file, label: r.label, ms: r.ms, mode: r.mode, embedding: Array.from(r.embedding), input: Array.from(r.input),
  })));
  const status = await page.textContent("#status");
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
  const out = JSON.stringify({ labels, results, status, console: consoleLines }, null, 1);
  if (opts.out) writeFileSync(opts.out, out);
  else process.stdout.write(out + "\n");
} catch (err) {
  console.error(`error: ${err.message}`);
  if (consoleLines.length) console.error(consoleLines.join("\n"));
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
