// Shared helpers of the dashboard: DOM building, API calls (writes carry the session's CSRF
// token), following a watch, line diffs, times. Nothing here knows a page.

export const $ = (id) => document.getElementById(id);

// An element: `props` are properties (className, textContent, hidden, href…), `attrs` go
// through setAttribute (aria-*, data-*, role), children are nodes or strings.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { attrs, dataset, ...rest } = props;
  Object.assign(node, rest);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  Object.assign(node.dataset, dataset || {});
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(`${name}=`));
  return found ? found.slice(name.length + 1) : "";
}

// Calls the API with the session cookie; a write repeats the CSRF token. Resolves to
// { status, body } (body parsed when JSON), never rejects for an HTTP error.
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (method !== "GET") {
    headers["x-bulwark-csrf"] = cookie("bulwark_csrf");
    headers["content-type"] = "application/json";
  }
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: kept as text
  }
  return { status: res.status, body: parsed };
}

// The message of an API error answer.
export function problem(reply) {
  const b = reply.body || {};
  const details = (b.details || []).join("; ");
  return `${b.message || `HTTP ${reply.status}`}${details ? ` (${details})` : ""}`;
}

// Follows the watch at `path` until `signal` aborts: `onEvent` per event, `onBatch` after each
// read, `onState` with "live" or "reconnecting (why)". A watch that ends or breaks is started
// again after a second; a 401 calls `onUnauthenticated` and stops.
export async function follow(path, { onEvent, onBatch = () => {}, onState = () => {}, onUnauthenticated, signal }) {
  while (!signal?.aborted) {
    try {
      const res = await fetch(path, { credentials: "same-origin", signal });
      if (res.status === 401) {
        onUnauthenticated?.();
        return;
      }
      if (!res.ok) throw new Error(`watch answered ${res.status}`);
      onState("live");
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) {
          if (!line.trim()) continue;
          const event = JSON.parse(line);
          if (event.type === "ERROR") throw new Error(event.object.message);
          onEvent(event);
        }
        onBatch();
      }
    } catch (e) {
      if (signal?.aborted) return;
      onState(`reconnecting (${e.message})`);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// The lines of `before` and `after` as a diff: [{ op: " " | "-" | "+", text }]. A longest
// common subsequence over lines — policies are short.
export function diffLines(before, after) {
  const a = before ? before.split("\n") : [];
  const b = after ? after.split("\n") : [];
  const n = a.length;
  const m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      out.push({ op: " ", text: a[i] });
      i++;
      j++;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) {
      out.push({ op: "-", text: a[i++] });
    } else {
      out.push({ op: "+", text: b[j++] });
    }
  }
  while (i < n) out.push({ op: "-", text: a[i++] });
  while (j < m) out.push({ op: "+", text: b[j++] });
  return out;
}

// A diff as a <pre>: each line with its sign (the text says what changed, colour only helps).
export function diffView(lines, label) {
  const changed = lines.filter((l) => l.op !== " ").length;
  const pre = el("pre", { className: "diff", attrs: { "aria-label": label } });
  for (const line of lines) {
    const cls = line.op === "+" ? "add" : line.op === "-" ? "del" : "same";
    pre.append(el("span", { className: cls, textContent: `${line.op} ${line.text}\n` }));
  }
  if (changed === 0) pre.append(el("span", { className: "same", textContent: "(no change)\n" }));
  return pre;
}

// A policy as the diff shows it: as YAML (one line per field, so a diff shows fields, not
// commas), without the version the history stamps on it.
export function policyText(resource) {
  if (!resource) return "";
  const copy = structuredClone(resource);
  if (copy.metadata) delete copy.metadata.resourceVersion;
  return yaml(copy, 0).join("\n");
}

