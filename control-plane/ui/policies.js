// Policies: the list of every policy with its version and convergence (applied on N of M pods,
// rejections), live from the status watch; and one policy's page: its convergence with the pods
// that lag or rejected it and why, its history with the diff between versions, and rollback to
// an earlier version — offered to users whose role allows it, after a confirmation showing the
// exact diff it applies.

import { $, el, api, problem, debounce, diffLines, diffView, policyText, eventList } from "./lib.js";

function convergenceText(c) {
  if (!c) return { state: "unknown", text: "no status yet" };
  const { applied, total, nacks } = c.pods;
  if (total === 0) return { state: "idle", text: "no pod it concerns is connected" };
  if (nacks.length) return { state: "rejected", text: `${nacks.length} pod${nacks.length === 1 ? "" : "s"} rejected it` };
  if (applied >= total) return { state: "converged", text: "converged" };
  return { state: "converging", text: `${total - applied} pod${total - applied === 1 ? "" : "s"} behind` };
}

function convergenceCells(c) {
  const { state, text } = convergenceText(c);
  const applied = c ? c.pods.applied : 0;
  const total = c ? c.pods.total : 0;
  const bar = el("progress", { max: Math.max(total, 1), value: applied, attrs: { "aria-label": `applied on ${applied} of ${total} pods` } });
  return [
    el("td", { className: "convergence" }, bar, ` ${applied}/${total}`),
    el("td", {}, el("span", { className: `state state-${state}`, textContent: text })),
  ];
}

// ---- the list ----

const listRows = new Map(); // id → tr

function listRow(c) {
  const [kind, namespace, name] = c.id.split("/");
  return el("tr", { dataset: { policy: c.id, state: convergenceText(c).state } },
    el("th", { scope: "row" }, el("a", { href: `#/policies/${c.id}`, textContent: `${namespace}/${name}` })),
    el("td", { textContent: kind }),
    el("td", { textContent: String(c.resourceVersion) }),
    ...convergenceCells(c));
}

export function mountList(store, signal) {
  const box = $("policy-list");
  const head = el("tr", {}, ...["Policy", "Kind", "Version", "Applied on pods", "State"].map((h) => el("th", { scope: "col", textContent: h })));
  const body = el("tbody");
  const table = el("table", { id: "policies" }, el("caption", { textContent: "Every policy you may read, with how far its current version has spread" }), el("thead", {}, head), body);
  listRows.clear();
  const place = () => {
    const ids = [...store.convergence.keys()].sort();
    let previous = null;
    for (const id of ids) {
      const tr = listRows.get(id);
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (tr !== expected) body.insertBefore(tr, expected);
      previous = tr;
    }
    $("policy-list").querySelector(".empty")?.remove();
    if (!ids.length) box.append(el("p", { className: "empty", textContent: "No policies yet." }));
  };
  const update = (changed) => {
    for (const id of changed) {
      const c = store.convergence.get(id);
      const old = listRows.get(id);
      if (!c) {
        old?.remove();
        listRows.delete(id);
        continue;
      }
      const tr = listRow(c);
      if (old) old.replaceWith(tr);
      listRows.set(id, tr);
    }
    place();
  };
  box.replaceChildren(table);
  update(new Set(store.convergence.keys()));
  const off = store.on("convergence", update);
  signal.addEventListener("abort", off);
}

// ---- one policy ----

let current = null;

export function mountPolicy(store, { kind, namespace, name }, signal) {
  const id = `${kind}/${namespace}/${name}`;
  const p = { store, id, kind, namespace, name, signal, history: [], selected: null };
  current = p;
  $("policy-title").textContent = id;
  $("policy-message").textContent = "";
  for (const box of ["policy-convergence", "policy-history", "policy-diff", "policy-events"]) $(box).replaceChildren();
  convergence(p);
  history(p);
  const addEvents = eventList("policy-events", {
    id: "policy-event-list",
    caption: `Changes of ${id}, newest first`,
    events: store.events,
    match: (e) => e.resource === id,
  });
  const refreshConvergence = debounce(() => convergence(p), 200);
  const off = store.on("convergence", (changed) => {
    if (!changed.has(id)) return;
    refreshConvergence();
    // A new version: its history has a new entry.
    const c = store.convergence.get(id);
    if (c && p.history[0] && c.resourceVersion !== p.history[0].revision) history(p);
  });
  const offEvents = store.on("events", addEvents);
  signal.addEventListener("abort", () => {
    off();
    offEvents();
  });
}

