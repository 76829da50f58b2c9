// The overview: every service, worst level first, in a virtualised table — only the rows in
// view (and a few around them) are in the page, each built once per change of its service, so
// a thousand services cost what forty do and an update touches its own row only. Under it,
// the live events, filterable by service and kind.

import { $, el, badge, eventRow, perFrame, SEVERITY } from "./lib.js";

// Every row is this tall (style.css: #services tr.svc), which places a row without measuring.
const ROW = 36;
const OVERSCAN = 10;

const rows = new Map(); // "namespace/service" → { status, tr (built lazily; null when stale) }
let order = []; // the keys shown, in order
let store = null;
let wired = false;

// How long the last and the longest batch took to apply (ms), and rows built: the page reports
// them (window.bulwarkOverview) so its cost with many services can be measured.
const stats = { batches: 0, rowsBuilt: 0, lastMs: 0, maxMs: 0 };
window.bulwarkOverview = stats;

function build(status) {
  const key = `${status.namespace}/${status.service}`;
  const off = Object.entries(status.capabilities || {}).filter(([, on]) => !on).map(([c]) => c);
  const unready = (status.unreadyPods || []).length;
  const reasons = (status.reasons || []).join("; ") || "—";
  const cell = (text) => el("td", { textContent: text, title: text });
  stats.rowsBuilt++;
  return el(
    "tr",
    { className: "svc", dataset: { service: key, level: status.level } },
    el("th", { scope: "row" }, el("a", { href: `#/services/${key}`, textContent: key })),
    el("td", {}, badge(status.level, status.override)),
    cell((status.unhealthy || []).join(", ") || "—"),
    cell(unready ? `${status.reportingPods} (${unready} unready)` : String(status.reportingPods)),
    cell(off.join(", ") || "—"),
    cell(reasons),
  );
}

function sortAndFilter() {
  const namespace = $("namespace").value;
  const search = $("service-search").value.trim();
  order = [...rows.keys()]
    .filter((key) => {
      const s = rows.get(key).status;
      return (!namespace || s.namespace === namespace) && (!search || key.includes(search));
    })
    .sort((a, b) => {
      const sa = rows.get(a).status;
      const sb = rows.get(b).status;
      return (SEVERITY[sa.level] ?? 9) - (SEVERITY[sb.level] ?? 9) || a.localeCompare(b);
    });
  const total = rows.size;
  $("service-count").textContent = order.length === total ? `${total} services` : `${order.length} of ${total} services shown`;
  $("services").setAttribute("aria-rowcount", String(order.length + 1));
  $("empty").hidden = total > 0;
}

function spacer(height) {
  const td = el("td", { colSpan: 6 });
  td.style.height = `${height}px`;
  return el("tr", { className: "spacer", attrs: { "aria-hidden": "true" } }, td);
}

const top = spacer(0);
const bottom = spacer(0);

// Puts the rows in view in the table, moving only those out of place. The view is as tall as
// its rows, up to its maximum: when placing them changed its height (a thousand rows where
// there was one), they are placed again for the height it has now.
function renderWindow() {
  const view = $("services-view");
  let height = -1;
  for (let pass = 0; pass < 3 && view.clientHeight !== height; pass++) {
    height = view.clientHeight;
    place(view, height || 600);
  }
}

function place(view, height) {
  const body = $("services").tBodies[0];
  const first = Math.max(0, Math.floor(view.scrollTop / ROW) - OVERSCAN);
  const last = Math.min(order.length, first + Math.ceil(height / ROW) + 2 * OVERSCAN);
  top.firstChild.style.height = `${first * ROW}px`;
  bottom.firstChild.style.height = `${(order.length - last) * ROW}px`;
  const wanted = [top];
  for (let i = first; i < last; i++) {
    const entry = rows.get(order[i]);
    if (!entry.tr) entry.tr = build(entry.status);
    entry.tr.setAttribute("aria-rowindex", String(i + 2));
    wanted.push(entry.tr);
  }
  wanted.push(bottom);
  const keep = new Set(wanted);
  for (const tr of [...body.rows]) if (!keep.has(tr)) tr.remove();
  let previous = null;
  for (const tr of wanted) {
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (tr !== expected) body.insertBefore(tr, expected);
    previous = tr;
  }
}

const renderSoon = perFrame(renderWindow);

function onLevels(changed) {
  const started = performance.now();
  for (const key of changed) {
    const status = store.levels.get(key);
    if (!status) {
      rows.get(key)?.tr?.remove();
      rows.delete(key);
      continue;
    }
    const entry = rows.get(key) || {};
    entry.status = status;
    if (entry.tr) {
      // Rebuilt in place when in view; else dropped, built when scrolled to.
      const fresh = entry.tr.isConnected ? build(status) : null;
      if (fresh) entry.tr.replaceWith(fresh);
      entry.tr = fresh;
    }
    rows.set(key, entry);
  }
  namespaces();
  sortAndFilter();
  renderWindow();
  const ms = performance.now() - started;
  stats.batches++;
  stats.lastMs = ms;
  stats.maxMs = Math.max(stats.maxMs, ms);
}

function namespaces() {
  const select = $("namespace");
  const known = new Set([...select.options].map((o) => o.value));
  for (const { status } of rows.values()) {
    if (!known.has(status.namespace)) {
      select.append(new Option(status.namespace, status.namespace));
      known.add(status.namespace);
    }
  }
}

function eventVisible(e) {
  const filter = $("event-filter").value.trim();
  const kind = $("event-kind").value;
  return (!filter || (e.service || "").includes(filter) || (e.resource || "").includes(filter)) && (!kind || e.kind === kind);
}

function onEvents(added) {
  const body = $("event-list").tBodies[0];
  // Oldest of the batch first, so the newest ends on top.
  for (const e of [...added].reverse()) {
    const tr = eventRow(e);
    tr.hidden = !eventVisible(e);
    body.insertBefore(tr, body.firstChild);
  }
  while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
}

function allEvents() {
  const body = $("event-list").tBodies[0];
  body.replaceChildren(...store.events.slice(0, 200).map((e) => {
    const tr = eventRow(e);
    tr.hidden = !eventVisible(e);
    return tr;
  }));
}

export function mount(s, signal) {
  store = s;
  if (!wired) {
    wired = true;
    $("services-view").addEventListener("scroll", renderSoon, { passive: true });
    window.addEventListener("resize", renderSoon);
    const refilter = () => {
      sortAndFilter();
      renderWindow();
    };
    $("namespace").addEventListener("change", refilter);
    $("service-search").addEventListener("input", refilter);
    $("event-filter").addEventListener("input", allEvents);
    $("event-kind").addEventListener("change", allEvents);
  }
  onLevels(new Set([...store.levels.keys(), ...rows.keys()]));
  allEvents();
  const offLevels = store.on("levels", onLevels);
  const offEvents = store.on("events", onEvents);
  signal.addEventListener("abort", () => {
    offLevels();
    offEvents();
  });
}
