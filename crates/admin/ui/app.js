// Gateway dashboard: plain JavaScript, no dependencies, served from the binary.
// Reads the REST API with the token kept in this tab's session storage, and follows the
// server-sent events of /v1/stream (read with fetch, so the bearer header can be sent).
"use strict";

const TOKEN_KEY = "gateway.token";
const $ = (sel) => document.querySelector(sel);

let config = { revision: 0, pools: [], routes: [] };
let status = null;
let rates = { backends: new Map(), routes: new Map() };
let lastCounters = null; // { at, backends: Map, routes: Map }
let editingRoute = null; // revision the route form was opened at (null: creating)
let editingPool = null;
let stream = null;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path, body, headers) {
  const h = Object.assign({}, headers || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  if (body !== undefined) h["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  return { status: resp.status, ok: resp.ok, data };
}

function say(text, kind) {
  const m = $("#message");
  m.textContent = text;
  m.className = kind || "ok";
  m.hidden = false;
}

function failure(what, r, kind, name, revision) {
  if (r.status === 412) {
    const now = current(kind, name);
    say(`Not saved: ${kind} '${name}' was changed by someone else since you opened it ` +
      `(you edited revision ${revision}` + (now ? `, it is now at revision ${now.revision}` : ", it is gone now") +
      `). Nothing was overwritten: open it again to see the new version, then redo your change.`, "error");
  } else if (r.status === 401 || r.status === 403) {
    say(`${what}: ${(r.data && r.data.error) || "not allowed"} (log in with a write token)`, "error");
  } else {
    say(`${what}: ${(r.data && r.data.error) || ("HTTP " + r.status)}`, "error");
  }
}

function current(kind, name) {
  const list = kind === "route" ? config.routes : config.pools;
  return list.find((o) => o.name === name) || null;
}

// ---- login ----

async function start() {
  const probe = await api("GET", "/status");
  if (probe.status === 401 || probe.status === 403) {
    showLogin(token() ? "That token was refused; paste a valid admin token." : "");
    return;
  }
  if (!probe.ok) {
    showLogin("The node answered " + probe.status + ": " + ((probe.data && probe.data.error) || ""));
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = !token();
  status = probe.data;
  follow();
}

function showLogin(error) {
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#logout").hidden = true;
  const e = $("#login-error");
  e.textContent = error || "";
  e.hidden = !error;
  $("#token").focus();
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  start();
});

$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  showLogin("");
});

// ---- live updates (server-sent events over fetch) ----

