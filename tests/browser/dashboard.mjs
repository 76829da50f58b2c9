// The dashboard as a user meets it, in headless Chromium (Debian's, driven by playwright-core).
// Run by tests/tests/e2e/dashboard.rs, which starts the real control plane and etcd, reads the
// JSON line this prints at each step and acts between them (it forces a level once it reads
// {"step":"waiting"}).
//
//   node dashboard.mjs URL TOKEN SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [url, token, shots] = process.argv.slice(2);
const say = (o) => console.log(JSON.stringify(o));
const row = (service) => `#services tr[data-service="${service}"]`;

const browser = await chromium.launch({
  executablePath: process.env.BULWARK_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1366, height: 768 },
  });
  const page = await context.newPage();
  await page.goto(`${url}/ui/`);

  // A wrong token: refused, said, no session.
  await page.locator("#login").waitFor();
  await page.fill("#token", "not-a-token");
  await page.click("#login-form button");
  await page.locator("#login-error:not(:empty)").waitFor();
  say({ step: "refused", error: await page.textContent("#login-error"), cookies: (await context.cookies()).length });
  await page.screenshot({ path: `${shots}/login.png` });

  // The right one: the overview, live.
  await page.fill("#token", token);
  await page.click("#login-form button");
  await page.locator(row("shop/orders")).waitFor();
  await page.locator("#live", { hasText: "live" }).waitFor();
  const rows = await page.$$eval("#services tbody tr[data-service]", (trs) => trs.map((tr) => tr.dataset.service));
  say({
    step: "overview",
    rows,
    level: await page.getAttribute(row("shop/orders"), "data-level"),
    text: await page.textContent(row("shop/orders")),
    who: await page.textContent("#who"),
  });
  const cookies = (await context.cookies()).map((c) => ({
    name: c.name, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite,
  }));
  say({ step: "cookies", cookies, script: await page.evaluate(() => document.cookie.includes("bulwark_session")) });
  await page.screenshot({ path: `${shots}/overview.png` });

  // Forced to EMERGENCY through the API: the row changes without a reload, and moves first.
  say({ step: "waiting" });
  const started = Date.now();
  await page.locator(`${row("shop/orders")}[data-level="EMERGENCY"]`).waitFor({ timeout: 20000 });
  say({
    step: "emergency",
    text: await page.textContent(row("shop/orders")),
    first: await page.$eval("#services tbody tr[data-service]", (tr) => tr.dataset.service),
    ms: Date.now() - started,
  });
  await page.screenshot({ path: `${shots}/overview-emergency.png` });

  // The override is recorded as an event: it appears at the top of the events, live; the
  // service filter hides another service's.
  const override = `#event-list tbody tr[data-kind="override"][data-service="shop/orders"]`;
  await page.locator(override).waitFor({ timeout: 20000 });
  const eventText = await page.textContent(override);
  const top = await page.$eval("#event-list tbody tr", (tr) => tr.dataset.service);
  await page.fill("#event-filter", "bank/");
  const hidden = await page.$eval(override, (tr) => tr.hidden);
  await page.fill("#event-filter", "");
  say({ step: "event", text: eventText, top, hiddenByFilter: hidden });

  // A write with the session cookie but no CSRF token is refused; with it, it goes through.
  const refused = await page.evaluate(() =>
    fetch("/v1/degrade/shop/orders", { method: "DELETE", credentials: "same-origin" })
      .then(async (r) => ({ status: r.status, body: await r.json() })));
  const forced = await page.evaluate(() =>
    fetch("/v1/levels/shop/orders", { credentials: "same-origin" }).then((r) => r.json()));
  const csrf = await page.evaluate(() => document.cookie.split("; ").find((c) => c.startsWith("bulwark_csrf=")).split("=")[1]);
  const allowed = await page.evaluate((csrf) =>
    fetch("/v1/degrade/shop/orders?by=dashboard", {
      method: "DELETE", credentials: "same-origin", headers: { "x-bulwark-csrf": csrf },
    }).then((r) => r.status), csrf);
  say({ step: "csrf", refused, stillForced: forced.override != null, allowed });
} finally {
  await browser.close();
}
