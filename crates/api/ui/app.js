// Kappa dashboard: a small single-page app over the platform's JSON API.
// The token lives in this tab's sessionStorage and goes out as `Authorization: Bearer` on every
// API call; nothing is sent anywhere else. Every value is put in the page as text (no innerHTML
// with data), so a function's log or name cannot inject markup.

const TOKEN_KEY = "kappa.token";
const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";

const view = document.getElementById("view");
const nav = document.getElementById("nav");

// Timers and streams of the page on screen, stopped when the page changes.
let pageTimers = [];
let pageAborts = [];

function stopPage() {
  pageTimers.forEach(clearInterval);
  pageAborts.forEach((a) => a.abort());
  pageTimers = [];
  pageAborts = [];
}

// ---- DOM helpers ---------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) {
    if (c !== undefined && c !== null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function render(...nodes) {
  view.replaceChildren(...nodes);
}

function badge(text, kind) {
  return h("span", { class: `badge ${kind || ""}`, "data-testid": "badge" }, text);
}

// ---- formatting ----------------------------------------------------------------------------

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function fmtRate(perSecond) {
  if (!perSecond) return "0/min";
  const perMinute = perSecond * 60;
  if (perMinute < 10) return `${perMinute.toFixed(1)}/min`;
  if (perSecond < 10) return `${Math.round(perMinute)}/min`;
  return `${perSecond.toFixed(1)}/s`;
}

function fmtPct(ratio) {
  if (!ratio) return "0%";
  const pct = ratio * 100;
  return `${pct < 10 ? pct.toFixed(1) : Math.round(pct)}%`;
}

function fmtAgo(ms) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return new Date(ms).toLocaleString();
}

function fmtTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function fnLink(ns, name) {
  return `#/functions/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
}

function qualified(ns, name) {
  return ns === "default" ? name : `${ns}/${name}`;
}

// ---- API -----------------------------------------------------------------------------------

class Unauthorized extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const t = options.token ?? token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  if (options.raw) return response;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error?.message || `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

/// `api`, but a missing optional source (503, 404) is `fallback` instead of an error.
async function optional(path, fallback) {
  try {
    return await api(path);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    return fallback;
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopPage();
  location.hash = "#/signin";
  showSignIn(message);
}

// ---- sign-in -------------------------------------------------------------------------------

function showSignIn(message) {
  nav.hidden = true;
  const input = h("input", {
    type: "password", id: "token", name: "token", autocomplete: "current-password",
    required: true, "data-testid": "token", placeholder: "the platform token",
  });
  const error = h("div", { class: "error", role: "alert", "data-testid": "signin-error" }, message || "");
  const form = h("form", {
    class: "panel", "data-testid": "signin",
    onsubmit: async (ev) => {
      ev.preventDefault();
      const candidate = input.value.trim();
      error.textContent = "";
      try {
        await api("/v1/info", { token: candidate });
        sessionStorage.setItem(TOKEN_KEY, candidate);
        location.hash = "#/functions";
        route();
      } catch (e) {
        error.textContent = e instanceof Unauthorized
          ? "That token was refused."
          : `The API did not answer: ${e.message}`;
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("p", {}, "Paste the platform token: ", h("code", {}, "kappa up"), " keeps it in ",
    h("code", {}, "<data-dir>/token"), ". It stays in this browser tab only."),
  h("label", { for: "token" }, "Token"),
  input,
  h("button", { type: "submit", class: "primary" }, "Sign in"),
  error);
  render(h("div", { class: "signin" }, form));
  input.focus();
}

// ---- status of a function ------------------------------------------------------------------

function functionStatus(fn, pkg, stats) {
  const build = pkg?.status?.buildstatus;
  if (fn.status?.lastError) return ["error", "bad", fn.status.lastError];
  if (build === "failed") return ["build failed", "bad", "the package build failed"];
  if (build === "pending" || build === "running") return ["building", "info", "the package is being built"];
  if (!stats || !stats.requests) return ["idle", "", "no requests in the last hour"];
  if (stats.errorRate >= 0.5) return ["failing", "bad", "most requests fail"];
  if (stats.errors > 0) return ["errors", "warn", "some requests failed"];
  return ["healthy", "ok", "serving"];
}

function packageOf(fn, packages) {
  const ref = fn.spec?.package?.packageref || {};
  return packages.find((p) => p.metadata.name === ref.name && p.metadata.namespace === (ref.namespace || fn.metadata.namespace));
}

// ---- functions list ------------------------------------------------------------------------

async function functionsPage() {
  const updated = h("span", { class: "updated" });
  const body = h("div", { class: "panel" }, h("div", { class: "empty" }, "Loading…"));
  render(
    h("div", { class: "toolbar" }, h("h1", {}, "Functions ", h("span", { class: "sub" }, "last hour")), updated),
    body,
  );
  async function refresh() {
    const [fns, pkgs, stats] = await Promise.all([
      api("/v1/functions?allNamespaces=true"),
      optional("/v1/packages?allNamespaces=true", { items: [] }),
      optional("/v1/stats?allNamespaces=true", null),
    ]);
    const byFn = new Map((stats?.items || []).map((s) => [`${s.namespace}/${s.name}`, s]));
    const rows = fns.items.map((fn) => {
      const ns = fn.metadata.namespace;
      const name = fn.metadata.name;
      const s = byFn.get(`${ns}/${name}`);
      const [status, kind, why] = functionStatus(fn, packageOf(fn, pkgs.items), s);
      return h("tr", { "data-testid": "function-row", "data-function": name },
        h("td", { class: "title", "data-label": "Function" }, h("a", { href: fnLink(ns, name) }, qualified(ns, name))),
        h("td", { "data-label": "Environment" }, fn.spec.environment?.name || "–"),
        h("td", { "data-label": "Status", title: why }, badge(status, kind)),
        h("td", { class: "num", "data-label": "Requests", "data-testid": "requests" }, s ? String(s.requests) : "0"),
        h("td", { class: "num", "data-label": "Rate" }, fmtRate(s?.requestRate)),
        h("td", { class: `num ${s?.errors ? "bad-text" : ""}`, "data-label": "Error rate", "data-testid": "error-rate" }, fmtPct(s?.errorRate)),
        h("td", { class: "num", "data-label": "p50" }, fmtMs(s?.p50Ms)),
        h("td", { class: "num", "data-label": "p99" }, fmtMs(s?.p99Ms)),
        h("td", { class: "num", "data-label": "Cold starts" }, s ? String(s.coldStarts) : "0"),
        h("td", { class: "num", "data-label": "Last call" }, fmtAgo(s?.lastInvocation?.timeMs)),
      );
    });
    const notice = stats === null
      ? h("p", { class: "notice" }, "The request history is unavailable on this API server.")
      : null;
    body.replaceChildren(
      notice || "",
      rows.length === 0
        ? h("div", { class: "empty" }, "No functions yet. Create one with ", h("code", {}, "kappa fn create"), ".")
        : h("table", { class: "stack", "data-testid": "functions" },
          h("thead", {}, h("tr", {},
            h("th", {}, "Function"), h("th", {}, "Environment"), h("th", {}, "Status"),
            h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Rate"),
            h("th", { class: "num" }, "Error rate"), h("th", { class: "num" }, "p50"),
            h("th", { class: "num" }, "p99"), h("th", { class: "num" }, "Cold starts"),
            h("th", { class: "num" }, "Last call"))),
          h("tbody", {}, rows)),
    );
    updated.textContent = `updated ${fmtTime(Date.now())}`;
  }
  await refresh();
  every(refresh);
}

// ---- one function --------------------------------------------------------------------------

function chart(series) {
  const width = 600;
  const height = 120;
  const top = 8;
  const bottom = 18;
  const max = Math.max(1, ...series.map((p) => p.requests));
  const bar = width / series.length;
  const scale = (v) => ((height - top - bottom) * v) / max;
  const bars = series.flatMap((p, i) => {
    const x = i * bar + 1;
    const r = scale(p.requests);
    const e = scale(p.errors);
    return [
      svg("rect", { class: "req", x, y: height - bottom - r, width: Math.max(1, bar - 2), height: r },
        svg("title", {}, `${fmtTime(p.minute * 60000)}: ${p.requests} requests, ${p.errors} errors, p50 ${fmtMs(p.p50Ms)}, p99 ${fmtMs(p.p99Ms)}`)),
      svg("rect", { class: "err", x, y: height - bottom - e, width: Math.max(1, bar - 2), height: e }),
    ];
  });
  return h("div", {},
    svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height - bottom}`, preserveAspectRatio: "none", role: "img", "aria-label": "requests per minute" },
      svg("line", { class: "axis", x1: 0, x2: width, y1: height - bottom - 0.5, y2: height - bottom - 0.5 }),
      bars),
    h("div", { class: "chart-axis" }, h("span", {}, "60 min ago"), h("span", {}, `max ${max}/min`), h("span", {}, "now")),
  );
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function resources(r) {
  if (!r) return "";
  const part = (l) => [l?.cpu && `cpu ${l.cpu}`, l?.memory && `memory ${l.memory}`, l?.pids && `pids ${l.pids}`].filter(Boolean).join(", ");
  return [r.requests && part(r.requests) && `requests: ${part(r.requests)}`, r.limits && part(r.limits) && `limits: ${part(r.limits)}`].filter(Boolean).join("; ");
}

function configPanel(fn, pkg) {
  const s = fn.spec;
  const build = pkg?.status?.buildstatus;
  return h("section", { class: "panel", "data-testid": "config" },
    h("h2", {}, "Configuration"),
    kv([
      ["Environment", s.environment?.name],
      ["Package", pkg ? h("span", {}, `${s.package.packageref.name} `, build && build !== "none" ? badge(build, build === "succeeded" ? "ok" : build === "failed" ? "bad" : "info") : "") : s.package?.packageref?.name],
      ["Entry point", s.package?.functionName || "(default)"],
      ["Executor", s.executorType],
      ["Scale", `${s.minScale ?? 0} – ${s.maxScale}`],
      ["Concurrency", s.concurrency],
      ["Requests per instance", s.requestsPerPod],
      ["Timeout", `${s.functionTimeout} s`],
      ["Idle timeout", `${s.idletimeout} s`],
      ["Secrets", (s.secrets || []).map((x) => x.name).join(", ")],
      ["Config maps", (s.configmaps || []).map((x) => x.name).join(", ")],
      ["Resources", resources(s.resources)],
      ["Generation", fn.metadata.generation],
      ["Last error", fn.status?.lastError],
    ]),
    h("details", {}, h("summary", {}, "Full resource"), h("pre", { class: "json" }, JSON.stringify(fn, null, 2))),
  );
}

function instancesTable(items) {
  if (items === null) return h("div", { class: "empty" }, "The pool manager's instances are unavailable here.");
  if (!items.length) return h("div", { class: "empty" }, "No instances: the next request starts one.");
  const kind = { ready: "ok", specializing: "info", draining: "warn", warm: "" };
  return h("table", { class: "stack", "data-testid": "instances" },
    h("thead", {}, h("tr", {}, h("th", {}, "Instance"), h("th", {}, "State"), h("th", { class: "num" }, "In flight"), h("th", { class: "num" }, "Served"), h("th", {}, "Generation"))),
    h("tbody", {}, items.map((i) => h("tr", {},
      h("td", { class: "title mono", "data-label": "Instance" }, i.id),
      h("td", { "data-label": "State" }, badge(i.state, kind[i.state])),
      h("td", { class: "num", "data-label": "In flight" }, `${i.inFlight}/${i.capacity}`),
      h("td", { class: "num", "data-label": "Served" }, String(i.served)),
      h("td", { "data-label": "Generation" }, i.generation ?? "–"),
    ))));
}

function triggerRows(fnName, ns, http, mq, time) {
  // The function itself, or one of its versions (`fn@3`).
  const named = (n) => n === fnName || (typeof n === "string" && n.startsWith(`${fnName}@`));
  const mine = (t) => t.metadata.namespace === ns && (named(t.spec.functionref?.name) || Object.keys(t.spec.functionref?.functionweights || {}).some(named));
  const rows = [
    ...http.filter(mine).map((t) => ["HTTP", `${(t.spec.methods?.length ? t.spec.methods : ["GET"]).join(", ")} ${t.spec.host || ""}${t.spec.relativeurl || t.spec.prefix || ""}`, t.metadata.name, null]),
    ...mq.filter(mine).map((t) => ["Message queue", `${t.spec.messageQueueType} ${t.spec.topic}`, t.metadata.name, t.status]),
    ...time.filter(mine).map((t) => ["Time", t.spec.cron, t.metadata.name, t.status]),
  ];
  if (!rows.length) return h("div", { class: "empty" }, "No triggers: reachable only with ", h("code", {}, "kappa fn test"), ".");
  return h("table", { class: "stack", "data-testid": "triggers" },
    h("thead", {}, h("tr", {}, h("th", {}, "Trigger"), h("th", {}, "Kind"), h("th", {}, "Route / source"), h("th", {}, "Status"))),
    h("tbody", {}, rows.map(([kind, what, name, status]) => h("tr", {},
      h("td", { class: "title", "data-label": "Trigger" }, name),
      h("td", { "data-label": "Kind" }, kind),
      h("td", { class: "mono", "data-label": "Route / source" }, what),
      h("td", { "data-label": "Status" }, status ? triggerState(status) : badge("routed", "ok")),
    ))));
}

function triggerState(status) {
  const state = status?.state || "pending";
  const kind = { ready: "ok", error: "bad", pending: "info" }[state] || "";
  return h("span", { title: status?.reason || "" }, badge(state, kind));
}

function recentTable(recent) {
  if (!recent.length) return h("div", { class: "empty" }, "No invocations in the last hour.");
  return h("table", { class: "stack", "data-testid": "invocations" },
    h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Status"), h("th", { class: "num" }, "Duration"), h("th", {}, "Invocation id"))),
    h("tbody", {}, recent.map((r) => h("tr", { "data-testid": "invocation" },
      h("td", { class: "title", "data-label": "Time" }, fmtTime(r.timeMs)),
      h("td", { "data-label": "Status" }, badge(String(r.status), r.status >= 500 ? "bad" : r.status >= 400 ? "warn" : "ok")),
      h("td", { class: "num", "data-label": "Duration" }, fmtMs(r.durationUs / 1000)),
      h("td", { class: "mono", "data-label": "Invocation id" }, r.invocationId),
    ))));
}

/// The function's versions (`kappa fn history`), newest first: number, time, code checksum,
/// what changed, which is current, and the routes or canaries pinning one (`fn@N`).
function versionsTable(list) {
  if (list === null) return h("div", { class: "empty" }, "The versions are unavailable.");
  const items = [...(list.items || [])].reverse();
  if (!items.length) return h("div", { class: "empty" }, "No versions recorded yet.");
  const pins = {};
  for (const p of list.pins || []) (pins[p.version] ||= []).push(p);
  const checksum = (v) => (v.spec.deployment || v.spec.source)?.checksum?.sum;
  return h("table", { class: "stack", "data-testid": "versions" },
    h("thead", {}, h("tr", {}, h("th", {}, "Version"), h("th", {}, "Created"), h("th", {}, "Code"), h("th", {}, "Changes"), h("th", {}, "Pinned by"))),
    h("tbody", {}, items.map((v) => {
      const n = v.spec.version;
      const created = Date.parse(v.metadata.creationTimestamp || "");
      const sum = checksum(v);
      return h("tr", { "data-testid": "version", "data-version": String(n) },
        h("td", { class: "title", "data-label": "Version" }, `v${n} `, n === list.current ? badge("current", "ok") : ""),
        h("td", { "data-label": "Created", title: v.metadata.creationTimestamp || "" }, Number.isNaN(created) ? "–" : fmtAgo(created)),
        h("td", { class: "mono", "data-label": "Code", title: sum || "" }, sum ? sum.slice(0, 12) : "–"),
        h("td", { "data-label": "Changes" }, (v.spec.changes || []).join(", ") || "–"),
        h("td", { "data-label": "Pinned by", "data-testid": "version-pins" },
          (pins[n] || []).map((p) => `${p.kind === "HttpTrigger" ? "route" : "canary"} ${p.name}`).join(", ") || "–"),
      );
    })));
}

function logLine(l) {
  const ts = (l.timestamp || "").replace("T", " ").replace(/\.(\d{3})\d*Z$/, ".$1");
  return h("div", { class: `line ${l.stream === "stderr" ? "stderr" : ""}`, "data-testid": "log-line" },
    h("span", { class: "ts" }, ts), " ", h("span", { class: "inst" }, (l.instance || "").slice(-8)), " ", l.message);
}

/// Follows the function's logs (NDJSON, `follow=true`) into `box` until the page changes.
async function followLogs(ns, name, box, state) {
  const abort = new AbortController();
  pageAborts.push(abort);
  const path = `/v1/functions/${encodeURIComponent(name)}/logs?namespace=${encodeURIComponent(ns)}&tail=200&follow=true`;
  let retry = 1000;
  while (!abort.signal.aborted) {
    try {
      const response = await api(path, { raw: true, signal: abort.signal, headers: { Accept: "application/x-ndjson" } });
      if (!response.ok) {
        state.textContent = response.status === 404 ? "no logs yet" : `logs unavailable (${response.status})`;
      } else {
        state.replaceChildren(h("span", { class: "dot live" }), "live");
        retry = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let nl;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const text = buffer.slice(0, nl);
            buffer = buffer.slice(nl + 1);
            if (!text.trim()) continue;
            try {
              const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
              box.querySelector(".empty")?.remove();
              box.append(logLine(JSON.parse(text)));
              while (box.childElementCount > 1000) box.firstElementChild.remove();
              if (atBottom) box.scrollTop = box.scrollHeight;
            } catch {
              // Not a log line: skip it.
            }
          }
        }
        state.replaceChildren(h("span", { class: "dot" }), "reconnecting");
      }
    } catch (e) {
      if (abort.signal.aborted) return;
      if (e instanceof Unauthorized) return signOut("The session ended: sign in again.");
      state.replaceChildren(h("span", { class: "dot" }), "reconnecting");
    }
    await new Promise((r) => setTimeout(r, retry));
    retry = Math.min(retry * 2, 15000);
  }
}

async function functionPage(ns, name) {
  const q = `namespace=${encodeURIComponent(ns)}`;
  // A function that does not exist is a 404 before anything is drawn.
  await api(`/v1/functions/${encodeURIComponent(name)}?${q}`);
  const title = h("h1", {}, qualified(ns, name));
  const cards = h("div", { class: "cards" });
  const chartBox = h("section", { class: "panel" });
  const config = h("div");
  const instances = h("section", { class: "panel" }, h("h2", {}, "Instances"));
  const triggers = h("section", { class: "panel" }, h("h2", {}, "Triggers"));
  const recent = h("section", { class: "panel" }, h("h2", {}, "Recent invocations"));
  const versions = h("section", { class: "panel" }, h("h2", {}, "Versions"));
  const logBox = h("div", { class: "logs", "data-testid": "logs" }, h("div", { class: "empty" }, "Waiting for log lines…"));
  const logState = h("span", { class: "updated", "data-testid": "logs-state" }, "connecting");
  render(
    h("p", {}, h("a", { href: "#/functions" }, "← Functions")),
    title, cards, chartBox,
    h("section", { class: "panel" }, h("div", { class: "logs-head" }, h("h2", {}, "Live logs"), logState), logBox),
    recent,
    h("div", { class: "grid" }, config, h("div", {}, instances, triggers)),
    versions,
  );
  followLogs(ns, name, logBox, logState);

  async function refresh() {
    const [current, stats, inst, pkgs, http, mq, time, history] = await Promise.all([
      api(`/v1/functions/${encodeURIComponent(name)}?${q}`),
      optional(`/v1/functions/${encodeURIComponent(name)}/stats?${q}`, null),
      optional(`/v1/functions/${encodeURIComponent(name)}/instances?${q}`, null),
      optional(`/v1/packages?${q}`, { items: [] }),
      optional(`/v1/httptriggers?${q}`, { items: [] }),
      optional(`/v1/messagequeuetriggers?${q}`, { items: [] }),
      optional(`/v1/timetriggers?${q}`, { items: [] }),
      optional(`/v1/functions/${encodeURIComponent(name)}/versions?${q}`, null),
    ]);
    const s = stats?.summary;
    const pkg = packageOf(current, pkgs.items);
    const [status, kind, why] = functionStatus(current, pkg, s);
    title.replaceChildren(qualified(ns, name), h("span", { title: why }, badge(status, kind)));
    const card = (label, value, testid, cls) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: `value ${cls || ""}`, "data-testid": testid }, value));
    cards.replaceChildren(
      card("Requests (1 h)", String(s?.requests ?? 0), "stat-requests"),
      card("Rate", fmtRate(s?.requestRate), "stat-rate"),
      card("Error rate", fmtPct(s?.errorRate), "stat-error-rate", s?.errors ? "bad-text" : ""),
      card("p50", fmtMs(s?.p50Ms), "stat-p50"),
      card("p99", fmtMs(s?.p99Ms), "stat-p99"),
      card("Cold starts", String(s?.coldStarts ?? 0), "stat-cold"),
    );
    chartBox.replaceChildren(
      h("div", { class: "logs-head" }, h("h2", {}, "Requests per minute"),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "req-key" }), "requests"), h("span", {}, h("i", { class: "err-key" }), "errors"))),
      stats ? chart(stats.series) : h("div", { class: "empty" }, "The request history is unavailable on this API server."),
    );
    config.replaceChildren(configPanel(current, pkg));
    instances.replaceChildren(h("h2", {}, "Instances"), instancesTable(inst ? inst.items : null));
    triggers.replaceChildren(h("h2", {}, "Triggers"), triggerRows(name, ns, http.items, mq.items, time.items));
    recent.replaceChildren(h("h2", {}, "Recent invocations"), recentTable(stats?.recent || []));
    versions.replaceChildren(h("h2", {}, "Versions"), versionsTable(history));
  }
  await refresh();
  every(refresh);
}

// ---- environments --------------------------------------------------------------------------

async function environmentsPage() {
  const body = h("div", {}, h("div", { class: "panel empty" }, "Loading…"));
  const updated = h("span", { class: "updated" });
  render(h("div", { class: "toolbar" }, h("h1", {}, "Environments"), updated), body);
  async function refresh() {
    const [envs, fns] = await Promise.all([
      api("/v1/environments?allNamespaces=true"),
      api("/v1/functions?allNamespaces=true"),
    ]);
    const pools = await Promise.all(envs.items.map((e) =>
      optional(`/v1/environments/${encodeURIComponent(e.metadata.name)}/instances?namespace=${encodeURIComponent(e.metadata.namespace)}`, null)));
    if (!envs.items.length) {
      body.replaceChildren(h("div", { class: "panel empty" }, "No environments yet. Create one with ", h("code", {}, "kappa env create"), "."));
      return;
    }
    body.replaceChildren(h("div", { class: "grid" }, envs.items.map((e, i) => {
      const ns = e.metadata.namespace;
      const items = pools[i]?.items;
      const count = (st) => (items || []).filter((x) => x.state === st).length;
      const users = fns.items.filter((f) => f.metadata.namespace === ns && f.spec.environment?.name === e.metadata.name);
      return h("section", { class: "panel", "data-testid": "environment", "data-environment": e.metadata.name },
        h("h2", {}, qualified(ns, e.metadata.name)),
        h("div", { class: "cards" },
          h("div", { class: "card" }, h("div", { class: "label" }, "Warm pool"), h("div", { class: "value", "data-testid": "pool-warm" }, items ? `${count("warm")}/${e.spec.poolsize}` : "–")),
          h("div", { class: "card" }, h("div", { class: "label" }, "Specialized"), h("div", { class: "value" }, items ? String(count("ready") + count("specializing") + count("draining")) : "–")),
        ),
        kv([
          ["Runtime", h("code", {}, e.spec.runtime?.image || "")],
          ["Command", e.spec.runtime?.command ? h("code", {}, e.spec.runtime.command) : ""],
          ["Builder", e.spec.builder?.command ? h("code", {}, e.spec.builder.command) : (e.spec.builder?.image || "")],
          ["Pool size", e.spec.poolsize],
          ["Resources", resources(e.spec.resources)],
          ["Functions", users.length ? h("span", {}, users.map((f, j) => [j ? ", " : "", h("a", { href: fnLink(ns, f.metadata.name) }, f.metadata.name)])) : "none"],
        ]),
        items && items.length ? h("details", {}, h("summary", {}, `${items.length} instances`), instancesTable(items)) : "",
      );
    })));
    updated.textContent = `updated ${fmtTime(Date.now())}`;
  }
  await refresh();
  every(refresh);
}

// ---- triggers ------------------------------------------------------------------------------

async function triggersPage() {
  const body = h("div", {}, h("div", { class: "panel empty" }, "Loading…"));
  const updated = h("span", { class: "updated" });
  render(h("div", { class: "toolbar" }, h("h1", {}, "Triggers"), updated), body);
  async function refresh() {
    const [http, mq, time] = await Promise.all([
      api("/v1/httptriggers?allNamespaces=true"),
      api("/v1/messagequeuetriggers?allNamespaces=true"),
      api("/v1/timetriggers?allNamespaces=true"),
    ]);
    const fnCell = (t) => {
      const ref = t.spec.functionref || {};
      const names = ref.type === "function-weights" ? Object.keys(ref.functionweights || {}) : [ref.name];
      return h("span", {}, names.map((n, i) => [i ? ", " : "", h("a", { href: fnLink(t.metadata.namespace, n) }, n)]));
    };
    const table = (testid, head, rows, empty) => rows.length
      ? h("table", { class: "stack", "data-testid": testid }, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows))
      : h("div", { class: "empty" }, empty);
    const since = (s) => (s?.lastTransitionTime ? fmtAgo(Date.parse(s.lastTransitionTime)) : "–");
    body.replaceChildren(
      h("section", { class: "panel" }, h("h2", {}, "Message queue"),
        table("mq-triggers", ["Trigger", "Function", "Broker", "Topic", "Status", "Since", "Reason"], mq.items.map((t) => h("tr", { "data-testid": "mq-trigger" },
          h("td", { class: "title", "data-label": "Trigger" }, qualified(t.metadata.namespace, t.metadata.name)),
          h("td", { "data-label": "Function" }, fnCell(t)),
          h("td", { "data-label": "Broker" }, t.spec.messageQueueType),
          h("td", { class: "mono", "data-label": "Topic" }, [t.spec.topic, t.spec.respTopic ? ` → ${t.spec.respTopic}` : "", t.spec.errorTopic ? ` (errors → ${t.spec.errorTopic})` : ""].join("")),
          h("td", { "data-label": "Status" }, triggerState(t.status)),
          h("td", { "data-label": "Since" }, since(t.status)),
          h("td", { class: t.status?.state === "error" ? "bad-text" : "muted", "data-label": "Reason" }, t.status?.reason || "–"),
        )), "No message-queue triggers.")),
      h("section", { class: "panel" }, h("h2", {}, "Time"),
        table("time-triggers", ["Trigger", "Function", "Schedule", "Status", "Last fired", "Reason"], time.items.map((t) => h("tr", { "data-testid": "time-trigger" },
          h("td", { class: "title", "data-label": "Trigger" }, qualified(t.metadata.namespace, t.metadata.name)),
          h("td", { "data-label": "Function" }, fnCell(t)),
          h("td", { class: "mono", "data-label": "Schedule" }, t.spec.cron),
          h("td", { "data-label": "Status" }, triggerState(t.status)),
          h("td", { "data-label": "Last fired" }, t.status?.lastFiredTime ? fmtAgo(Date.parse(t.status.lastFiredTime)) : "never"),
          h("td", { class: t.status?.state === "error" ? "bad-text" : "muted", "data-label": "Reason" }, t.status?.reason || "–"),
        )), "No time triggers.")),
      h("section", { class: "panel" }, h("h2", {}, "HTTP"),
        table("http-triggers", ["Trigger", "Function", "Methods", "Route"], http.items.map((t) => h("tr", {},
          h("td", { class: "title", "data-label": "Trigger" }, qualified(t.metadata.namespace, t.metadata.name)),
          h("td", { "data-label": "Function" }, fnCell(t)),
          h("td", { "data-label": "Methods" }, (t.spec.methods?.length ? t.spec.methods : ["GET"]).join(", ")),
          h("td", { class: "mono", "data-label": "Route" }, `${t.spec.host || ""}${t.spec.relativeurl || `${t.spec.prefix}*`}`),
        )), "No HTTP triggers.")),
    );
    updated.textContent = `updated ${fmtTime(Date.now())}`;
  }
  await refresh();
  every(refresh);
}

// ---- routing -------------------------------------------------------------------------------

/// Runs `refresh` every few seconds while the page is on screen (errors shown, not thrown).
function every(refresh) {
  pageTimers.push(setInterval(() => refresh().catch(failed), REFRESH_MS));
}

function failed(e) {
  if (e instanceof Unauthorized) {
    signOut("The token was refused: sign in again.");
    return;
  }
  const existing = document.getElementById("page-error");
  const note = h("p", { class: "notice", id: "page-error", role: "alert" }, `Could not load: ${e.message}`);
  if (existing) existing.replaceWith(note);
  else view.prepend(note);
}

async function route() {
  stopPage();
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map(decodeURIComponent);
  if (!token()) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  const page = parts[0] || "functions";
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.nav === page);
  try {
    if (page === "functions" && parts.length >= 3) await functionPage(parts[1], parts[2]);
    else if (page === "environments") await environmentsPage();
    else if (page === "triggers") await triggersPage();
    else if (page === "signin") { location.hash = "#/functions"; return; }
    else await functionsPage();
  } catch (e) {
    failed(e);
  }
}

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
