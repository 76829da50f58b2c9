// The overview with 1,000 services in headless Chromium: how long until all are listed, how
// many rows the page holds (virtualised: only those in view, as many again after a filter
// shrank the view and was cleared), and what one level change costs
// (rows built, time until it shows). Run by tests/tests/e2e/dashboard.rs, which forces a level
// after the step "await-force".
//
//   node thousand.mjs URL TOKEN SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [url, token, shots] = process.argv.slice(2);
const say = (o) => console.log(JSON.stringify(o));
const LONG = { timeout: 60000 };
const browser = await chromium.launch({
  executablePath: process.env.BULWARK_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  await page.goto(`${url}/ui/`);
  await page.fill("#token", token);
  const started = Date.now();
  await page.click("#login-form button");
  await page.locator("#service-count", { hasText: "1000 services" }).waitFor(LONG);
  await page.locator("#services tr.svc").first().waitFor(LONG);
  const loadedMs = Date.now() - started;
  const rowsInDom = () => page.$$eval("#services tbody tr.svc", (trs) => trs.length);
  say({ step: "loaded", ms: loadedMs, rows: await rowsInDom(), stats: await page.evaluate(() => ({ ...window.bulwarkOverview })) });
  await page.screenshot({ path: `${shots}/overview-1000.png` });

  // Filtered down to one service the view shrinks to one row; cleared, all 1,000 come back at
  // once and the rows fill the view as tall as it has grown, as many as before.
  await page.fill("#service-search", "svc-0001");
  await page.locator("#service-count", { hasText: "1 of 1000 services shown" }).waitFor(LONG);
  const filtered = await rowsInDom();
  await page.fill("#service-search", "");
  await page.locator("#service-count", { hasText: /^1000 services$/ }).waitFor(LONG);
  say({ step: "refiltered", filtered, rows: await rowsInDom() });

  const before = await page.evaluate(() => ({ ...window.bulwarkOverview }));
  say({ step: "await-force" });
  const forcedAt = Date.now();
  await page.locator('#services tr[data-service="load/svc-0500"][data-level="EMERGENCY"]').waitFor(LONG);
  const after = await page.evaluate(() => ({ ...window.bulwarkOverview }));
  say({
    step: "forced",
    ms: Date.now() - forcedAt,
    built: after.rowsBuilt - before.rowsBuilt,
    batches: after.batches - before.batches,
    lastMs: after.lastMs,
    first: await page.$eval("#services tbody tr.svc", (tr) => tr.dataset.service),
    rows: await rowsInDom(),
  });

  await page.$eval("#services-view", (v) => { v.scrollTop = v.scrollHeight; });
  await page.locator('#services tr[data-service="load/svc-0999"]').waitFor(LONG);
  say({
    step: "scrolled",
    last: await page.$$eval("#services tbody tr.svc", (trs) => trs[trs.length - 1].dataset.service),
    rows: await rowsInDom(),
    rowcount: await page.getAttribute("#services", "aria-rowcount"),
  });
} finally {
  await browser.close();
}
