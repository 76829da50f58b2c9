// The incident room in headless Chromium, three users side by side: an operator follows a
// service as its dependency fails and forces EMERGENCY from the page; a viewer sees no override
// button and has a forced write refused; an administrator watches a policy change converge and
// rolls it back from the history page. Every page is checked with axe-core (WCAG 2 A and AA)
// and reached by keyboard once. Run by tests/tests/e2e/dashboard.rs, which prints nothing to
// this script: it reads the JSON line printed at each step, and acts on the system (failing a
// dependency, applying a policy) after the steps named `await-…`.
//
//   node incident.mjs URL ADMIN_TOKEN OPERATOR_TOKEN VIEWER_TOKEN SCREENSHOT_DIR
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const [url, adminToken, operatorToken, viewerToken, shots] = process.argv.slice(2);
const say = (o) => console.log(JSON.stringify(o));
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const LONG = { timeout: 45000 };

const browser = await chromium.launch({
  executablePath: process.env.BULWARK_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

async function session(token) {
  // The page's CSP allows only its own scripts: axe-core is injected past it, as a browser
  // extension would be.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${url}/ui/`);
  await page.fill("#token", token);
  await page.click("#login-form button");
  await page.locator("#nav:not([hidden])").waitFor();
  return { context, page, errors };
}

// WCAG 2 A/AA violations on the page as it is: [{ id, impact, nodes: [selector…] }].
async function accessibility(page) {
  if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) await page.addScriptTag({ content: axeSource });
  return page.evaluate(async () => {
    const result = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa"] } });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
}

const text = (page, selector) => page.innerText(selector).then((t) => (t || "").replace(/\s+/g, " ").trim());

try {
  // ---- The operator, on the service's page, as its dependency fails. ----
  const op = await session(operatorToken);
  await op.page.locator('#services tr[data-service="shop/orders"]').waitFor(LONG);
  const a11yOverview = await accessibility(op.page);
  // By keyboard: Tab to the service's link and follow it.
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await op.page.keyboard.press("Tab");
    reached = await op.page.evaluate(() => document.activeElement?.getAttribute("href") === "#/services/shop/orders");
  }
  await op.page.keyboard.press("Enter");
  await op.page.locator("#page-service:not([hidden])").waitFor();
  say({ step: "keyboard", reached, hash: await op.page.evaluate(() => location.hash) });
  const payments = '#edges tr[data-edge="upstream:shop/payments"]';
  const storefront = '#edges tr[data-edge="caller:shop/storefront"]';
  await op.page.locator(`${payments}[data-health="healthy"]`).waitFor(LONG);
  await op.page.locator(`${storefront}[data-health="healthy"]`).waitFor(LONG);
  // Set once: still there after the level changes means the page was never reloaded.
  await op.page.evaluate(() => { window.notReloaded = true; });
  say({
    step: "service",
    payments: await text(op.page, payments),
    storefront: await text(op.page, storefront),
    summary: await text(op.page, "#service-summary"),
    pods: await op.page.$$eval("#pods tbody tr", (trs) => trs.map((tr) => tr.innerText.replace(/\s+/g, " ").trim())),
    capabilities: await text(op.page, "#service-capabilities"),
    forceButton: await op.page.locator("#force").count(),
    a11yOverview,
    a11y: await accessibility(op.page),
  });
  await op.page.screenshot({ path: `${shots}/service.png`, fullPage: true });

  say({ step: "await-failure" });
  await op.page.locator("#service-summary .level-DEGRADED").waitFor(LONG);
  await op.page.locator(`${payments}[data-health="unhealthy"]`).waitFor(LONG);
  // One pod's breaker may open a report before the other's: both, on the edge and in the reason.
  await op.page.locator('svg.graph g[data-edge="upstream:shop/payments"][data-breaker="2/2"]').waitFor(LONG);
  await op.page.locator("#service-summary li", { hasText: "breaker open on 2/2 pods" }).waitFor(LONG);
  const wire = op.page.locator('svg.graph g[data-edge="upstream:shop/payments"]');
  say({
    step: "degraded",
    summary: await text(op.page, "#service-summary"),
    edge: await text(op.page, payments),
    wire: { health: await wire.getAttribute("data-health"), breaker: await wire.getAttribute("data-breaker"), label: await op.page.textContent('svg.graph g[data-edge="upstream:shop/payments"] text.detail') },
    capabilities: await text(op.page, "#service-capabilities"),
    notReloaded: await op.page.evaluate(() => window.notReloaded === true),
  });
  await op.page.screenshot({ path: `${shots}/service-degraded.png`, fullPage: true });

  // Force EMERGENCY from the page: the confirmation says what changes, then the level and
  // its override event arrive live.
  await op.page.selectOption("#force-level", "EMERGENCY");
  await op.page.fill("#force-ttl", "10m");
  await op.page.fill("#force-reason", "payments outage, incident 42");
  await op.page.click("#force");
  await op.page.locator("#confirm[open]").waitFor();
  const dialog = await text(op.page, "#confirm");
  await op.page.screenshot({ path: `${shots}/confirm-override.png` });
  await op.page.click("#confirm-go");
  await op.page.locator("#service-summary .level-EMERGENCY").waitFor(LONG);
  await op.page.locator('#service-event-list tr[data-kind="override"]').waitFor(LONG);
  say({
    step: "forced",
    dialog,
    summary: await text(op.page, "#service-summary"),
    message: await text(op.page, "#override-message"),
    event: await text(op.page, '#service-event-list tr[data-kind="override"]'),
    clearButton: await op.page.locator("#clear-override").count(),
  });
  await op.page.screenshot({ path: `${shots}/service-emergency.png`, fullPage: true });

  // ---- The viewer: no override controls; a forced write is refused by the API. ----
  const viewer = await session(viewerToken);
  await viewer.page.goto(`${url}/ui/#/services/shop/orders`);
  await viewer.page.locator("#service-override .note").waitFor(LONG);
  await viewer.page.locator("#service-summary .level-EMERGENCY").waitFor(LONG);
  const refused = await viewer.page.evaluate(async () => {
    const csrf = document.cookie.split("; ").find((c) => c.startsWith("bulwark_csrf=")).split("=")[1];
    const r = await fetch("/v1/degrade/shop/orders", {
      method: "PUT",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-bulwark-csrf": csrf },
      body: JSON.stringify({ level: "NORMAL", ttl: "1m", reason: "viewer tries" }),
    });
    return { status: r.status, body: await r.json() };
  });
  say({
    step: "viewer",
    forceButtons: await viewer.page.locator("#force, #clear-override").count(),
    note: await text(viewer.page, "#service-override"),
    refused,
  });
  await viewer.page.goto(`${url}/ui/#/policies/UpstreamPolicy/shop/payments`);
  await viewer.page.locator("#history tbody tr").first().waitFor(LONG);
  say({
    step: "viewer-history",
    rollbackButtons: await viewer.page.locator("#history button.rollback").count(),
    note: await text(viewer.page, "#policy-history .note"),
  });
  await viewer.context.close();

  // ---- The administrator: a policy change converges, then is rolled back from its history. ----
  const admin = await session(adminToken);
  await admin.page.goto(`${url}/ui/#/policies`);
  await admin.page.locator('#policies tr[data-policy="UpstreamPolicy/shop/payments"][data-state="converged"]').waitFor(LONG);
  const a11yPolicies = await accessibility(admin.page);
  await admin.page.screenshot({ path: `${shots}/policies.png`, fullPage: true });
  await admin.page.click('#policies a[href="#/policies/UpstreamPolicy/shop/payments"]');
  await admin.page.locator('#policy-state[data-state="converged"]').waitFor(LONG);
  const before = await admin.page.getAttribute("#policy-state", "data-version");
  // Every state the headline goes through, as the page shows it.
  await admin.page.evaluate(() => {
    window.seen = [];
    const note = () => {
      const s = document.getElementById("policy-state");
      if (s) window.seen.push(`${s.dataset.version} ${s.dataset.applied}/${s.dataset.total} ${s.dataset.state}`);
    };
    new MutationObserver(note).observe(document.getElementById("policy-convergence"), { childList: true, subtree: true, attributes: true });
  });
  say({ step: "await-apply", version: before, state: await text(admin.page, "#policy-state"), a11yPolicies, a11y: await accessibility(admin.page) });
  await admin.page.waitForFunction((v) => {
    const s = document.getElementById("policy-state");
    return s && s.dataset.version !== v && s.dataset.state === "converged";
  }, before, LONG);
  await admin.page.locator("#history tbody tr").nth(1).waitFor(LONG);
  say({
    step: "converged",
    state: await text(admin.page, "#policy-state"),
    version: await admin.page.getAttribute("#policy-state", "data-version"),
    seen: await admin.page.evaluate(() => window.seen),
    diff: await text(admin.page, "#policy-diff"),
    history: await admin.page.$$eval("#history tbody tr", (trs) => trs.map((tr) => `${tr.dataset.revision} ${tr.dataset.op}`)),
  });
  await admin.page.screenshot({ path: `${shots}/policy.png`, fullPage: true });

  // Roll back to the first version: the confirmation shows the diff it applies.
  await admin.page.click(`#history tr[data-revision="${before}"] button.rollback`);
  await admin.page.locator("#confirm[open]").waitFor();
  const rollbackDialog = await admin.page.$$eval("#confirm pre.diff span", (spans) => spans.map((s) => s.textContent.replace(/\n$/, "")).filter((l) => !l.startsWith(" ")));
  const summary = await text(admin.page, "#confirm-summary");
  await admin.page.screenshot({ path: `${shots}/confirm-rollback.png` });
  await admin.page.click("#confirm-go");
  await admin.page.locator("#policy-message", { hasText: "Rolled back" }).waitFor(LONG);
  await admin.page.locator('#history tbody tr[data-op="rolled-back"]').first().waitFor(LONG);
  await admin.page.locator('#policy-event-list tr[data-kind="rollback"]').waitFor(LONG);
  say({
    step: "rolled-back",
    changed: rollbackDialog,
    summary,
    message: await text(admin.page, "#policy-message"),
    top: await admin.page.$eval("#history tbody tr", (tr) => `${tr.dataset.revision} ${tr.dataset.op}`),
    event: await text(admin.page, '#policy-event-list tr[data-kind="rollback"]'),
  });
  await admin.page.screenshot({ path: `${shots}/policy-rolled-back.png`, fullPage: true });
  say({ step: "errors", errors: [...op.errors, ...viewer.errors, ...admin.errors] });
} finally {
  await browser.close();
}
