// One service's page: its level with reasons and override (forced and cleared from here by
// users whose role allows it, after a confirmation naming what changes), its dependency graph
// (callers and upstreams, each edge coloured and labelled by health: breaker open on N/M pods,
// success rate, p99), its level over the last hours, its pods (policy version, identity expiry,
// readiness), capabilities and events. Live from the store; the graph and pods are fetched
// again when the service's level or a neighbour's changes, and the graph's counts every 10 s.

import { $, el, svg, api, problem, badge, clock, relative, debounce, eventList, LEVELS } from "./lib.js";

const HOURS = 6;
const GRAPH_REFRESH_MS = 10000;

let page = null; // { key, namespace, name, signal, graph, … }

export function mount(store, { namespace, name }, signal) {
  const key = `${namespace}/${name}`;
  page = { store, key, namespace, name, signal, neighbours: new Set() };
  $("service-title").textContent = key;
  for (const id of ["service-summary", "service-override", "service-graph", "service-timeline", "service-pods", "service-capabilities", "service-events"]) {
    $(id).replaceChildren();
  }
  const p = page;
  summary(p);
  overridePanel(p);
  graph(p);
  timeline(p);
  pods(p);
  const addEvents = eventList("service-events", {
    id: "service-event-list",
    caption: `Events of ${key}, newest first`,
    events: store.events,
    match: (e) => e.service === key,
  });
  const refreshGraph = debounce(() => graph(p), 300);
  const refreshPods = debounce(() => pods(p), 300);
  const offLevels = store.on("levels", (changed) => {
    if (changed.has(key)) {
      summary(p);
      overridePanel(p);
      refreshPods();
      refreshGraph();
    } else if ([...changed].some((k) => p.neighbours.has(k))) {
      refreshGraph();
    }
  });
  const offConvergence = store.on("convergence", (changed) => {
    if (changed.has(`ServicePolicy/${key}`)) refreshPods();
  });
  const offEvents = store.on("events", (added) => {
    const mine = addEvents(added);
    if (mine.some((e) => e.kind === "level" || e.kind === "override")) timeline(p);
  });
  const timer = setInterval(() => graph(p), GRAPH_REFRESH_MS);
  signal.addEventListener("abort", () => {
    offLevels();
    offConvergence();
    offEvents();
    clearInterval(timer);
  });
}

function summary(p) {
  const s = p.store.levels.get(p.key);
  const box = $("service-summary");
  if (!s) {
    box.replaceChildren(el("p", { textContent: `${p.key} has no level: levels are computed for services with a ServicePolicy (or not yet).` }));
    $("service-capabilities").replaceChildren();
    return;
  }
  const lines = [
    el("p", { className: "headline" }, badge(s.level, s.override), ` since ${clock(s.since)} (${relative(s.since)})`,
      s.override ? ` — the health rules give ${s.computed}` : "",
      `; ${s.reportingPods} pod${s.reportingPods === 1 ? "" : "s"} reporting`),
  ];
  if (s.override) {
    lines.push(el("p", { textContent: `Forced by ${s.override.by}${s.override.mesh ? " for the whole mesh" : ""}: ${s.override.reason} (ends ${relative(s.override.expires)})` }));
  }
  if (s.pending) {
    lines.push(el("p", { textContent: `Going to ${s.pending.level} once it holds long enough (since ${clock(s.pending.since)})` }));
  }
  lines.push(el("ul", { className: "reasons", attrs: { "aria-label": "Reasons" } },
    ...(s.reasons?.length ? s.reasons : ["no unhealthy dependency"]).map((r) => el("li", { textContent: r }))));
  box.replaceChildren(...lines);
  const caps = Object.entries(s.capabilities || {});
  $("service-capabilities").replaceChildren(caps.length
    ? el("ul", { className: "capabilities" }, ...caps.map(([c, on]) => el("li", { className: on ? "on" : "off", dataset: { capability: c } }, `${c}: `, el("strong", { textContent: on ? "on" : "off" }))))
    : el("p", { textContent: "Its ServicePolicy names no capabilities." }));
}