async function follow() {
  if (stream) stream.abort();
  const ctl = new AbortController();
  stream = ctl;
  const headers = { Accept: "text/event-stream" };
  if (token()) headers["Authorization"] = "Bearer " + token();
  try {
    const resp = await fetch("/v1/stream", { headers, signal: ctl.signal });
    if (resp.status === 401 || resp.status === 403) { showLogin("That token was refused."); return; }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    setLive(true);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let type = "message", data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(type, data.join("\n"));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  setLive(false);
  if (stream === ctl) setTimeout(follow, 1000);
}

function setLive(on) {
  const b = $("#live");
  b.textContent = on ? "live" : "reconnecting";
  b.className = "badge " + (on ? "on" : "off");
}

function onEvent(type, data) {
  const v = JSON.parse(data);
  if (type === "state") {
    config = v;
    render();
  } else if (type === "tick") {
    status = v.status;
    counters(v.metrics);
    render();
  }
}

// Requests/s from successive counter readings of the /metrics text.
function counters(text) {
  const now = { at: performance.now(), backends: new Map(), routes: new Map() };
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line) continue;
    const m = line.match(/^(\w+)\{(.*)\} (\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const l of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const val = Number(m[3]);
    if (m[1] === "gateway_backend_requests_total") {
      now.backends.set(labels.pool + "/" + labels.backend, val);
    } else if (m[1] === "gateway_http_requests_total") {
      now.routes.set(labels.route, (now.routes.get(labels.route) || 0) + val);
    }
  }
  if (lastCounters) {
    const dt = (now.at - lastCounters.at) / 1000;
    const rate = (a, b) => (dt > 0 ? Math.max(0, (a - (b || 0)) / dt) : 0);
    rates = { backends: new Map(), routes: new Map() };
    for (const [k, v] of now.backends) rates.backends.set(k, rate(v, lastCounters.backends.get(k)));
    for (const [k, v] of now.routes) rates.routes.set(k, rate(v, lastCounters.routes.get(k)));
  }
  lastCounters = now;
}

// ---- rendering ----

function render() {
  renderHeader();
  renderMembers();
  renderRoutes();
  renderPools();
}

function renderHeader() {
  if (!status) return;
  $("#node-info").textContent =
    `node ${status.id} (${status.role}) · leader: ${status.leader ? "node " + status.leader : "none"} · term ${status.term} · ` +
    `applied ${status.applied_index ?? 0} · revision ${config.revision}`;
}

function renderMembers() {
  if (!status) return;
  const body = $("#members tbody");
  body.replaceChildren();
  const rows = status.voters.map((m) => [m, "voter"]).concat(status.learners.map((m) => [m, "learner"]));
  for (const [m, kind] of rows) {
    const leads = status.leader === m.id;
    body.append(el("tr", { dataset: { member: m.id } },
      el("td", {}, m.id, m.id === status.id ? " (this node)" : ""),
      el("td", { class: "role" }, leads ? "leader" : kind),
      el("td", {}, m.admin_addr),
      el("td", {}, m.http_addr),
      el("td", { class: "num" }, m.matched_index ?? "–"),
      el("td", { class: "num lag" }, m.lag ?? "–"),
      el("td", {}, leads || kind !== "voter" ? "" :
        el("button", { class: "transfer", type: "button", onclick: () => transfer(m.id) }, "make leader"))));
  }
}

function renderRoutes() {
  const body = $("#routes tbody");
  body.replaceChildren();
  for (const r of config.routes) {
    const rps = rates.routes.get(r.name);
    body.append(el("tr", { dataset: { route: r.name } },
      el("td", {}, r.name),
      el("td", {}, (r.hosts || []).join(", ") || "*"),
      el("td", {}, r.path_prefix || "/"),
      el("td", {}, (r.methods || []).join(",") || "*"),
      el("td", {}, r.pool),
      el("td", {}, r.writes || "any"),
      el("td", { class: "num rps" }, rps === undefined ? "–" : rps.toFixed(1)),
      el("td", { class: "num" }, r.revision),
      el("td", {},
        el("button", { class: "edit-route", type: "button", onclick: () => editRoute(r) }, "edit"), " ",
        el("button", { class: "delete-route", type: "button", onclick: () => deleteRoute(r) }, "delete"))));
  }
  const names = $("#pool-names");
  names.replaceChildren(...config.pools.map((p) => el("option", { value: p.name })));
}

// Each backend's health as /v1/health shows it (up, down, or unknown without a health check),
// carried by the state events.
function healthOf(pool, b) {
  const h = (config.backends || []).find((x) => x.pool === pool && x.backend === b.id);
  return h ? h.state : "unknown";
}

function renderPools() {
  const box = $("#pools");
  box.replaceChildren();
  for (const p of config.pools) {
    const rows = (p.backends || []).map((b) => {
      const state = healthOf(p.name, b);
      const rps = rates.backends.get(p.name + "/" + b.id);
      return el("tr", { class: "backend " + state + (b.drain ? " draining" : ""), dataset: { backend: b.id, health: state } },
        el("td", {}, b.id),
        el("td", {}, b.address),
        el("td", { class: "num" }, b.weight ?? 1),
        el("td", {}, b.node ?? ""),
        el("td", { class: "health " + state }, state),
        el("td", {}, b.drain ? "draining" : ""),
        el("td", { class: "num rps" }, rps === undefined ? "–" : rps.toFixed(1)),
        el("td", {},
          el("button", { class: "drain", type: "button", onclick: () => setDrain(p, b.id, !b.drain) }, b.drain ? "undrain" : "drain"), " ",
          el("button", { class: "remove-backend", type: "button", onclick: () => removeBackend(p, b.id) }, "remove")));
    });
    const idIn = el("input", { class: "new-backend-id", placeholder: "id" });
    const addrIn = el("input", { class: "new-backend-address", placeholder: "127.0.0.1:8201" });
    box.append(el("div", { class: "pool", dataset: { pool: p.name } },
      el("h3", {}, p.name,
        el("span", { class: "hint" }, `${p.balance || "round_robin"} · revision ${p.revision}` +
          (p.health_check ? ` · ${p.health_check.type} health check` : "")),
        el("button", { class: "edit-pool", type: "button", onclick: () => editPool(p) }, "edit"),
        el("button", { class: "delete-pool", type: "button", onclick: () => deletePool(p) }, "delete")),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["backend", "address", "weight", "node", "health", "", "req/s", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)),
      el("p", { class: "add-backend-row" }, idIn, " ", addrIn, " ",
        el("button", { class: "add-backend", type: "button", onclick: () => addBackend(p, idIn.value.trim(), addrIn.value.trim()) }, "add backend"))));
  }
}