// The version, N/M, and the pods behind or refusing it.
async function convergence(p) {
  const c = p.store.convergence.get(p.id);
  const box = $("policy-convergence");
  const parts = [];
  if (!c) {
    parts.push(el("p", { textContent: "No status yet (the policy may not exist, or its status has not arrived)." }));
    box.replaceChildren(...parts);
    return;
  }
  const { state, text } = convergenceText(c);
  parts.push(el("p", { id: "policy-state", className: "headline", dataset: { state, applied: c.pods.applied, total: c.pods.total, version: c.resourceVersion } },
    `Version ${c.resourceVersion} applied on ${c.pods.applied}/${c.pods.total} pods: `,
    el("span", { className: `state state-${state}`, textContent: text })));
  if (c.pods.nacks.length) {
    parts.push(el("table", { id: "nacks" }, el("caption", { textContent: "Pods that rejected it, and why" }),
      el("thead", {}, el("tr", {}, ...["Pod", "Version refused", "Error"].map((h) => el("th", { scope: "col", textContent: h })))),
      el("tbody", {}, ...c.pods.nacks.map((n) => el("tr", {}, el("th", { scope: "row", textContent: n.pod }), el("td", { textContent: String(n.version) }), el("td", { textContent: n.error }))))));
  }
  if (c.pods.applied < c.pods.total) {
    const reply = await api(`/v1/pods${p.kind === "ServicePolicy" ? `?namespace=${encodeURIComponent(p.namespace)}` : ""}`, { signal: p.signal }).catch(() => null);
    if (p.signal.aborted || current !== p) return;
    if (reply?.status === 200) {
      const refused = new Set(c.pods.nacks.map((n) => n.pod));
      const behind = reply.body.pods
        .filter((pod) => p.kind !== "ServicePolicy" || pod.service === p.name)
        .filter((pod) => pod.applied < c.resourceVersion)
        .map((pod) => `${pod.namespace}/${pod.service}/${pod.pod}`)
        .filter((pod) => !refused.has(pod));
      if (behind.length) {
        parts.push(el("p", { id: "laggards", textContent: `Behind (still on an earlier version): ${behind.join(", ")}` }));
      }
    }
  }
  box.replaceChildren(...parts);
}

async function history(p) {
  const reply = await api(`/v1/${p.id}/history`, { signal: p.signal }).catch(() => null);
  if (!reply || p.signal.aborted || current !== p) return;
  const box = $("policy-history");
  if (reply.status !== 200) {
    box.replaceChildren(el("p", { className: "error", textContent: problem(reply) }));
    return;
  }
  p.history = reply.body.items; // newest first
  const mayRollBack = await p.store.can("rollback", p.kind === "ServicePolicy" ? "servicepolicies" : "upstreampolicies", p.namespace);
  if (p.signal.aborted || current !== p) return;
  const rows = p.history.map((item, i) => {
    const actions = el("td", { className: "actions" });
    if (i + 1 < p.history.length || item.resource) {
      const show = el("button", { type: "button", textContent: "Diff", className: "diff-button", attrs: { "aria-label": `Diff of revision ${item.revision} against the one before` } });
      show.addEventListener("click", () => select(p, i));
      actions.append(show);
    }
    if (mayRollBack && i > 0 && item.resource) {
      const back = el("button", { type: "button", textContent: "Roll back to this…", className: "rollback", attrs: { "aria-label": `Roll back to revision ${item.revision}` } });
      back.addEventListener("click", () => rollback(p, item));
      actions.append(back);
    }
    return el("tr", { dataset: { revision: item.revision, op: item.op } },
      el("th", { scope: "row", textContent: String(item.revision) }),
      el("td", { textContent: i === 0 && item.op !== "deleted" ? `${item.op} (current)` : item.op }),
      el("td", { textContent: item.by }),
      el("td", { textContent: item.at }),
      actions);
  });
  const head = el("tr", {}, ...["Revision", "Change", "By", "At", ""].map((h) => el("th", { scope: "col", textContent: h })));
  box.replaceChildren(el("table", { id: "history" }, el("caption", { textContent: "Versions, newest first" }), el("thead", {}, head), el("tbody", {}, ...rows)));
  if (!mayRollBack) box.append(el("p", { className: "note", textContent: `Rolling back needs the editor role in ${p.namespace}.` }));
  select(p, 0);
}

// Shows the diff of history entry `i` against the one before it.
function select(p, i) {
  const item = p.history[i];
  if (!item) {
    $("policy-diff").replaceChildren(el("p", { textContent: "No history." }));
    return;
  }
  const before = p.history[i + 1];
  for (const tr of $("policy-history").querySelectorAll("tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.revision === String(item.revision));
  }
  const label = before ? `revision ${before.revision} → ${item.revision}` : `revision ${item.revision} (first)`;
  $("policy-diff-title").textContent = `Diff: ${label}`;
  $("policy-diff").replaceChildren(diffView(diffLines(policyText(before?.resource), policyText(item.resource)), `Diff ${label}`));
}

async function rollback(p, item) {
  const latest = p.history[0];
  const lines = diffLines(policyText(latest.resource), policyText(item.resource));
  const changed = lines.filter((l) => l.op !== " ").length;
  const go = await p.store.confirm({
    title: `Roll ${p.id} back to revision ${item.revision}?`,
    summary: `The content of revision ${item.revision} (${item.op} by ${item.by} at ${item.at}) becomes a new version, ${latest.op === "deleted" ? `restoring the policy deleted at revision ${latest.revision}` : `replacing revision ${latest.revision}`}; every pod it concerns gets it. ${changed} line${changed === 1 ? "" : "s"} change:`,
    body: diffView(lines, `What the rollback changes: revision ${latest.revision} → the content of ${item.revision}`),
    action: "Roll back",
  });
  if (!go) return;
  // The version it replaces as a precondition (0: it must still be deleted), so a change made
  // meanwhile is refused rather than overwritten.
  const resourceVersion = latest.op === "deleted" ? 0 : latest.revision;
  const reply = await api(`/v1/${p.id}/rollback`, { method: "POST", body: { toRevision: item.revision, resourceVersion } });
  $("policy-message").textContent = reply.status === 200
    ? `Rolled back to the content of revision ${item.revision}: now version ${reply.body.revision}.`
    : `Not rolled back: ${problem(reply)}`;
  history(p);
}