// The override controls, for users who may write overrides in the namespace; others are told
// which role it takes (the API refuses their writes anyway).
async function overridePanel(p) {
  const box = $("service-override");
  const allowed = await p.store.can("apply", "overrides", p.namespace);
  if (p.signal.aborted) return;
  if (!allowed) {
    box.replaceChildren(el("p", { className: "note", textContent: `Forcing a level needs the operator role in ${p.namespace}.` }));
    return;
  }
  const s = p.store.levels.get(p.key);
  const level = el("select", { id: "force-level" }, ...LEVELS.map((l) => new Option(l, l, l === "EMERGENCY", l === "EMERGENCY")));
  const ttl = el("input", { id: "force-ttl", value: "30m", required: true, size: 6 });
  const reason = el("input", { id: "force-reason", required: true, placeholder: "why", maxLength: 500 });
  const form = el("form", { id: "force-form", className: "controls" },
    el("label", { htmlFor: "force-level", textContent: "Force level" }), level,
    el("label", { htmlFor: "force-ttl", textContent: "for" }), ttl,
    el("label", { htmlFor: "force-reason", textContent: "Reason" }), reason,
    el("button", { type: "submit", id: "force", textContent: "Force…" }));
  const message = el("p", { id: "override-message", attrs: { role: "status" } });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    force(p, level.value, ttl.value.trim(), reason.value.trim(), message);
  });
  const parts = [form];
  if (s?.override && !s.override.mesh) {
    const clear = el("button", { type: "button", id: "clear-override", textContent: "Clear override…" });
    clear.addEventListener("click", () => clearOverride(p, message));
    parts.push(el("div", { className: "controls" }, clear));
  }
  parts.push(message);
  box.replaceChildren(...parts);
}

async function force(p, level, ttl, reason, message) {
  const s = p.store.levels.get(p.key);
  const policy = await api(`/v1/ServicePolicy/${p.key}`);
  const actions = policy.status === 200 ? policy.body.spec?.actions?.[level] : null;
  const body = el("dl", {},
    el("dt", { textContent: "Level" }), el("dd", { textContent: `${s?.level ?? "none"} → ${level}` }),
    el("dt", { textContent: "For" }), el("dd", { textContent: ttl }),
    el("dt", { textContent: "Reason" }), el("dd", { textContent: reason }),
    el("dt", { textContent: `What its sidecars do at ${level}` }),
    el("dd", {}, actions ? el("pre", { textContent: JSON.stringify(actions, null, 2) }) : `its ServicePolicy names no actions at ${level}: sidecars report the level to the app (readiness, capabilities) and act on nothing else`));
  const go = await p.store.confirm({
    title: `Force ${p.key} to ${level}?`,
    summary: `Every sidecar of ${p.key} acts on ${level} until the override ends (${ttl}) or is cleared, whatever its dependencies' health says.`,
    body,
    action: `Force ${level}`,
  });
  if (!go) return;
  const reply = await api(`/v1/degrade/${p.key}`, { method: "PUT", body: { level, ttl, reason } });
  message.textContent = reply.status === 200 ? `${p.key} forced to ${level} for ${ttl}.` : `Not forced: ${problem(reply)}`;
}

async function clearOverride(p, message) {
  const s = p.store.levels.get(p.key);
  const go = await p.store.confirm({
    title: `Clear the override of ${p.key}?`,
    summary: `The level forced by ${s?.override?.by} (${s?.override?.level}: ${s?.override?.reason}) ends; ${p.key} goes back to what its health rules give: ${s?.computed}.`,
    action: "Clear override",
  });
  if (!go) return;
  const reply = await api(`/v1/degrade/${p.key}`, { method: "DELETE" });
  message.textContent = reply.status === 200 ? `Override of ${p.key} cleared.` : `Not cleared: ${problem(reply)}`;
}

function edgeSummary(e) {
  const parts = [];
  if (e.breakerOpenPods > 0) parts.push(`breaker open on ${e.breakerOpenPods}/${e.pods} pods`);
  if (e.successRate !== null && e.successRate !== undefined) parts.push(`${e.successRate}% ok`);
  if (e.p99Ms !== null && e.p99Ms !== undefined) parts.push(`p99 ${e.p99Ms < 10 ? e.p99Ms.toFixed(1) : Math.round(e.p99Ms)} ms`);
  if (e.requests === 0) parts.push("no requests");
  return parts.join(" · ");
}

const NODE_W = 250;
const NODE_H = 44;
const GAP = 14;

