// osupgrade dashboard: plain JS, no build step. Every view shows the log at one position
// ("at"); the URL hash holds the view and the position, so a link reproduces the moment.
// Without "at" the page follows the log live (server-sent events over fetch, which unlike
// EventSource can send the Authorization header).
"use strict";

const KEY = "osupgrade.token";
const PHASES = ["idle", "pending", "upgrading", "upgraded", "failed"];
const STATUSES = ["RollingForward", "Completed", "Faulted", "Cancelled", "NoUpgrade"];
const $ = (id) => document.getElementById(id);
const state = { route: { view: "fleet", args: [], query: {} }, at: null, head: 0, data: null };

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function color(name) { return `style="--c:var(--${esc(name)})"`; }
function when(iso) { return iso ? iso.replace("T", " ").replace(/(\.\d+)?\+00:00$/, " UTC") : "—"; }
function badge(status) { return `<span class="badge" ${color(status)}>${esc(status)}</span>`; }

// -- routing ------------------------------------------------------------------------

function parseHash() {
  const [path, search] = location.hash.replace(/^#/, "").split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  const query = Object.fromEntries(new URLSearchParams(search || ""));
  const view = parts[0] === "set" || parts[0] === "upgrade" ? parts[0] : "fleet";
  return { view, args: parts.slice(1), query };
}

function hashFor(route, at) {
  const path = route.view === "fleet" ? "/" : `/${route.view}/${route.args.map(encodeURIComponent).join("/")}`;
  const query = new URLSearchParams(route.query);
  query.delete("at");
  if (at !== null) query.set("at", String(at));
  const text = query.toString();
  return `#${path}${text ? `?${text}` : ""}`;
}

function go(route, at, replace = false) {
  const hash = hashFor(route, at);
  if (location.hash === hash) { refresh(); return; }
  if (replace) { history.replaceState(null, "", hash); onHash(); } else { location.hash = hash; }
}

function onHash() {
  state.route = parseHash();
  const at = state.route.query.at;
  state.at = at !== undefined && /^\d+$/.test(at) ? Number(at) : null;
  $("live").classList.toggle("on", state.at === null);
  refresh();
}

// -- fetching -----------------------------------------------------------------------

class AuthError extends Error {}

async function api(path, params = {}) {
  const query = new URLSearchParams(params);
  const response = await fetch(`/ui/api/${path}?${query}`, {
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` },
  });
  if (response.status === 401 || response.status === 403) throw new AuthError(response.status);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

let busy = false;
let again = false;
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try { await load(); } catch (error) { fail(error); } finally {
    busy = false;
    if (again) { again = false; refresh(); }
  }
}

async function load() {
  if (!sessionStorage.getItem(KEY)) { askToken(""); return; }
  const { view, args, query } = state.route;
  const at = state.at === null ? {} : { at: state.at };
  let data;
  if (view === "set") data = await api(`set/${args.map(encodeURIComponent).join("/")}`, at);
  else if (view === "upgrade") data = await api(`upgrade/${encodeURIComponent(args[0] || "")}`, at);
  else {
    const params = { ...at, offset: query.offset || 0, limit: 100 };
    if (query.status) params.status = query.status;
    if (query.q) params.q = query.q;
    data = await api("fleet", params);
  }
  state.data = data;
  state.head = Math.max(state.head, data.head);
  renderTimebar(data);
  if (view === "set") renderSet(data); else if (view === "upgrade") renderUpgrade(data); else renderFleet(data);
  performance.mark("osupgrade-data");
  document.body.dataset.at = String(data.at);
  showChange(data.at);
  live();
}

async function showChange(at) {
  const line = $("change");
  if (at === 0) { line.textContent = "position 0: the empty log"; return; }
  const { event } = await api("event", { at });
  if (!event || Number(document.body.dataset.at) !== at) return;
  const target = event.upgrade ? `#/upgrade/${event.upgrade}?at=${at}` : event.scaleSet ? `#/set/${event.scaleSet}?at=${at}` : null;
  const where = target ? `<a href="${esc(target)}">${esc(event.stream)}</a>` : esc(event.stream);
  line.innerHTML = `step to ${event.position}: ${esc(event.summary)} · ${where} · ${esc(when(event.time))}`;
}

function fail(error) {
  if (error instanceof AuthError) { askToken("That token was refused."); return; }
  $("view").innerHTML = `<p class="error">${esc(error.message)}</p>`;
}

function askToken(message) {
  $("token-error").textContent = message;
  const dialog = $("token-dialog");
  if (!dialog.open) dialog.showModal();
}

// -- live updates -------------------------------------------------------------------

let streaming = false;
async function live() {
  if (streaming) return;
  streaming = true;
  try {
    for (let round = 0; round < 1e9; round++) {
      const response = await fetch(`/ui/api/live?after=${state.head}`, {
        headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` },
      });
      if (!response.ok || !response.body) break;
      $("conn").textContent = "live"; $("conn").classList.add("on");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const message = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const data = message.split("\n").find((l) => l.startsWith("data: "));
          if (data && !message.startsWith("event: end")) onHead(JSON.parse(data.slice(6)));
        }
      }
    }
  } catch (_error) { /* the server went away: show it, retry on the next load */ }
  $("conn").textContent = "offline"; $("conn").classList.remove("on");
  streaming = false;
}

function onHead(message) {
  state.head = Math.max(state.head, message.head);
  $("slider").max = String(state.head);
  if (state.at === null) refresh(); else renderMoment();
}

// -- the time bar -------------------------------------------------------------------

function renderTimebar(data) {
  const slider = $("slider");
  slider.max = String(state.head);
  if (!slider.matches(":active")) slider.value = String(data.at);
  renderMoment();
}

function renderMoment() {
  const data = state.data;
  if (!data) return;
  const mode = state.at === null ? "live, following the log" : "a past moment";
  $("moment").innerHTML = `position <b id="at">${data.at}</b> of ${state.head} · ` +
    `<b>${esc(when(data.time))}</b> · <span class="muted">${mode}; log from ${esc(when(data.first))}</span>`;
}

function moveTo(at, replace = false) {
  const clamped = Math.max(0, Math.min(state.head, at));
  go(state.route, clamped, replace);
}

function setupTimebar() {
  const slider = $("slider");
  slider.addEventListener("input", () => moveTo(Number(slider.value), true));
  slider.addEventListener("change", () => moveTo(Number(slider.value), true));
  $("step-back").onclick = () => moveTo(currentAt() - 1);
  $("step-fwd").onclick = () => moveTo(currentAt() + 1);
  $("live").onclick = () => go(state.route, null);
  $("goto").onsubmit = async (event) => {
    event.preventDefault();
    const text = $("position").value.trim();
    if (/^\d+$/.test(text)) { moveTo(Number(text)); return; }
    try { moveTo((await api("meta", { time: text })).at); } catch (error) { fail(error); }
  };
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return; // the slider steps by itself
    if (event.key === "ArrowLeft") { event.preventDefault(); moveTo(currentAt() - 1); }
    if (event.key === "ArrowRight") { event.preventDefault(); moveTo(currentAt() + 1); }
  });
}

function currentAt() { return state.at === null ? (state.data ? state.data.at : state.head) : state.at; }

// -- views --------------------------------------------------------------------------

function crumbs(items) {
  $("crumbs").innerHTML = items.map(([label, hash]) =>
    hash ? `<a href="${esc(hash)}">${esc(label)}</a>` : esc(label)).join(" / ");
}

function phaseBar(counts, big = false) {
  const total = counts.reduce((a, b) => a + b, 0) || 1;
  const parts = counts.map((n, i) => n ? `<span title="${PHASES[i]}: ${n}" style="width:${(100 * n) / total}%;background:var(--${PHASES[i]})"></span>` : "").join("");
  return `<div class="bar${big ? " big" : ""}">${parts}</div>`;
}

function renderFleet(data) {
  const query = state.route.query;
  crumbs([["fleet", null]]);
  const at = state.at;
  const cards = STATUSES.map((s) => `<div class="card${query.status === s ? " sel" : ""}" data-status="${s}" ${color(s)}>` +
    `${esc(s)}<b id="count-${s}">${data.statuses[s] || 0}</b></div>`).join("");
  const phases = PHASES.map((p) => data.phases[p] || 0);
  const legend = PHASES.map((p, i) => `<span><i style="background:var(--${p})"></i>${p} <b id="phase-${p}">${phases[i]}</b></span>`).join("");
  const rows = data.sets.map((s) => {
    const link = hashFor({ view: "set", args: s.key.split("/"), query: {} }, at);
    return `<tr><td class="mono"><a href="${esc(link)}">${esc(s.key)}</a></td><td>${badge(s.status)}</td>` +
      `<td>${s.instances}</td><td class="mono">${esc(s.target || "")}</td><td>${phaseBar(s.phases)}</td></tr>`;
  }).join("");
  const offset = Number(data.offset);
  $("view").innerHTML = `<h1>Fleet <span class="muted">${Object.values(data.statuses).reduce((a, b) => a + b, 0)} scale sets</span></h1>
    <div class="cards" id="statuses">${cards}</div>
    <h2>Instances by phase</h2>${phaseBar(phases, true)}<div class="legend">${legend}</div>
    <h2>Scale sets</h2>
    <div class="pager"><input class="filter" id="filter" placeholder="filter by name" value="${esc(query.q || "")}">
      <span class="muted">${data.matching} matching · ${offset + 1}–${offset + data.sets.length}</span>
      <button id="prev-page" ${offset ? "" : "disabled"}>previous</button>
      <button id="next-page" ${offset + data.sets.length < data.matching ? "" : "disabled"}>next</button></div>
    <table id="fleet-table"><thead><tr><th>scale set</th><th>status</th><th>instances</th><th>target</th><th>phases</th></tr></thead>
    <tbody>${rows}</tbody></table>`;
  for (const card of document.querySelectorAll("#statuses .card")) {
    card.onclick = () => {
      const q = { ...query, offset: 0 };
      if (q.status === card.dataset.status) delete q.status; else q.status = card.dataset.status;
      go({ ...state.route, query: q }, state.at);
    };
  }
  const page = (delta) => go({ ...state.route, query: { ...query, offset: Math.max(0, offset + delta) } }, state.at);
  $("prev-page").onclick = () => page(-100);
  $("next-page").onclick = () => page(100);
  $("filter").onchange = (event) => go({ ...state.route, query: { ...query, q: event.target.value, offset: 0 } }, state.at);
}

function checkText(check) {
  if (!check) return "";
  const over = check.percent > check.limit;
  return `<span class="check${over ? " over" : ""}">${check.value} of ${check.total} = ${check.percent} % ${over ? ">" : "≤"} ${check.limit} %</span>`;
}

function renderSet(data) {
  const [sub, rg, name] = state.route.args;
  crumbs([["fleet", hashFor({ view: "fleet", args: [], query: {} }, state.at)], [`${sub}/${rg}/${name}`, null]]);
  const up = data.upgrade;
  const tiles = data.instances.map((i) => `<div class="tile" ${color(i.phase)} title="${esc(`${i.id}: ${i.phase}, ${i.health}, zone ${i.zone ?? "-"}`)}">` +
    `${esc(i.id)}<small>${esc(i.version)}</small><small>${esc(i.health)}</small></div>`).join("");
  const rows = data.instances.map((i) => `<tr><td>${esc(i.id)}</td><td class="mono">${esc(i.version)}</td><td>${esc(i.health)}</td>` +
    `<td><span class="dot" style="background:var(--${esc(i.phase)})"></span>${esc(i.phase)}</td><td>${esc(i.zone ?? "")}</td></tr>`).join("");
  const previous = data.changes.filter((p) => p < data.at).pop();
  const next = data.changes.find((p) => p > data.at);
  let upgrade = `<p class="muted">No upgrade yet at this moment.</p>`;
  if (up) {
    const link = hashFor({ view: "upgrade", args: [up.id], query: {} }, state.at);
    const batches = up.batches.map((b) => `<div class="batch"><b>batch ${b.index}</b> · ${b.size} instances · ${esc(b.reason)} · unhealthy before: ${b.unhealthyBefore} of ${b.total}` +
      (b.completed ? ` · done: ${b.completed.succeeded} upgraded, ${b.completed.failed} failed · upgraded unhealthy ${checkText(b.completed.check)}` : " · <i>in progress</i>") +
      `<div class="chips">${Object.entries(b.members).map(([m, p]) => `<span class="chip" ${color(p)} title="${esc(p)}">${esc(m)}</span>`).join("")}</div></div>`).join("");
    const error = up.error ? `<p class="error">${esc(up.error.code)}: ${esc(up.error.message)}</p>` : "";
    upgrade = `<div class="row"><span id="status">${badge(up.code)}</span><span>to <b class="mono">${esc(up.target)}</b> by ${esc(up.startedBy)}</span>` +
      `<span>${esc(when(up.start))} → ${esc(when(up.end))}</span><a id="upgrade-link" href="${esc(link)}">event timeline</a></div>${error}` +
      `<p>progress: ${Object.entries(up.progress).map(([k, v]) => `${esc(k.replace("InstanceCount", ""))} <b>${v}</b>`).join(" · ")}</p>${batches || '<p class="muted">no batch yet</p>'}`;
  }
  const history = data.history.map((h) => `<tr><td class="mono"><a href="${esc(hashFor({ view: "upgrade", args: [h.id], query: {} }, state.at))}">${esc(h.id.slice(0, 12))}</a></td>` +
    `<td>${badge(h.code)}</td><td>${esc(h.startedBy)}</td><td class="mono">${esc(h.target)}</td><td>${esc(when(h.start))}</td><td>${esc(when(h.end))}</td>` +
    `<td>${h.progress.successfulInstanceCount}/${h.progress.failedInstanceCount}/${h.progress.pendingInstanceCount + h.progress.inProgressInstanceCount}</td><td>${h.rolledBack}</td></tr>`).join("");
  $("view").innerHTML = `<h1 class="mono">${esc(data.key)} ${data.exists ? "" : '<span class="error">(not in the log at this moment)</span>'}</h1>
    <div class="row muted"><span>${esc(data.location || "")}</span><span>${esc(data.mode || "")} mode</span><span>image ${esc([data.image.publisher, data.image.offer, data.image.sku, data.image.version].filter(Boolean).join(" / "))}</span>
    <button id="prev-change" ${previous === undefined ? "disabled" : ""}>◀ previous change of this set</button>
    <button id="next-change" ${next === undefined ? "disabled" : ""}>next change ▶</button></div>
    <h2>Current upgrade</h2>${upgrade}
    <h2>Instances</h2><div class="tiles" id="tiles">${tiles}</div>
    <details><summary>as a table</summary><table><thead><tr><th>id</th><th>version</th><th>health</th><th>phase</th><th>zone</th></tr></thead><tbody>${rows}</tbody></table></details>
    <h2>History <span class="muted">(osUpgradeHistory at this moment)</span></h2>
    <table><thead><tr><th>upgrade</th><th>code</th><th>started by</th><th>target</th><th>start</th><th>end</th><th>ok/failed/left</th><th>rolled back</th></tr></thead><tbody>${history}</tbody></table>`;
  $("prev-change").onclick = () => moveTo(previous);
  $("next-change").onclick = () => moveTo(next);
}

function renderUpgrade(data) {
  const setArgs = (data.scaleSet || "").split("/");
  crumbs([["fleet", hashFor({ view: "fleet", args: [], query: {} }, state.at)],
    [data.scaleSet || "?", hashFor({ view: "set", args: setArgs, query: {} }, state.at)], [`upgrade ${data.id.slice(0, 12)}`, null]]);
  const past = data.events.filter((e) => !e.future);
  const current = past.length ? past[past.length - 1].position : -1;
  const rows = data.events.map((e) => {
    const inputs = Object.entries(e.inputs).map(([k, v]) =>
      k === "check" || (v && typeof v === "object" && "limit" in v) ? `${esc(k)}: ${checkText(v)}` : `${esc(k)}: ${esc(Array.isArray(v) ? v.join(", ") : typeof v === "object" ? JSON.stringify(v) : v)}`).join("<br>");
    const cls = e.future ? "future" : e.position === current ? "now" : "";
    return `<tr class="${cls}"><td><a href="${esc(hashFor(state.route, e.position))}">${e.position}</a></td><td>${esc(when(e.time))}</td>` +
      `<td>${esc(e.summary)}</td><td class="inputs">${inputs}</td></tr>`;
  }).join("");
  const error = data.error ? `<p class="error">${esc(data.error.code)}: ${esc(data.error.message)}</p>` : "";
  $("view").innerHTML = `<h1>Upgrade <span class="mono">${esc(data.id)}</span></h1>
    ${data.requested ? `<div class="row"><span id="status">${badge(data.code)}</span><span>to <b class="mono">${esc(data.target)}</b> by ${esc(data.startedBy)}</span><span>${esc(when(data.start))} → ${esc(when(data.end))}</span></div>${error}` : '<p class="muted">Not requested yet at this moment.</p>'}
    <h2>Events <span class="muted">(highlighted: the latest at this moment; greyed: after it; each with the inputs of its decision)</span></h2>
    <table id="events"><thead><tr><th>position</th><th>engine time</th><th>what happened</th><th>decided from</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// -- start --------------------------------------------------------------------------

function start() {
  $("token-form").addEventListener("submit", () => {
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("forget").onclick = () => { sessionStorage.removeItem(KEY); askToken(""); };
  setupTimebar();
  window.addEventListener("hashchange", onHash);
  onHash();
}

start();