// ---- actions ----

const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);

function editRoute(r) {
  editingRoute = r.revision;
  $("#route-form-title").textContent = `Edit route ${r.name}`;
  $("#route-name").value = r.name;
  $("#route-name").readOnly = true;
  $("#route-hosts").value = (r.hosts || []).join(", ");
  $("#route-path").value = r.path_prefix || "/";
  $("#route-methods").value = (r.methods || []).join(", ");
  $("#route-pool").value = r.pool;
  $("#route-writes").value = r.writes || "any";
  $("#route-revision").textContent = `editing revision ${r.revision}`;
  $("#route-form").dataset.original = JSON.stringify(r);
}

function clearRoute() {
  editingRoute = null;
  $("#route-form").reset();
  $("#route-name").readOnly = false;
  $("#route-form-title").textContent = "Add a route";
  $("#route-revision").textContent = "";
  delete $("#route-form").dataset.original;
}

$("#route-cancel").addEventListener("click", clearRoute);

$("#route-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("#route-name").value.trim();
  // Fields the form does not show are kept as they were read.
  const obj = editingRoute === null ? {} : JSON.parse($("#route-form").dataset.original);
  delete obj.revision;
  delete obj.name;
  obj.hosts = list($("#route-hosts").value);
  obj.path_prefix = $("#route-path").value.trim() || "/";
  obj.methods = list($("#route-methods").value).map((m) => m.toUpperCase());
  obj.pool = $("#route-pool").value.trim();
  obj.writes = $("#route-writes").value;
  const cond = editingRoute === null ? { "If-None-Match": "*" } : { "If-Match": `"${editingRoute}"` };
  const r = await api("PUT", "/v1/routes/" + encodeURIComponent(name), obj, cond);
  if (r.ok) {
    say(`Route '${name}' saved (revision ${r.data.revision ?? ""}).`, "ok");
    clearRoute();
  } else if (r.status === 412 && editingRoute === null) {
    say(`Not saved: a route named '${name}' already exists; edit it instead.`, "error");
  } else {
    failure(`Saving route '${name}'`, r, "route", name, editingRoute);
  }
});

async function deleteRoute(r) {
  const resp = await api("DELETE", "/v1/routes/" + encodeURIComponent(r.name), undefined, { "If-Match": `"${r.revision}"` });
  if (resp.ok) say(`Route '${r.name}' deleted.`, "ok");
  else failure(`Deleting route '${r.name}'`, resp, "route", r.name, r.revision);
}

function parseBackends(text) {
  const out = [];
  for (const [i, line] of text.split("\n").entries()) {
    const parts = line.trim().split(/\s+/).filter(Boolean);
    if (!parts.length) continue;
    if (parts.length < 2) throw new Error(`backends line ${i + 1}: write 'id address [weight]'`);
    const b = { id: parts[0], address: parts[1] };
    if (parts[2]) b.weight = Number(parts[2].replace(/^weight=/, ""));
    out.push(b);
  }
  return out;
}

function editPool(p) {
  editingPool = p.revision;
  $("#pool-form-title").textContent = `Edit pool ${p.name}`;
  $("#pool-name").value = p.name;
  $("#pool-name").readOnly = true;
  $("#pool-balance").value = p.balance || "round_robin";
  $("#pool-hc-type").value = (p.health_check && p.health_check.type) || "";
  $("#pool-hc-path").value = (p.health_check && p.health_check.path) || "";
  $("#pool-backends").value = (p.backends || []).map((b) => `${b.id} ${b.address}` + (b.weight && b.weight !== 1 ? ` ${b.weight}` : "")).join("\n");
  $("#pool-revision").textContent = `editing revision ${p.revision}`;
  $("#pool-form").dataset.original = JSON.stringify(p);
}