// Callers on the left, the service in the middle, upstreams on the right.
async function graph(p) {
  const reply = await api(`/v1/graph/${p.key}`, { signal: p.signal }).catch(() => null);
  if (!reply || p.signal.aborted || page !== p) return;
  const box = $("service-graph");
  if (reply.status !== 200) {
    box.replaceChildren(el("p", { className: "error", textContent: problem(reply) }));
    return;
  }
  const g = reply.body;
  p.neighbours = new Set([...g.callers, ...g.upstreams].map((e) => e.service));
  const width = 980;
  const rowsNeeded = Math.max(g.callers.length, g.upstreams.length, 1);
  const height = rowsNeeded * (NODE_H + GAP) + GAP;
  const mid = { x: (width - NODE_W) / 2, y: (height - NODE_H) / 2 };
  const picture = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "group", "aria-labelledby": "graph-desc", class: "graph" },
    svg("title", { id: "graph-desc" }, `${g.service}: ${g.callers.length} callers, ${g.upstreams.length} upstreams; the table below says the same`));
  const column = (edges, x, side) => edges.forEach((e, i) => {
    const y = GAP + i * (NODE_H + GAP) + (height - GAP - rowsNeeded * (NODE_H + GAP)) / 2;
    const from = side === "caller" ? { x: x + NODE_W, y: y + NODE_H / 2 } : { x: mid.x + NODE_W, y: mid.y + NODE_H / 2 };
    const to = side === "caller" ? { x: mid.x, y: mid.y + NODE_H / 2 } : { x, y: y + NODE_H / 2 };
    const bend = (to.x - from.x) / 2;
    const label = edgeSummary(e);
    const group = svg("g", { class: `edge edge-${e.health}`, "data-edge": `${side}:${e.service}`, "data-health": e.health, "data-breaker": `${e.breakerOpenPods}/${e.pods}` },
      svg("title", {}, `${side === "caller" ? `${e.service} → ${g.service}` : `${g.service} → ${e.service}`}: ${e.health}${e.reason ? ` (${e.reason})` : ""}; ${label}`),
      svg("path", { d: `M${from.x},${from.y} C${from.x + bend},${from.y} ${to.x - bend},${to.y} ${to.x},${to.y}`, class: "wire" }),
      svg("a", { href: `#/services/${e.service}` },
        svg("rect", { x, y, width: NODE_W, height: NODE_H, rx: 6, class: "node" }),
        svg("text", { x: x + 10, y: y + 18, class: "name" }, `${e.service}${e.critical ? " (critical)" : ""}`),
        svg("text", { x: x + 10, y: y + 35, class: "detail" }, `${e.health}${label ? `: ${label}` : ""}`)));
    picture.append(group);
  });
  column(g.callers, 10, "caller");
  column(g.upstreams, width - NODE_W - 10, "upstream");
  picture.append(svg("g", { class: "self" },
    svg("rect", { x: mid.x, y: mid.y, width: NODE_W, height: NODE_H, rx: 6, class: `node level-${g.level || "none"}` }),
    svg("text", { x: mid.x + 10, y: mid.y + 18, class: "name" }, g.service),
    svg("text", { x: mid.x + 10, y: mid.y + 35, class: "detail" }, `${g.level || "no level"} · ${g.reportingPods} pods`)));
  const rows = [
    ...g.callers.map((e) => ["caller", e]),
    ...g.upstreams.map((e) => ["upstream", e]),
  ].map(([side, e]) => el("tr", { dataset: { edge: `${side}:${e.service}`, health: e.health } },
    el("td", { textContent: side }),
    el("th", { scope: "row" }, el("a", { href: `#/services/${e.service}`, textContent: e.service })),
    el("td", {}, el("span", { className: `health health-${e.health}`, textContent: e.health })),
    el("td", { textContent: `${e.breakerOpenPods}/${e.pods}` }),
    el("td", { textContent: e.successRate === null || e.successRate === undefined ? "—" : `${e.successRate}%` }),
    el("td", { textContent: e.p99Ms === null || e.p99Ms === undefined ? "—" : `${e.p99Ms} ms` }),
    el("td", { textContent: String(e.requests) }),
    el("td", { textContent: e.reason || "—" })));
  const head = el("tr", {}, ...["Side", "Service", "Health", "Breaker open (pods)", "Success", "p99", "Requests", "Why"].map((h) => el("th", { scope: "col", textContent: h })));
  const table = el("table", { id: "edges" }, el("caption", { textContent: `Edges of ${g.service}, from the last health reports of the calling pods` }), el("thead", {}, head), el("tbody", {}, ...rows));
  box.replaceChildren(picture, rows.length ? table : el("p", { textContent: "No callers or upstreams reported yet." }));
}

