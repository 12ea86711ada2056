// The gpu-replica web console: plain JavaScript over the same HTTP API as the CLI. Every
// request carries the token the user signed in with; every error shows the API's own message.
"use strict";

const state = { token: sessionStorage.getItem("gpu-replica-token"), me: null, tab: "sets", feed: null, terminal: null };
const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === null) continue;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function headers(json) {
  const h = {};
  if (state.token) h.Authorization = "Bearer " + state.token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

// One API call: resolves with `data`, or shows the envelope's message and rejects.
async function api(method, path, body) {
  let answer;
  try {
    const response = await fetch("/api/v1" + path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    answer = await response.json();
  } catch (e) {
    showError("The server did not answer: " + e.message);
    throw e;
  }
  if (answer.code !== 200) {
    showError(`${answer.msg} (code ${answer.code})`);
    throw new Error(answer.msg);
  }
  return answer.data;
}

// Runs an action from a button: clears the last error, refreshes the page after.
function action(run) {
  return async (event) => {
    event?.preventDefault?.();
    clearError();
    try {
      await run();
    } catch (_) {
      // shown already
    }
    await refresh();
  };
}

async function signIn(token, quiet) {
  state.token = token || null;
  try {
    const me = await api("GET", "/whoami");
    state.me = me.user;
  } catch (_) {
    state.token = null;
    sessionStorage.removeItem("gpu-replica-token");
    if (quiet) clearError();
    return;
  }
  if (state.token) sessionStorage.setItem("gpu-replica-token", state.token);
  else sessionStorage.removeItem("gpu-replica-token");
  clearError();
  document.body.classList.toggle("is-admin", state.me.role === "admin");
  $("#who").textContent = `${state.me.name} (${state.me.role})`;
  $("#signin-page").hidden = true;
  $("#tabs").hidden = false;
  $("#signout").hidden = false;
  startFeed();
  route();
}

function signOut() {
  sessionStorage.removeItem("gpu-replica-token");
  location.reload();
}

function show(tab) {
  if (tab !== "terminal") leaveTerminal();
  state.tab = tab;
  for (const button of document.querySelectorAll("nav .tab")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const page of document.querySelectorAll(".page")) {
    page.hidden = page.id !== tab + "-page";
  }
  refresh();
}

async function refresh() {
  if (!state.me) return;
  try {
    if (state.tab === "sets") await renderSets();
    if (state.tab === "gpus") await renderGpus();
    if (state.tab === "volumes") await renderVolumes();
    if (state.tab === "keys") await renderKeys();
  } catch (_) {
    // shown already
  }
}

function timersText(timers) {
  if (!timers) return "";
  const parts = [];
  if (timers.idleStopSecs) parts.push(`idle ${timers.idleStopSecs}s`);
  if (timers.stopAt) parts.push(`stop at ${timers.stopAt}`);
  return parts.join(", ");
}

async function renderSets() {
  const data = await api("GET", "/replicaSet");
  const cluster = data.replicaSets.some((s) => s.node);
  document.body.classList.toggle("is-cluster", cluster);
  const body = $("#sets tbody");
  body.replaceChildren(
    ...data.replicaSets.map((set) => {
      const name = set.name;
      const gpus = el("input", { type: "number", min: "0", value: String(set.gpus.length), class: "patch-gpus" });
      const confirm = el("span", { class: "confirm", hidden: "" },
        `Delete ${name} and all its versions? `,
        el("button", { type: "button", class: "confirm-delete", onclick: action(() => api("DELETE", `/replicaSet/${name}`)) }, "Yes, delete"));
      const running = set.status === "running" || set.status === "exited";
      return el("tr", { dataset: { set: name } },
        el("td", { class: "name" }, name),
        el("td", { class: "status status-" + set.status }, set.status),
        el("td", { class: "version" }, String(set.version)),
        el("td", { class: "gpus", title: set.gpus.join("\n") }, String(set.gpus.length)),
        el("td", { class: "ports" }, Object.entries(set.ports).map(([c, h]) => `${c}→${h}`).join(", ")),
        el("td", { class: "timers" }, timersText(set.timers)),
        el("td", { class: "admin" }, set.owner || ""),
        el("td", { class: "cluster" }, set.node || ""),
        el("td", { class: "actions" },
          gpus,
          el("button", { type: "button", class: "patch",
            onclick: action(() => api("PATCH", `/replicaSet/${name}`, { gpuPatch: { gpuCount: Number(gpus.value) } })) }, "Set GPUs"),
          el("button", { type: "button", class: "change-image", title: "A new version from another image, keeping chosen folders (undo: roll back)",
            onclick: action(async () => {
              const image = prompt(`New image for ${name} (local):`, set.image || "");
              if (!image) return;
              const keep = prompt("Folders to keep (comma-separated absolute paths):", "/root");
              if (keep === null) return;
              const keepPaths = keep.split(",").map((s) => s.trim()).filter(Boolean);
              await api("PATCH", `/replicaSet/${name}`, { imageName: image.trim(), keepPaths });
            }) }, "Change image"),
          running
            ? el("button", { type: "button", class: "stop", onclick: action(() => api("PATCH", `/replicaSet/${name}/stop`)) }, "Stop")
            : el("button", { type: "button", class: "continue", onclick: action(() => api("PATCH", `/replicaSet/${name}/continue`)) }, "Continue"),
          el("button", { type: "button", class: "terminal", disabled: set.status === "running" ? null : "",
            title: "A terminal in the set's container", onclick: () => { location.hash = "#/terminal/" + encodeURIComponent(name); } }, "Terminal"),
          el("button", { type: "button", class: "services", disabled: set.status === "running" ? null : "",
            title: "The set's web services, opened through the proxy", onclick: () => openServices(name) }, "Services"),
          el("button", { type: "button", class: "history", onclick: () => openHistory(name) }, "History"),
          el("button", { type: "button", class: "clone", onclick: action(async () => {
            const copy = prompt(`Clone ${name} as:`, name + "copy");
            if (copy) await api("POST", `/replicaSet/${name}/clone`, { name: copy });
          }) }, "Clone"),
          el("button", { type: "button", class: "delete danger", onclick: () => { confirm.hidden = false; } }, "Delete"),
          confirm));
    }));
  if (!$("#history").hidden) await renderHistory($("#history-name").textContent);
}

async function openServices(name) {
  clearError();
  $("#services-name").textContent = name;
  $("#services").hidden = false;
  try {
    await renderServices(name);
  } catch (_) {
    // shown already
  }
}

// Opens port `port` of set `name` in a new tab: a link good for a minute, once, which sets the
// proxy's cookie for that service. The tab gets no handle on this page (noopener).
async function openService(name, port) {
  const data = await api("POST", `/replicaSet/${name}/open`, { port: Number(port) });
  window.open(data.url, "_blank", "noopener,noreferrer");
}

async function renderServices(name) {
  const data = await api("GET", `/replicaSet/${name}/services`);
  $("#services tbody").replaceChildren(
    ...data.services.map((s) =>
      el("tr", { dataset: { port: String(s.port) } },
        el("td", { class: "port" }, String(s.port)),
        el("td", { class: "host-port" }, s.hostPort == null ? "" : String(s.hostPort)),
        el("td", { class: "listening" }, s.listening ? "yes" : "no"),
        el("td", { class: "web" }, s.http ? "web" : ""),
        el("td", {}, el("a", { href: "#", class: "open", title: "Open in a new tab, signed in",
          onclick: (event) => { event.preventDefault(); action(() => openService(name, s.port))(); } }, "Open")))));
}

async function openHistory(name) {
  clearError();
  $("#history-name").textContent = name;
  $("#history").hidden = false;
  try {
    await renderHistory(name);
  } catch (_) {
    // shown already
  }
}

async function renderHistory(name) {
  const data = await api("GET", `/replicaSet/${name}/history`);
  const current = Number($(`#sets tr[data-set="${CSS.escape(name)}"] .version`)?.textContent);
  $("#history tbody").replaceChildren(
    ...data.history.map((item) =>
      el("tr", { dataset: { version: String(item.version) } },
        el("td", {}, String(item.version) + (item.version === current ? " (current)" : "")),
        el("td", {}, item.createTime),
        el("td", {}, String((item.status.gpus || []).length)),
        el("td", { class: "image" }, item.status.image || item.status.config?.Image || ""),
        el("td", {}, item.version === current ? "" :
          el("button", { type: "button", class: "rollback", dataset: { version: String(item.version) },
            onclick: action(() => api("PATCH", `/replicaSet/${name}/rollback`, { version: item.version })) },
            `Roll back to ${item.version}`)))));
}

// A bar `percent` wide (set through the style object: the page's policy allows no inline style).
function meter(percent) {
  const bar = el("span");
  bar.style.width = `${percent}%`;
  return el("span", { class: "meter" }, bar);
}

async function renderGpus() {
  const data = await api("GET", "/resources/gpus?detail=true");
  document.body.classList.toggle("is-cluster", data.gpus.some((g) => g.node));
  const mib = (bytes) => (bytes == null ? "?" : Math.round(bytes / 1048576) + " MiB");
  $("#gpus tbody").replaceChildren(
    ...data.gpus.map((gpu) =>
      el("tr", { dataset: { uuid: gpu.uuid } },
        el("td", {}, String(gpu.index)),
        el("td", { class: "uuid" }, gpu.uuid),
        el("td", {}, gpu.name),
        el("td", {}, gpu.utilization == null ? "?" :
          [meter(gpu.utilization), `${gpu.utilization}%`]),
        el("td", {}, `${mib(gpu.memoryUsed)} / ${mib(gpu.memoryTotal)}`),
        el("td", { class: "holder" }, gpu.holder || "free"),
        el("td", { class: "cluster" }, gpu.node || ""))));
}

async function renderVolumes() {
  const data = await api("GET", "/volumes");
  $("#volumes tbody").replaceChildren(
    ...data.volumes.map((volume) => {
      const size = el("input", { class: "resize-size", placeholder: "50GB", size: "6" });
      const confirm = el("span", { class: "confirm", hidden: "" },
        `Delete ${volume.name} and its data? `,
        el("button", { type: "button", class: "confirm-delete", onclick: action(() => api("DELETE", `/volumes/${volume.name}`)) }, "Yes, delete"));
      return el("tr", { dataset: { volume: volume.name } },
        el("td", {}, volume.name),
        el("td", {}, String(volume.version)),
        el("td", {}, volume.dockerName),
        el("td", { class: "size" }, volume.size + (volume.sizeEnforced ? "" : " (not enforced)")),
        el("td", { class: "admin" }, volume.owner || ""),
        el("td", { class: "cluster" }, volume.node || ""),
        el("td", { class: "actions" },
          size,
          el("button", { type: "button", class: "resize",
            onclick: action(() => api("PATCH", `/volumes/${volume.name}/size`, { size: size.value })) }, "Resize"),
          el("button", { type: "button", class: "delete danger", onclick: () => { confirm.hidden = false; } }, "Delete"),
          confirm));
    }));
}

// The signed-in user's SSH public keys: the keys the SSH gateway lets into their sets.
function keysPath(fingerprint) {
  const base = `/users/${encodeURIComponent(state.me.name)}/keys`;
  return fingerprint === undefined ? base : `${base}/${encodeURIComponent(fingerprint)}`;
}

async function renderKeys() {
  $("#keys-user").textContent = state.me.name;
  const data = await api("GET", keysPath());
  $("#keys-empty").hidden = data.keys.length > 0;
  $("#keys tbody").replaceChildren(
    ...data.keys.map((key) =>
      el("tr", { dataset: { fingerprint: key.fingerprint } },
        el("td", { class: "fingerprint", title: key.key }, key.fingerprint),
        el("td", { class: "type" }, key.type),
        el("td", { class: "comment" }, key.comment || ""),
        el("td", { class: "added" }, key.addedAt || ""),
        el("td", { class: "actions" },
          el("button", { type: "button", class: "remove danger",
            onclick: action(() => api("DELETE", keysPath(key.fingerprint))) }, "Remove")))));
}

function addEvent(event) {
  const item = el("li", { class: event.ok ? "ok" : "failed", dataset: { seq: String(event.seq) } },
    el("time", {}, event.time),
    `${event.kind} ${event.target}` + (event.actor ? ` by ${event.actor}` : "") + `: ${event.message}`);
  $("#events").prepend(item);
  while ($("#events").children.length > 200) $("#events").lastChild.remove();
}

// The web terminal of set `name`, at `#/terminal/NAME`: attached again to the session this tab
// had open there (kept in sessionStorage), so a reload finds the same screen.
function openTerminal(name) {
  closeTerminal();
  show("terminal");
  clearError();
  $("#terminal-name").textContent = name;
  $("#terminal-state").textContent = "connecting…";
  const key = "gpu-replica-screen:" + name;
  state.terminal = new WebTerminal($("#terminal"), {
    name,
    token: state.token,
    session: sessionStorage.getItem(key),
    on: {
      session: (id) => sessionStorage.setItem(key, id),
      state: (text) => { $("#terminal-state").textContent = text; },
      exit: (code) => {
        sessionStorage.removeItem(key);
        $("#terminal-state").textContent = `exited with ${code}`;
      },
      // The API's own words for why (a set stopped, or another user's), when it has some.
      failed: () => api("GET", `/replicaSet/${encodeURIComponent(name)}`).then((info) => {
        if (info.status !== "running") showError(`${name} is not running: continue or restart it first`);
      }, () => {}),
    },
  });
}

// Detaches from the web terminal; its session keeps running on the server.
function closeTerminal() {
  if (state.terminal) state.terminal.dispose();
  state.terminal = null;
}

// Leaves the web terminal's page (and its address).
function leaveTerminal() {
  closeTerminal();
  if (location.hash.startsWith("#/terminal/")) history.replaceState(null, "", location.pathname + location.search);
}

// The page the address names: a terminal, or the sets.
function route() {
  if (!state.me) return;
  const match = location.hash.match(/^#\/terminal\/(.+)$/);
  if (match) openTerminal(decodeURIComponent(match[1]));
  else if (state.tab === "terminal" || !document.querySelector(".page:not([hidden])")) show("sets");
}

// The live feed: the API's Server-Sent Events, read with fetch so the token goes in a header.
async function startFeed() {
  if (state.feed) state.feed.abort();
  const controller = new AbortController();
  state.feed = controller;
  let lastSeq = null;
  for (;;) {
    try {
      const h = headers(false);
      if (lastSeq !== null) h["Last-Event-ID"] = String(lastSeq);
      const response = await fetch("/api/v1/events?replay=30", { headers: h, signal: controller.signal });
      $("#events-state").textContent = "live";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (kind === "message" && data) {
            const event = JSON.parse(data);
            lastSeq = event.seq;
            addEvent(event);
            refresh();
          }
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    $("#events-state").textContent = "reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

$("#signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#token").value.trim());
});
$("#signout").addEventListener("click", signOut);
for (const button of document.querySelectorAll("nav .tab")) {
  button.addEventListener("click", () => show(button.dataset.tab));
}
$("#history-close").addEventListener("click", () => { $("#history").hidden = true; });
$("#services-close").addEventListener("click", () => { $("#services").hidden = true; });
$("#services-form").addEventListener("submit", action(async () => {
  await openService($("#services-name").textContent, $("#services-port").value);
}));
$("#terminal-back").addEventListener("click", () => show("sets"));
$("#terminal-close").addEventListener("click", () => state.terminal?.close());
window.addEventListener("hashchange", route);
$("#run-form").addEventListener("submit", action(async () => {
  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const binds = list($("#run-binds").value).map((b) => {
    const at = b.lastIndexOf(":");
    return { src: b.slice(0, at), dest: b.slice(at + 1) };
  });
  await api("POST", "/replicaSet", {
    replicaSetName: $("#run-name").value.trim(),
    imageName: $("#run-image").value.trim(),
    gpuCount: Number($("#run-gpus").value),
    containerPorts: list($("#run-ports").value),
    binds,
  });
  $("#run-name").value = "";
}));
$("#volume-form").addEventListener("submit", action(async () => {
  await api("POST", "/volumes", { name: $("#volume-name").value.trim(), size: $("#volume-size").value.trim() });
  $("#volume-name").value = "";
}));
$("#key-form").addEventListener("submit", action(async () => {
  await api("POST", keysPath(), { key: $("#key-text").value.trim() });
  $("#key-text").value = "";
}));
setInterval(() => { if (state.tab === "gpus") refresh(); }, 5000);

// A token kept from earlier in this tab, or a server that needs none: signed in at once.
// Without a token, ask first whether one is needed (never a request known to fail).
async function start() {
  if (state.token) return signIn(state.token, true);
  try {
    const session = await (await fetch("/ui/session")).json();
    if (!session.tokenRequired) return signIn("", true);
  } catch (e) {
    showError("The server did not answer: " + e.message);
  }
}
start();