function clearPool() {
  editingPool = null;
  $("#pool-form").reset();
  $("#pool-name").readOnly = false;
  $("#pool-form-title").textContent = "Add a pool";
  $("#pool-revision").textContent = "";
  delete $("#pool-form").dataset.original;
}

$("#pool-cancel").addEventListener("click", clearPool);

$("#pool-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("#pool-name").value.trim();
  const obj = editingPool === null ? {} : JSON.parse($("#pool-form").dataset.original);
  delete obj.revision;
  delete obj.name;
  obj.balance = $("#pool-balance").value;
  // The check's other settings (interval, thresholds, ...) are kept as read.
  const hcType = $("#pool-hc-type").value;
  if (!hcType) {
    delete obj.health_check;
  } else {
    obj.health_check = Object.assign({}, obj.health_check || {}, { type: hcType });
    const path = $("#pool-hc-path").value.trim();
    if (hcType === "http" && path) obj.health_check.path = path;
    if (hcType === "tcp") delete obj.health_check.path;
  }
  let backends;
  try { backends = parseBackends($("#pool-backends").value); } catch (e) { say(e.message, "error"); return; }
  // Keep what the form does not show (node, limits, drain) for backends it keeps.
  const old = new Map((obj.backends || []).map((b) => [b.id, b]));
  obj.backends = backends.map((b) => Object.assign({}, old.get(b.id) || {}, b));
  const cond = editingPool === null ? { "If-None-Match": "*" } : { "If-Match": `"${editingPool}"` };
  const r = await api("PUT", "/v1/pools/" + encodeURIComponent(name), obj, cond);
  if (r.ok) {
    say(`Pool '${name}' saved (revision ${r.data.revision ?? ""}).`, "ok");
    clearPool();
  } else if (r.status === 412 && editingPool === null) {
    say(`Not saved: a pool named '${name}' already exists; edit it instead.`, "error");
  } else {
    failure(`Saving pool '${name}'`, r, "pool", name, editingPool);
  }
});

async function putPool(p, change, what) {
  const obj = JSON.parse(JSON.stringify(p));
  delete obj.revision;
  delete obj.name;
  change(obj);
  const r = await api("PUT", "/v1/pools/" + encodeURIComponent(p.name), obj, { "If-Match": `"${p.revision}"` });
  if (r.ok) say(`${what} (revision ${r.data.revision ?? ""}).`, "ok");
  else failure(what.replace(/^./, (c) => c.toUpperCase()), r, "pool", p.name, p.revision);
}

function setDrain(p, id, drain) {
  return putPool(p, (o) => {
    for (const b of o.backends) if (b.id === id) { if (drain) b.drain = true; else delete b.drain; }
  }, `backend '${id}' of pool '${p.name}' ${drain ? "draining" : "back in service"}`);
}

function removeBackend(p, id) {
  return putPool(p, (o) => { o.backends = o.backends.filter((b) => b.id !== id); },
    `backend '${id}' removed from pool '${p.name}'`);
}

function addBackend(p, id, address) {
  if (!id || !address) { say("Give the new backend an id and an address (host:port).", "error"); return; }
  return putPool(p, (o) => { o.backends = (o.backends || []).concat([{ id, address }]); },
    `backend '${id}' added to pool '${p.name}'`);
}

async function deletePool(p) {
  const r = await api("DELETE", "/v1/pools/" + encodeURIComponent(p.name), undefined, { "If-Match": `"${p.revision}"` });
  if (r.ok) say(`Pool '${p.name}' deleted.`, "ok");
  else failure(`Deleting pool '${p.name}'`, r, "pool", p.name, p.revision);
}

async function transfer(id) {
  say(`Handing leadership to node ${id}…`, "ok");
  const r = await api("POST", "/v1/cluster/transfer-leader", { to: id });
  if (r.ok) say(`Node ${(r.data && (r.data.leader ?? r.data.to)) ?? id} leads now.`, "ok");
  else failure("Transferring leadership", r);
}

start();