// The level over the last hours, from the service's level events.
async function timeline(p) {
  const reply = await api(`/v1/events?service=${encodeURIComponent(p.key)}&limit=1000`, { signal: p.signal }).catch(() => null);
  if (!reply || p.signal.aborted || page !== p) return;
  const box = $("service-timeline");
  if (reply.status !== 200) {
    box.replaceChildren(el("p", { className: "error", textContent: problem(reply) }));
    return;
  }
  const now = Date.now();
  const start = now - HOURS * 3600 * 1000;
  const changes = reply.body.events.filter((e) => e.kind === "level" && e.time >= start).sort((a, b) => a.time - b.time);
  const current = p.store.levels.get(p.key)?.level || "NORMAL";
  const segments = [];
  let level = changes.length ? changes[0].from : current;
  let from = start;
  for (const c of changes) {
    segments.push({ level, from, to: c.time });
    level = c.to;
    from = c.time;
  }
  segments.push({ level, from, to: now });
  const width = 980;
  const x = (t) => ((t - start) / (now - start)) * width;
  const picture = svg("svg", { viewBox: `0 0 ${width} 46`, width: "100%", role: "img", "aria-labelledby": "timeline-desc", class: "timeline" },
    svg("title", { id: "timeline-desc" }, `${p.key}'s level over the last ${HOURS} hours: ${segments.map((s) => `${s.level} from ${clock(s.from)}`).join(", ")}`));
  for (const s of segments) {
    const w = Math.max(1, x(s.to) - x(s.from));
    picture.append(svg("g", { "data-level": s.level },
      svg("title", {}, `${s.level} ${clock(s.from)}–${clock(s.to)}`),
      svg("rect", { x: x(s.from), y: 0, width: w, height: 26, class: `band level-${s.level}` }),
      w > 70 ? svg("text", { x: x(s.from) + 4, y: 18, class: "band-label" }, s.level) : null));
  }
  for (let h = 0; h <= HOURS; h++) {
    const t = start + h * 3600 * 1000;
    picture.append(svg("text", { x: Math.min(x(t), width - 40), y: 42, class: "tick" }, clock(t).slice(0, 5)));
  }
  const list = changes.length
    ? el("ol", { className: "changes", reversed: true }, ...[...changes].reverse().map((c) => el("li", { textContent: `${clock(c.time)}: ${c.from} → ${c.to}${c.reasons?.length ? ` (${c.reasons.join(", ")})` : ""}` })))
    : el("p", { textContent: `No level change in the last ${HOURS} hours: ${current} throughout.` });
  box.replaceChildren(picture, list);
}

async function pods(p) {
  const reply = await api(`/v1/pods?namespace=${encodeURIComponent(p.namespace)}`, { signal: p.signal }).catch(() => null);
  if (!reply || p.signal.aborted || page !== p) return;
  const box = $("service-pods");
  if (reply.status !== 200) {
    box.replaceChildren(el("p", { className: "error", textContent: problem(reply) }));
    return;
  }
  const mine = reply.body.pods.filter((pod) => pod.service === p.name);
  const status = p.store.levels.get(p.key);
  const unready = new Set(status?.unreadyPods || []);
  const version = p.store.convergence.get(`ServicePolicy/${p.key}`)?.resourceVersion;
  const rows = mine.map((pod) => {
    const expires = pod.identity?.expiresUnixMs;
    const identity = pod.identity ? `${pod.identity.spiffeId}` : "none";
    const expiry = expires ? `${pod.identity.expires} (${relative(expires)})` : "—";
    const soon = expires && expires - Date.now() < 3600 * 1000;
    const current = version === undefined || pod.applied >= version;
    return el("tr", { dataset: { pod: pod.pod } },
      el("th", { scope: "row", textContent: pod.pod }),
      el("td", { textContent: `${pod.applied}${current ? "" : ` (behind ${version})`}` }),
      el("td", { textContent: identity }),
      el("td", { className: soon ? "warn" : "", textContent: soon ? `${expiry}: expires soon` : expiry }),
      el("td", { textContent: unready.has(pod.pod) ? "unready (degradation)" : "ready" }),
      el("td", { textContent: pod.replica }));
  });
  const head = el("tr", {}, ...["Pod", "Policy version", "Identity", "Certificate expires", "Readiness", "Control-plane replica"].map((h) => el("th", { scope: "col", textContent: h })));
  box.replaceChildren(rows.length
    ? el("table", { id: "pods" }, el("caption", { textContent: `Pods of ${p.key} connected to the control plane` }), el("thead", {}, head), el("tbody", {}, ...rows))
    : el("p", { textContent: "No pod of this service is connected." }));
}