function scalar(v) {
  if (typeof v !== "string") return JSON.stringify(v);
  const plain = /^[A-Za-z0-9_./:@-][A-Za-z0-9_ ./:@%-]*$/.test(v) && !/^(true|false|null|yes|no|~|[-+]?[0-9.]+)$/i.test(v) && !v.endsWith(" ");
  return plain ? v : JSON.stringify(v);
}

function yaml(value, indent) {
  const pad = " ".repeat(indent);
  const nested = (v) => v !== null && typeof v === "object" && Object.keys(v).length > 0;
  const lines = [];
  if (Array.isArray(value)) {
    for (const item of value) {
      if (nested(item)) {
        const inner = yaml(item, indent + 2);
        inner[0] = `${pad}- ${inner[0].slice(indent + 2)}`;
        lines.push(...inner);
      } else {
        lines.push(`${pad}- ${Array.isArray(item) ? "[]" : item !== null && typeof item === "object" ? "{}" : scalar(item)}`);
      }
    }
    return lines;
  }
  for (const [k, v] of Object.entries(value)) {
    if (nested(v)) {
      lines.push(`${pad}${k}:`);
      lines.push(...yaml(v, indent + 2));
    } else {
      lines.push(`${pad}${k}: ${Array.isArray(v) ? "[]" : v !== null && typeof v === "object" ? "{}" : scalar(v)}`);
    }
  }
  return lines;
}

// "3 min ago", "in 2 h".
export function relative(ms, now = Date.now()) {
  const d = Math.round((ms - now) / 1000);
  // The control plane's clock and the browser's differ a little.
  if (Math.abs(d) < 5) return "just now";
  const abs = Math.abs(d);
  const text = abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min` : abs < 172800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  return d < 0 ? `${text} ago` : `in ${text}`;
}

export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

// Runs `fn` at most once per animation frame.
export function perFrame(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

// Runs `fn` once `ms` after the last call.
export function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// Where an event leads: its policy for a policy event, else its service (not the mesh's "*").
export function eventLink(e) {
  if (e.resource) return `#/policies/${e.resource}`;
  if (e.service && e.service !== "*") return `#/services/${e.service}`;
  return null;
}

export const LEVELS = ["NORMAL", "DEGRADED", "SEVERE", "EMERGENCY"];
export const SEVERITY = { EMERGENCY: 0, SEVERE: 1, DEGRADED: 2, NORMAL: 3 };

export function badge(level, forced) {
  return el("span", { className: `level level-${level}`, textContent: forced ? `${level} (forced)` : level });
}

// One event as a table row, its service (or policy) a link to its page.
export function eventRow(e) {
  const link = eventLink(e);
  const what = e.resource ? e.resource : e.service;
  const target = link ? el("a", { href: link, textContent: what }) : what;
  const change = e.from || e.to ? `${e.from || "-"} → ${e.to || "-"}` : "—";
  return el(
    "tr",
    { dataset: { service: e.service, kind: e.kind } },
    el("td", {}, el("time", { dateTime: e.at, title: e.at, textContent: clock(e.time) })),
    el("td", {}, target),
    el("td", { textContent: e.kind }),
    el("td", { textContent: change }),
    el("td", { textContent: e.by || "—" }),
    el("td", { textContent: (e.reasons || []).join(", ") || e.text || "—" }),
  );
}

// A table of the events that `match` (newest first, the overview's columns), put into the
// element `box`. The function returned takes newly arrived events, puts those that match on
// top and returns them.
export function eventList(box, { id, caption, events, match }) {
  const body = el("tbody", {}, ...events.filter(match).map(eventRow));
  const head = el("tr", {}, ...["Time", "Service", "Kind", "Change", "By", "Reasons"].map((h) => el("th", { scope: "col", textContent: h })));
  const table = el("table", { id, className: "events" }, el("caption", { textContent: caption }), el("thead", {}, head), body);
  $(box).replaceChildren(table);
  return (added) => {
    const mine = added.filter(match);
    for (const e of [...mine].reverse()) body.insertBefore(eventRow(e), body.firstChild);
    return mine;
  };
}
