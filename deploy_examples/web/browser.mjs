// The one place headless Chromium is started (e2e.mjs drives the page, bench.mjs measures it):
// the system Chromium ($CHROMIUM, else /usr/bin/chromium; playwright-core downloads none) with
// flags that work as root in a container and keep it from phoning home.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-quic"];

// A fresh browser (playwright gives each launch a new temporary profile: nothing cached from an
// earlier run) and one context; close() ends both.
export async function launch({ executablePath = CHROMIUM, args = [] } = {}) {
  if (!existsSync(executablePath)) throw new Error(`no Chromium at ${executablePath} (apt-get install chromium, or set CHROMIUM)`);
  const browser = await chromium.launch({ executablePath, headless: true, args: [...FLAGS, ...args] });
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 }, deviceScaleFactor: 1 });
  return { browser, context, close: () => browser.close().catch(() => {}) };
}

// Peak resident memory (VmHWM) summed over the descendants of a process (the browser's
// processes, under this node process), MiB; null where /proc is missing.
export function descendantsPeakMb(rootPid = process.pid) {
  try {
    const parents = new Map();
    for (const name of readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, "utf8");
        parents.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      } catch { /* gone */ }
    }
    const tree = new Set([rootPid]);
    for (let grew = true; grew;) {
      grew = false;
      for (const [pid, ppid] of parents) if (tree.has(ppid) && !tree.has(pid)) { tree.add(pid); grew = true; }
    }
    let kb = 0;
    tree.delete(rootPid);
    for (const pid of tree) {
      try {
        const m = /VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
        if (m) kb += Number(m[1]);
      } catch { /* gone */ }
    }
    return Math.round(kb / 102.4) / 10;
  } catch {
    return null;
  }
}
