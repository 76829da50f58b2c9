// Bulwark dashboard, the shell: log in with a token (kept by the browser as an HttpOnly
// cookie), follow the control plane's two watches — levels and convergence
// (GET /v1/watch/status) and events (GET /v1/watch/events) — into one store, and show the page
// the URL's fragment names. Pages render from the store and hear of each change; none polls.
//
//   #/                              overview and events
//   #/services/{namespace}/{name}   one service: graph, level history, pods, override
//   #/policies                      every policy with its convergence
//   #/policies/{Kind}/{ns}/{name}   one policy: convergence, history, diffs, rollback

import { $, api, follow } from "./lib.js";
import * as overview from "./overview.js";
import * as service from "./service.js";
import * as policies from "./policies.js";

const MAX_EVENTS = 500;

// What the watches told, and who listens.
const store = {
  me: null,
  levels: new Map(), // "namespace/service" → ServiceLevel
  convergence: new Map(), // "Kind/namespace/name" → ResourceStatus
  events: [], // newest first
  seenEvents: new Set(),
  listeners: { levels: new Set(), convergence: new Set(), events: new Set() },
  // Calls `fn(changed)` after each batch of `kind`; returns the unsubscribe.
  on(kind, fn) {
    this.listeners[kind].add(fn);
    return () => this.listeners[kind].delete(fn);
  },
  permissions: new Map(),
  // Whether the user may `verb` `resource` in `namespace`, as the API says (GET
  // /v1/auth/can-i); what the page offers follows it — the API decides again on every write.
  async can(verb, resource, namespace = "") {
    const key = `${verb} ${resource} ${namespace}`;
    if (!this.permissions.has(key)) {
      const q = new URLSearchParams({ verb, resource, namespace });
      this.permissions.set(key, api(`/v1/auth/can-i?${q}`).then((r) => r.status === 200 && r.body.allowed === true));
    }
    return this.permissions.get(key);
  },
  // Asks before a write, showing exactly what it changes; resolves to true to go on.
  confirm,
};

function notify(kind, changed) {
  if (changed.size === 0 && kind !== "events") return;
  for (const fn of store.listeners[kind]) fn(changed);
}

const pending = { levels: new Set(), convergence: new Set(), events: [] };

function statusEvent(event) {
  const o = event.object;
  if (!o) return;
  if (o.kind === "ServiceLevel") {
    const key = `${o.namespace}/${o.service}`;
    if (event.type === "DELETED") store.levels.delete(key);
    else store.levels.set(key, o);
    pending.levels.add(key);
  } else if (o.kind === "ResourceStatus") {
    if (event.type === "DELETED") store.convergence.delete(o.id);
    else store.convergence.set(o.id, o);
    pending.convergence.add(o.id);
  }
}

function statusBatch() {
  const levels = pending.levels;
  const convergence = pending.convergence;
  pending.levels = new Set();
  pending.convergence = new Set();
  notify("levels", levels);
  notify("convergence", convergence);
}

function eventEvent(event) {
  const e = event.object;
  if (event.type !== "ADDED" || !e) return;
  const key = `${e.time}/${e.service}/${e.kind}/${e.from}/${e.to}/${e.text}`;
  if (store.seenEvents.has(key)) return; // a restarted watch tells the last ones again
  store.seenEvents.add(key);
  store.events.unshift(e);
  pending.events.push(e);
  if (store.events.length > MAX_EVENTS) {
    for (const old of store.events.splice(MAX_EVENTS)) {
      store.seenEvents.delete(`${old.time}/${old.service}/${old.kind}/${old.from}/${old.to}/${old.text}`);
    }
  }
}

function eventBatch() {
  const added = pending.events;
  pending.events = [];
  if (added.length) notify("events", added);
}

function confirm({ title, summary, body, action }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-summary").textContent = summary;
  $("confirm-body").replaceChildren(...(body ? [body] : []));
  $("confirm-go").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "go"), { once: true });
  });
}

const PAGES = ["overview", "service", "policies", "policy"];
let current = null; // the page's AbortController

function route() {
  if (!store.me) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  let page = "overview";
  let params = {};
  if (parts[0] === "services" && parts.length === 3) {
    page = "service";
    params = { namespace: parts[1], name: parts[2] };
  } else if (parts[0] === "policies" && parts.length === 4) {
    page = "policy";
    params = { kind: parts[1], namespace: parts[2], name: parts[3] };
  } else if (parts[0] === "policies") {
    page = "policies";
  }
  current?.abort();
  current = new AbortController();
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  for (const link of document.querySelectorAll("nav a")) {
    const here = link.dataset.page === (page === "policy" ? "policies" : page === "service" ? "overview" : page);
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const signal = current.signal;
  if (page === "overview") overview.mount(store, signal);
  else if (page === "service") service.mount(store, params, signal);
  else if (page === "policies") policies.mountList(store, signal);
  else policies.mountPolicy(store, params, signal);
  // The page's heading takes the focus, so a screen reader announces where the link led.
  const heading = $(`page-${page}`).querySelector("h2");
  if (heading && document.activeElement?.closest("nav, main")) heading.focus({ preventScroll: true });
}

function show(signedIn) {
  $("login").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("logout").hidden = !signedIn;
  $("nav").hidden = !signedIn;
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const reply = await api("/ui/login", { method: "POST", body: { token: $("token").value } });
  if (reply.status !== 200) {
    $("login-error").textContent = reply.body?.message || `login failed (${reply.status})`;
    return;
  }
  $("token").value = "";
  start();
}

async function logout() {
  await api("/ui/logout", { method: "POST", body: {} });
  location.reload();
}

function signedOut() {
  store.me = null;
  show(false);
  $("token").focus();
}

async function start() {
  const me = await api("/v1/auth/whoami");
  if (me.status !== 200) {
    signedOut();
    return;
  }
  store.me = me.body;
  $("who").textContent = `${me.body.user} (${(me.body.roles || []).join(", ") || "no roles"})`;
  show(true);
  const state = (id) => (text) => {
    $(id).textContent = text;
  };
  follow("/v1/watch/status", {
    onEvent: statusEvent,
    onBatch: statusBatch,
    onState: state("live"),
    onUnauthenticated: signedOut,
  });
  follow(`/v1/watch/events?limit=${MAX_EVENTS}`, {
    onEvent: eventEvent,
    onBatch: eventBatch,
    onState: state("events-live"),
    onUnauthenticated: signedOut,
  });
  route();
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
$("confirm-form").addEventListener("submit", (e) => {
  e.preventDefault();
  $("confirm").close(e.submitter?.value === "go" ? "go" : "");
});
window.addEventListener("hashchange", route);
start();

