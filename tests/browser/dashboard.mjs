#!/usr/bin/env node
// Headless-Chromium check of the pgsplit dashboard (src/admin/dashboard.html).
//
// usage: node tests/browser/dashboard.mjs <dashboard URL> <screenshot path> <replica name> <wait seconds>
//
// Opens the page, records console errors and page errors, waits for body[data-ready="1"], then polls
// window.__pgsplit for up to <wait seconds> until <replica name>'s latest lag is above maxLag, takes a full-page
// screenshot, and prints one JSON line on stdout:
//   {"consoleErrors":[...],"maxLag":<number|null>,"replicaLag":<number|null>,"aboveThreshold":<bool>}
// Exit 0 only with no console/page errors and aboveThreshold; 1 otherwise (reason on stderr); 2 on bad usage.
// Chromium: $CHROMIUM or /usr/bin/chromium (Debian's `chromium` package); no browser download.

import { chromium } from 'playwright-core';

const [url, shotPath, replica, waitArg] = process.argv.slice(2);
const waitSeconds = Number(waitArg);
if (!url || !shotPath || !replica || !Number.isFinite(waitSeconds) || waitSeconds < 0) {
  process.stderr.write('usage: node dashboard.mjs <dashboard URL> <screenshot path> <replica name> <wait seconds>\n');
  process.exit(2);
}

const consoleErrors = [];
let maxLag = null;
let replicaLag = null;
let aboveThreshold = false;
const problems = [];
let browser = null;
let page = null;
let shotTaken = false;

function finish() {
  const summary = { consoleErrors, maxLag, replicaLag, aboveThreshold };
  process.stdout.write(JSON.stringify(summary) + '\n');
  if (consoleErrors.length) {
    const counts = new Map();
    for (const e of consoleErrors) counts.set(e, (counts.get(e) || 0) + 1);
    const distinct = [...counts].map(([e, n]) => (n > 1 ? `${n}× ${e}` : e));
    problems.push(`${consoleErrors.length} console/page error(s): ${distinct.join(' | ')}`);
  }
  if (!aboveThreshold && !problems.some((p) => p.startsWith('lag') || p.startsWith('page never'))) {
    problems.push(`lag of ${replica} (${replicaLag}) never went above maxLag (${maxLag}) within ${waitSeconds} s`);
  }
  if (problems.length) {
    process.stderr.write(`dashboard check failed: ${problems.join('; ')}\n`);
    return 1;
  }
  return 0;
}

async function run() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const loc = msg.location();
      consoleErrors.push(msg.text() + (loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''));
    }
  });
  page.on('pageerror', (err) => {
    consoleErrors.push(`pageerror: ${err && err.message ? err.message : String(err)}`);
  });

  const response = await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  if (!response || !response.ok()) {
    problems.push(`GET ${url} answered ${response ? response.status() : 'nothing'}`);
  }

  const readyTimeout = Math.max(15_000, waitSeconds * 1000);
  try {
    await page.waitForSelector('body[data-ready="1"]', { state: 'attached', timeout: readyTimeout });
  } catch {
    const banner = await page.evaluate(() => {
      const b = document.getElementById('banner');
      return b && !b.hidden ? b.textContent : null;
    }).catch(() => null);
    problems.push(`page never became ready (body[data-ready="1"]) within ${readyTimeout / 1000} s` +
      (banner ? `; banner: ${banner}` : ''));
    return;
  }

  // The routing card shows how reads that had to see a client's own writes were served.
  const ryw = await page.evaluate(() => {
    const kv = document.getElementById('routing-kv');
    return kv ? kv.textContent : '';
  });
  if (!/read-your-writes.*replica at once.*after a wait.*primary/.test(ryw)) {
    problems.push(`routing card: no read-your-writes line (${JSON.stringify(ryw.slice(0, 200))})`);
  }

  const deadline = Date.now() + waitSeconds * 1000;
  let charted = [];
  for (;;) {
    const snap = await page.evaluate((name) => {
      const d = window.__pgsplit || {};
      const pts = d.points && d.points[name];
      const last = Array.isArray(pts) && pts.length ? pts[pts.length - 1] : null;
      return {
        maxLag: typeof d.maxLag === 'number' ? d.maxLag : null,
        lag: last && typeof last.lag === 'number' ? last.lag : null,
        charted: d.points ? Object.keys(d.points) : [],
      };
    }, replica);
    maxLag = snap.maxLag;
    replicaLag = snap.lag;
    charted = snap.charted;
    aboveThreshold = maxLag !== null && replicaLag !== null && replicaLag > maxLag;
    if (aboveThreshold || Date.now() >= deadline) break;
    await page.waitForTimeout(250);
  }
  if (!aboveThreshold && !charted.includes(replica)) {
    problems.push(`lag: ${replica} is not charted (charted: ${JSON.stringify(charted)})`);
  }
  // Let the chart settle on the frame that shows the crossing, then capture it.
  await page.waitForTimeout(300);
  await page.screenshot({ path: shotPath, fullPage: true });
  shotTaken = true;
}

let code = 1;
try {
  await run();
} catch (err) {
  problems.push(`error: ${err && err.message ? err.message.split('\n')[0] : String(err)}`);
} finally {
  // A failed run still leaves a screenshot to look at, when there is a page.
  if (page && !shotTaken) await page.screenshot({ path: shotPath, fullPage: true }).catch(() => {});
  if (browser) await browser.close().catch(() => {});
  code = finish();
}
process.exit(code);
