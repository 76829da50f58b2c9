// Bulwark dashboard: log in with a token (kept by the browser as an HttpOnly cookie), then the
// overview of every service, kept live by the control plane's watch of levels
// (GET /v1/watch/status, newline-delimited JSON): each change updates its own row only; and
// the events as they are recorded (GET /v1/watch/events), newest first.

const ORDER = { EMERGENCY: 0, SEVERE: 1, DEGRADED: 2, NORMAL: 3 };
const services = new Map(); // "namespace/service" → { status, row }

const $ = (id) => document.getElementById(id);

async function whoami() {
  const res = await fetch("/v1/auth/whoami", { credentials: "same-origin" });
  if (res.status === 401) return null;
  if (!res.ok) throw new Error(`whoami: ${res.status}`);
  return res.json();
}

const MAX_EVENTS = 200;

function show(section) {
  $("login").hidden = section !== "login";
  $("overview").hidden = section !== "overview";
  $("events").hidden = section !== "overview";
  $("logout").hidden = section !== "overview";
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const res = await fetch("/ui/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    $("login-error").textContent = body.message || `login failed (${res.status})`;
    return;
  }
  $("token").value = "";
  start();
}

async function logout() {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" }, body: "{}" });
  location.reload();
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function render(entry) {
  const s = entry.status;
  const row = entry.row || document.createElement("tr");
  row.dataset.service = `${s.namespace}/${s.service}`;
  row.dataset.level = s.level;
  row.replaceChildren();
  const name = document.createElement("th");
  name.scope = "row";
  name.textContent = `${s.namespace}/${s.service}`;
  const level = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = `level level-${s.level}`;
  badge.textContent = s.override ? `${s.level} (forced)` : s.level;
  level.append(badge);
  const off = Object.entries(s.capabilities || {}).filter(([, on]) => !on).map(([c]) => c);
  const unready = (s.unreadyPods || []).length;
  row.append(
    name,
    level,
    cell((s.unhealthy || []).join(", ") || "—"),
    cell(unready ? `${s.reportingPods} (${unready} unready)` : String(s.reportingPods)),
    cell(off.join(", ") || "—"),
    cell((s.reasons || []).join("; ") || "—"),
  );
  entry.row = row;
}

function placeRows() {
  const filter = $("namespace").value;
  const body = $("services").tBodies[0];
  const sorted = [...services.values()].sort(
    (a, b) => (ORDER[a.status.level] ?? 9) - (ORDER[b.status.level] ?? 9) ||
      `${a.status.namespace}/${a.status.service}`.localeCompare(`${b.status.namespace}/${b.status.service}`),
  );
  let previous = null;
  for (const entry of sorted) {
    const visible = !filter || entry.status.namespace === filter;
    entry.row.hidden = !visible;
    // Moved only when out of place: rows are not rebuilt.
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (entry.row !== expected) body.insertBefore(entry.row, expected);
    previous = entry.row;
  }
  $("empty").hidden = services.size > 0;
}

function namespaces() {
  const select = $("namespace");
  const known = new Set([...select.options].map((o) => o.value));
  for (const { status } of services.values()) {
    if (!known.has(status.namespace)) {
      select.append(new Option(status.namespace, status.namespace));
      known.add(status.namespace);
    }
  }
}

function apply(event) {
  const o = event.object;
  if (!o || o.kind !== "ServiceLevel") return;
  const key = `${o.namespace}/${o.service}`;
  if (event.type === "DELETED") {
    const entry = services.get(key);
    if (entry) entry.row.remove();
    services.delete(key);
  } else {
    const entry = services.get(key) || {};
    entry.status = o;
    render(entry);
    services.set(key, entry);
  }
}

// Follows the watch at `path`, calling `onEvent` per event and `onBatch` after each read;
// starts it again when it ends or breaks.
async function follow(path, live, onEvent, onBatch) {
  for (;;) {
    try {
      const res = await fetch(path, { credentials: "same-origin" });
      if (res.status === 401) { show("login"); return; }
      if (!res.ok) throw new Error(`watch: ${res.status}`);
      live.textContent = "live";
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
      live.textContent = `reconnecting (${e.message})`;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function start() {
  const me = await whoami();
  if (!me) {
    show("login");
    $("token").focus();
    return;
  }
  $("who").textContent = `${me.user} (${(me.roles || []).join(", ") || "no roles"})`;
  show("overview");
  follow("/v1/watch/status", $("live"), apply, () => { namespaces(); placeRows(); });
  follow("/v1/watch/events?limit=100", $("events-live"), addEvent, filterEvents);
}

const seenEvents = new Set();

function addEvent(event) {
  const e = event.object;
  if (event.type !== "ADDED" || !e) return;
  const key = `${e.time}/${e.service}/${e.kind}/${e.from}/${e.to}`;
  if (seenEvents.has(key)) return; // a restarted watch tells the last ones again
  seenEvents.add(key);
  const row = document.createElement("tr");
  row.dataset.service = e.service;
  row.dataset.kind = e.kind;
  const change = e.from || e.to ? `${e.from || "-"} → ${e.to || "-"}` : "—";
  row.append(
    cell(e.at),
    cell(e.service),
    cell(e.kind),
    cell(change),
    cell(e.by || "—"),
    cell((e.reasons || []).join(", ") || e.text || "—"),
  );
  const body = $("event-list").tBodies[0];
  body.insertBefore(row, body.firstChild);
  while (body.rows.length > MAX_EVENTS) body.deleteRow(body.rows.length - 1);
}

function filterEvents() {
  const filter = $("event-filter").value.trim();
  for (const row of $("event-list").tBodies[0].rows) {
    row.hidden = filter !== "" && !row.dataset.service.includes(filter);
  }
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
$("namespace").addEventListener("change", placeRows);
$("event-filter").addEventListener("input", filterEvents);
start();
