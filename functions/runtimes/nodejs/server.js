#!/usr/bin/env node
// Kappa Node.js runtime server (Fission environment protocol v2), standard library only.
//
//     node server.js [--host HOST] [--port PORT]
//
// One process serves one function. It starts generic (only /healthz answers), is specialized
// once with POST /v2/specialize {"filepath", "functionName", "env"?}, and from then on every
// other method and path calls the function. The user-facing contract is docs/runtimes/nodejs.md.
//
// Design notes:
// - Start-up loads only node:http; path, fs, url and stream are required on first use, so a
//   generic instance is healthy about as fast as a bare `node -e 0` allows.
// - Sockets have TCP_NODELAY (`noDelay`), and a response with a known body is sent by one
//   `res.end(body)` after the head was set implicitly: Node writes head and body together.
// - KAPPA_CONCURRENCY bounds the calls into the function at once (FIFO); /healthz and the
//   protocol endpoints never wait for it.
// - Time limits belong to the router: the server has no request timeout, and keep-alive
//   connections stay open for KAPPA_KEEPALIVE_TIMEOUT seconds (default 900).
'use strict';

const http = require('node:http');

const SERVER_FILE = __filename;
const V1_PATH = '/userfunc/user';
const MAX_HEAD = 65536;
const SPECIALIZE_MAX_BODY = 1 << 20;

// ------------------------------------------------------------------------------------------
// Configuration

function envInt(name, dflt, minimum) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return dflt;
  if (!/^-?\d+$/.test(raw.trim())) {
    process.stderr.write(`kappa: ignoring ${name}=${JSON.stringify(raw)}: not an integer\n`);
    return dflt;
  }
  const val = Number.parseInt(raw, 10);
  if (minimum !== undefined && val < minimum) {
    process.stderr.write(`kappa: ignoring ${name}=${JSON.stringify(raw)}: must be >= ${minimum}\n`);
    return dflt;
  }
  return val;
}

const CONCURRENCY = envInt('KAPPA_CONCURRENCY', 1, 1);
const GRACE = envInt('KAPPA_GRACE_PERIOD', 30, 0);
const MAX_BODY = envInt('KAPPA_MAX_BODY_BYTES', 0, 0); // 0 = no limit
const IDLE_TIMEOUT = envInt('KAPPA_KEEPALIVE_TIMEOUT', 900, 0); // 0 = never

// ------------------------------------------------------------------------------------------
// State

let fn = null; // the handler once specialized
let callbackStyle = false; // (context, callback) handler
let specializing = false;
let stopping = false;
let inFlight = 0; // requests being handled (any path)

/** FIFO counting semaphore bounding the calls into the function. */
class Semaphore {
  constructor(n) {
    this.n = n;
    this.waiters = [];
  }
  acquire() {
    if (this.n > 0) {
      this.n -= 1;
      return null;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  release() {
    const next = this.waiters.shift();
    if (next) next();
    else this.n += 1;
  }
}
const sem = new Semaphore(CONCURRENCY);

// ------------------------------------------------------------------------------------------
// Responses

const JSON_TYPE = 'application/json';
const TEXT_TYPE = 'text/plain; charset=utf-8';
const BIN_TYPE = 'application/octet-stream';

function log(text) {
  process.stderr.write(text.endsWith('\n') ? text : text + '\n');
}

function errorBody(code, message, traceback, invocationId) {
  const err = { code, message };
  if (traceback) err.traceback = traceback;
  if (invocationId) err.invocation_id = invocationId;
  return JSON.stringify({ error: err }) + '\n';
}

/** Sends a complete response with one write. */
function send(res, status, type, body) {
  const data = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  res.statusCode = status;
  if (type !== null && !res.hasHeader('content-type')) res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', data.length);
  if (stopping) res.setHeader('Connection', 'close');
  res.end(data);
}

function sendError(res, status, code, message, traceback, invocationId) {
  send(res, status, JSON_TYPE, errorBody(code, message, traceback, invocationId));
}

function reasonCode(status) {
  const reason = http.STATUS_CODES[status] || `error ${status}`;
  return reason.toLowerCase().replace(/'/g, '').replace(/[^a-z0-9]+/g, '_').replace(/^_|_$/g, '');
}

/** The stack without the server's own and Node's internal frames. */
function cleanStack(e) {
  if (!(e instanceof Error) || typeof e.stack !== 'string') return '';
  return e.stack
    .split('\n')
    .filter((line) => !(/^\s+at /.test(line) &&
      (line.includes(SERVER_FILE) || line.includes('node:internal') || line.includes('(node:'))))
    .join('\n') + '\n';
}

/** (one-line message, traceback) of a thrown value. */
function describe(e) {
  if (!(e instanceof Error)) {
    let shown;
    try {
      shown = typeof e === 'string' ? e : JSON.stringify(e);
    } catch (_) {
      shown = String(e);
    }
    return [`uncaught value: ${shown}`, ''];
  }
  // The first line of the message (a MODULE_NOT_FOUND message goes on with its require
  // stack, which the traceback carries).
  let msg = `${e.name || 'Error'}: ${String(e.message).split('\n', 1)[0]}`;
  if (e instanceof SyntaxError && typeof e.stack === 'string') {
    // Node puts the location first: "/path/file.js:3\n<source line>\n   ^\n\nSyntaxError: ...".
    const first = e.stack.split('\n', 1)[0];
    if (/:\d+$/.test(first) && !first.startsWith('SyntaxError')) msg += ` (${first})`;
  }
  if (e.code && typeof e.code === 'string' && !msg.includes(e.code)) msg += ` [${e.code}]`;
  return [msg.split('\n').join(' '), cleanStack(e)];
}

// ------------------------------------------------------------------------------------------
// Loading the function

class LoadError extends Error {}

let pathMod = null;
let fsMod = null;
function lazy() {
  if (pathMod === null) {
    pathMod = require('node:path');
    fsMod = require('node:fs');
  }
}

function isFile(p) {
  try {
    return fsMod.statSync(p).isFile();
  } catch (_) {
    return false;
  }
}

function isDir(p) {
  try {
    return fsMod.statSync(p).isDirectory();
  } catch (_) {
    return false;
  }
}

const EXTS = ['.js', '.mjs', '.cjs'];

/** The main file of a package directory: package.json `main`, index.js, or its only .js file. */
function packageMain(dir) {
  const pkgFile = pathMod.join(dir, 'package.json');
  if (isFile(pkgFile)) {
    let pkg;
    try {
      pkg = JSON.parse(fsMod.readFileSync(pkgFile, 'utf8'));
    } catch (e) {
      throw new LoadError(`${pkgFile}: invalid JSON: ${e.message}`);
    }
    if (pkg && typeof pkg.main === 'string' && pkg.main.trim() !== '') {
      const main = resolveFile(pathMod.resolve(dir, pkg.main), false);
      if (main === null) {
        throw new LoadError(`${pkgFile}: "main" names ${JSON.stringify(pkg.main)}, which does not exist`);
      }
      return main;
    }
  }
  for (const ext of EXTS) {
    const index = pathMod.join(dir, 'index' + ext);
    if (isFile(index)) return index;
  }
  const scripts = fsMod.readdirSync(dir).filter((n) => EXTS.includes(pathMod.extname(n)) &&
    isFile(pathMod.join(dir, n)));
  if (scripts.length === 1) return pathMod.join(dir, scripts[0]);
  throw new LoadError(`no entrypoint given and ${dir} has no package.json "main", no index.js and ` +
    (scripts.length === 0 ? 'no .js file' : `${scripts.length} .js files (${scripts.sort().join(', ')})`) +
    ': give the entrypoint as file.export');
}

/** `base` as a file: itself, with a script extension, or a directory's main; null if absent. */
function resolveFile(base, dirMain = true) {
  if (isFile(base)) return base;
  for (const ext of EXTS) {
    if (isFile(base + ext)) return base + ext;
  }
  if (dirMain && isDir(base)) return packageMain(base);
  if (!dirMain && isDir(base)) {
    for (const ext of EXTS) {
      const index = pathMod.join(base, 'index' + ext);
      if (isFile(index)) return index;
    }
  }
  return null;
}

/** Whether `file` is an ES module: .mjs, or .js under a package.json with "type": "module". */
function isEsm(file) {
  if (file.endsWith('.mjs')) return true;
  if (file.endsWith('.cjs')) return false;
  let dir = pathMod.dirname(file);
  for (;;) {
    const pkgFile = pathMod.join(dir, 'package.json');
    if (isFile(pkgFile)) {
      try {
        return JSON.parse(fsMod.readFileSync(pkgFile, 'utf8')).type === 'module';
      } catch (_) {
        return false;
      }
    }
    const parent = pathMod.dirname(dir);
    if (parent === dir) return false;
    dir = parent;
  }
}

/** The module's namespace: `{default: module.exports, ...exports}` for CommonJS. */
async function loadModule(file) {
  if (!isEsm(file)) {
    try {
      const exp = require(file);
      const ns = { default: exp };
      if (exp !== null && (typeof exp === 'object' || typeof exp === 'function')) {
        for (const k of Object.keys(exp)) if (k !== 'default') ns[k] = exp[k];
        if (typeof exp.default === 'function' && typeof exp !== 'function') ns.default = exp.default;
      }
      return ns;
    } catch (e) {
      if (!e || e.code !== 'ERR_REQUIRE_ESM') throw e;
    }
  }
  const { pathToFileURL } = require('node:url');
  return import(pathToFileURL(file).href);
}

function exportNames(ns) {
  return Object.keys(ns).filter((k) => typeof ns[k] === 'function').sort();
}

function pick(ns, exportName, file, entry) {
  const names = exportNames(ns);
  const listed = names.length ? `its function exports: ${names.join(', ')}` : 'it exports no function';
  if (exportName === null) {
    if (typeof ns.default === 'function') return ns.default;
    throw new LoadError(`entrypoint ${JSON.stringify(entry)}: ${file} has no function as its default ` +
      `export (module.exports); ${listed}; name one as ${pathMod.basename(file).replace(/\.[cm]?js$/, '')}.<export>`);
  }
  let value = ns[exportName];
  if (value === undefined && ns.default !== null && typeof ns.default === 'object') {
    value = ns.default[exportName];
  }
  if (typeof value === 'function') return value;
  if (value === undefined) {
    throw new LoadError(`entrypoint ${JSON.stringify(entry)}: ${file} has no export ` +
      `${JSON.stringify(exportName)}; ${listed}`);
  }
  throw new LoadError(`entrypoint ${JSON.stringify(entry)}: export ${JSON.stringify(exportName)} of ` +
    `${file} is a ${typeof value}, not a function`);
}

/** Loads the handler named by `entry` from `filepath` (a directory or a single file). */
async function load(filepath, entry) {
  lazy();
  let st;
  try {
    st = fsMod.statSync(filepath);
  } catch (e) {
    throw new LoadError(`code path ${filepath} does not exist (${e.code || e.message})`);
  }
  if (st.isFile()) {
    // A single file: the part before the first dot names the file itself and does not matter.
    const base = pathMod.basename(filepath);
    const stem = base.replace(/\.[cm]?js$/, '');
    const ns = await loadModule(filepath);
    if (entry === '' || entry === base || entry === stem) return [pick(ns, null, filepath, entry), filepath];
    const dot = entry.indexOf('.');
    if (dot < 0) {
      // A word that is not the file's name: an export when there is one, else the default.
      if (typeof ns[entry] === 'function') return [ns[entry], filepath];
      return [pick(ns, null, filepath, entry), filepath];
    }
    return [pick(ns, entry.slice(dot + 1), filepath, entry), filepath];
  }
  if (!st.isDirectory()) throw new LoadError(`code path ${filepath} is neither a file nor a directory`);
  const root = pathMod.resolve(filepath);
  const inside = (p) => p === root || p.startsWith(root + pathMod.sep);
  if (entry === '') {
    const file = packageMain(root);
    return [pick(await loadModule(file), null, file, entry), file];
  }
  // `file.export`; the file may itself contain dots (`handlers.v2.main`) or be given with its
  // extension (`hello.js`), so try the split points from the last dot towards the first.
  const candidates = [];
  for (let i = entry.length; i > 0; i = entry.lastIndexOf('.', i - 1)) {
    const modPart = entry.slice(0, i);
    const exportPart = i < entry.length ? entry.slice(i + 1) : null;
    candidates.push([modPart, exportPart]);
    if (i === 0) break;
  }
  for (const [modPart, exportPart] of candidates) {
    if (modPart === '') continue;
    const base = pathMod.resolve(root, modPart);
    if (!inside(base)) {
      throw new LoadError(`entrypoint ${JSON.stringify(entry)} names a file outside the package`);
    }
    const file = resolveFile(base);
    if (file === null) continue;
    const ns = await loadModule(file);
    if (exportPart === null) return [pick(ns, null, file, entry), file];
    return [pick(ns, exportPart, file, entry), file];
  }
  let listing = [];
  try {
    listing = fsMod.readdirSync(root).sort().slice(0, 20);
  } catch (_) {
    // the error below still names the entrypoint
  }
  throw new LoadError(`entrypoint ${JSON.stringify(entry)}: no file ${JSON.stringify(entry.split('.')[0])} ` +
    `(.js, .mjs, .cjs or a directory) in ${root}; it holds: ${listing.join(', ') || 'nothing'}`);
}

async function specialize(body, v1) {
  if (fn !== null || specializing) {
    return [400, errorBody('already_specialized', 'not a generic container: already specialized')];
  }
  let filepath;
  let entry = '';
  let env = null;
  if (v1) {
    filepath = V1_PATH;
  } else {
    let payload;
    try {
      payload = JSON.parse(body.toString('utf8'));
    } catch (e) {
      return [400, errorBody('bad_request', `invalid specialize request: ${e.message}`)];
    }
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      return [400, errorBody('bad_request', 'invalid specialize request: expected a JSON object')];
    }
    filepath = payload.filepath;
    entry = payload.functionName == null ? '' : payload.functionName;
    env = payload.env == null ? null : payload.env;
    if (typeof filepath !== 'string' || filepath === '') {
      return [400, errorBody('bad_request', "invalid specialize request: 'filepath' must be a non-empty string")];
    }
    if (typeof entry !== 'string') {
      return [400, errorBody('bad_request', "invalid specialize request: 'functionName' must be a string")];
    }
    if (env !== null) {
      const ok = typeof env === 'object' && !Array.isArray(env) && Object.entries(env).every(
        ([k, v]) => k !== '' && !k.includes('=') && ['string', 'number', 'boolean'].includes(typeof v));
      if (!ok) return [400, errorBody('bad_request', "invalid specialize request: 'env' must map names to strings")];
    }
  }
  entry = entry.trim();
  specializing = true;
  const t0 = process.hrtime.bigint();
  try {
    if (env) for (const [k, v] of Object.entries(env)) process.env[k] = String(v);
    const [handler, file] = await load(filepath, entry);
    fn = handler;
    callbackStyle = handler.length >= 2;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    log(`kappa: specialized ${file} (entrypoint ${JSON.stringify(entry)}, ` +
      `${callbackStyle ? 'callback' : 'async'} handler) in ${ms.toFixed(1)} ms`);
    return [202, '{"status":"ok"}\n'];
  } catch (e) {
    const [msg, tb] = e instanceof LoadError ? [e.message, ''] : describe(e);
    log(`kappa: specialize failed (${filepath}, entrypoint ${JSON.stringify(entry)}): ${msg}\n${tb}`);
    return [500, errorBody('specialize_failed', msg, tb)];
  } finally {
    specializing = false;
  }
}

// ------------------------------------------------------------------------------------------
// Invocation

const PARAM_PREFIX = 'x-kappa-params-';

function parseQuery(qs) {
  const out = {};
  if (!qs) return out;
  for (const part of qs.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const k = decode(eq < 0 ? part : part.slice(0, eq));
    const v = eq < 0 ? '' : decode(part.slice(eq + 1));
    if (Object.prototype.hasOwnProperty.call(out, k)) {
      out[k] = Array.isArray(out[k]) ? [...out[k], v] : [out[k], v];
    } else {
      out[k] = v;
    }
  }
  return out;
}

function decode(s) {
  const plus = s.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(plus);
  } catch (_) {
    return plus;
  }
}

function isJsonType(ct) {
  const main = (ct || '').split(';', 1)[0].trim().toLowerCase();
  return main === 'application/json' || main.endsWith('+json');
}

/** `tp` when it is a version-00 W3C traceparent with non-zero ids, else undefined. */
function validTraceparent(tp) {
  if (typeof tp !== 'string') return undefined;
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})/i.exec(tp);
  if (!m || /^0+$/.test(m[1]) || /^0+$/.test(m[2])) return undefined;
  return m[0].toLowerCase();
}

/** " (invocation ID, trace TRACEID)" for log lines. */
function traceNote(req) {
  const parts = [];
  const inv = req.headers['x-kappa-invocation-id'];
  if (inv) parts.push(`invocation ${inv}`);
  const tp = validTraceparent(req.headers.traceparent);
  if (tp) parts.push(`trace ${tp.slice(3, 35)}`);
  return parts.length ? ` (${parts.join(', ')})` : '';
}

/** The `context.request` object handed to the function. */
function makeRequest(req, body) {
  const url = req.url;
  const q = url.indexOf('?');
  const params = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (k.startsWith(PARAM_PREFIX)) params[k.slice(PARAM_PREFIX.length)] = v;
  }
  let json;
  let jsonParsed = false;
  let text;
  return {
    method: req.method,
    url,
    path: q < 0 ? url : url.slice(0, q),
    query: parseQuery(q < 0 ? '' : url.slice(q + 1)),
    headers: req.headers,
    body,
    params,
    functionName: req.headers['x-kappa-function-name'],
    invocationId: req.headers['x-kappa-invocation-id'],
    /** The W3C trace context of this invocation (`traceparent`), or undefined. */
    traceparent: validTraceparent(req.headers.traceparent),
    get traceId() {
      return this.traceparent ? this.traceparent.slice(3, 35) : undefined;
    },
    /**
     * A `traceparent` for a span of the function's own, child of the invocation's: the same
     * trace id and flags, a new span id; undefined without a trace context.
     */
    childTraceparent() {
      const tp = this.traceparent;
      if (!tp) return undefined;
      const { randomBytes } = require('node:crypto');
      return `00-${tp.slice(3, 35)}-${randomBytes(8).toString('hex')}-${tp.slice(53, 55)}`;
    },
    get(name) {
      return req.headers[String(name).toLowerCase()];
    },
    get text() {
      if (text === undefined) text = body.toString('utf8');
      return text;
    },
    get json() {
      if (!jsonParsed) {
        jsonParsed = true;
        if (isJsonType(req.headers['content-type']) && body.length > 0) {
          try {
            json = JSON.parse(body.toString('utf8'));
          } catch (e) {
            const err = new Error(`the request body is not valid JSON: ${e.message}`);
            err.status = 400;
            jsonParsed = false;
            throw err;
          }
        }
      }
      return json;
    },
  };
}

function isStream(body) {
  return body !== null && typeof body === 'object' &&
    (typeof body.pipe === 'function' || typeof body.getReader === 'function');
}

const RESPONSE_KEYS = new Set(['status', 'statusCode', 'body', 'headers']);

/** A handler's result -> {status, body, headers}. */
function normalizeResult(rv) {
  if (rv !== null && typeof rv === 'object' && !Buffer.isBuffer(rv) && !Array.isArray(rv) &&
      !isStream(rv) && !(rv instanceof Uint8Array)) {
    const keys = Object.keys(rv);
    if (keys.length > 0 && keys.every((k) => RESPONSE_KEYS.has(k))) {
      return { status: rv.status ?? rv.statusCode, body: rv.body, headers: rv.headers };
    }
  }
  return { status: undefined, body: rv, headers: undefined };
}

/** A handler's response -> the HTTP response. Throws (before anything is sent) on bad values. */
function respond(res, out) {
  let status = out.status === undefined || out.status === null ? 200 : out.status;
  if (typeof status === 'string' && /^\d+$/.test(status)) status = Number(status);
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    throw new TypeError(`the response status must be an integer between 100 and 999, got ${JSON.stringify(status)}`);
  }
  if (out.headers !== undefined && out.headers !== null) {
    if (typeof out.headers !== 'object') throw new TypeError('the response headers must be an object');
    const entries = out.headers instanceof Map ? [...out.headers] : Object.entries(out.headers);
    for (const [name, value] of entries) {
      if (value === undefined || value === null) continue;
      const lname = String(name).toLowerCase();
      if (lname === 'content-length' || lname === 'transfer-encoding' || lname === 'connection') continue;
      res.setHeader(name, Array.isArray(value) ? value.map(String) : String(value));
    }
  }
  const body = out.body;
  res.statusCode = status;
  if (isStream(body)) return sendStream(res, body);
  if (body === undefined || body === null) {
    res.setHeader('Content-Length', 0);
    if (stopping) res.setHeader('Connection', 'close');
    res.end();
    return null;
  }
  if (typeof body === 'string') return send(res, status, TEXT_TYPE, body);
  if (Buffer.isBuffer(body)) return send(res, status, BIN_TYPE, body);
  if (body instanceof Uint8Array || body instanceof ArrayBuffer) {
    return send(res, status, BIN_TYPE, Buffer.from(body));
  }
  return send(res, status, JSON_TYPE, JSON.stringify(body) + '\n');
}

/** Pipes a Readable (or web ReadableStream) with chunked encoding; resolves when done. */
function sendStream(res, body) {
  const stream = require('node:stream');
  const source = typeof body.getReader === 'function' ? stream.Readable.fromWeb(body) : body;
  if (!res.hasHeader('content-type')) res.setHeader('Content-Type', BIN_TYPE);
  if (stopping) res.setHeader('Connection', 'close');
  return new Promise((resolve, reject) => {
    stream.pipeline(source, res, (err) => {
      if (!err) return resolve();
      if (!res.headersSent) return reject(err); // nothing sent yet: a normal 500
      // Mid-stream: the status is gone; end without the last chunk so the client sees a
      // truncated response, not a complete one.
      const [msg, tb] = describe(err);
      log(`kappa: function error while streaming${traceNote(res.req)}: ${msg}\n${tb}`);
      res.destroy();
      resolve();
    });
  });
}

function callHandler(context) {
  if (!callbackStyle) return Promise.resolve().then(() => fn(context));
  return new Promise((resolve, reject) => {
    let done = false;
    const callback = (status, body, headers) => {
      if (done) return;
      done = true;
      resolve({ __kappaCallback: true, status, body, headers });
    };
    let rv;
    try {
      rv = fn(context, callback);
    } catch (e) {
      done = true;
      reject(e);
      return;
    }
    if (rv && typeof rv.then === 'function') {
      rv.then((value) => {
        if (!done && value !== undefined) {
          done = true;
          resolve(value);
        }
      }, (e) => {
        if (!done) {
          done = true;
          reject(e);
        }
      });
    }
  });
}

async function invoke(req, res, body) {
  const inv = req.headers['x-kappa-invocation-id'];
  const context = { request: makeRequest(req, body) };
  const waited = sem.acquire();
  if (waited !== null) await waited;
  try {
    const rv = await callHandler(context);
    const out = rv && rv.__kappaCallback ? rv : normalizeResult(rv);
    await respond(res, out);
  } catch (e) {
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    const status = e && (e.status ?? e.statusCode);
    if (Number.isInteger(status) && status >= 400 && status < 500) {
      sendError(res, status, reasonCode(status), e.message || String(e), undefined, inv);
      return;
    }
    const [msg, tb] = describe(e);
    log(`kappa: function error${traceNote(req)}: ${msg}\n${tb}`);
    sendError(res, 500, 'function_error', msg, tb, inv);
  } finally {
    sem.release();
  }
}

// ------------------------------------------------------------------------------------------
// WebSockets (RFC 6455, standard library only)
//
// A WebSocket upgrade request calls the function as Fission's Node.js environment does:
// `module.exports = async (ws, clients) => { ws.on('message', (data) => ws.send(data)); }`.
// `ws` is a small subset of the `ws` package's WebSocket: send(data), close(code, reason),
// ping(data), terminate(), readyState (and the OPEN/CLOSED... constants), `request` (the
// handshake request, as `context.request`), events 'message' (data, isBinary; text frames as
// strings, binary frames as Buffers), 'close' (code, reason), 'ping', 'pong', 'error'.
// `clients` is the Set of this instance's open sockets. The connection holds one of the
// KAPPA_CONCURRENCY slots until it closes.

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const WS_MAX_MESSAGE = MAX_BODY || 16 * 1024 * 1024;
const wsClients = new Set();
let WebSocketConnection = null;

function wsClass() {
  if (WebSocketConnection !== null) return WebSocketConnection;
  const { EventEmitter } = require('node:events');
  const STATES = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 };
  class Conn extends EventEmitter {
    constructor(socket, request) {
      super();
      this.socket = socket;
      this.request = request;
      this.readyState = STATES.OPEN;
      this.buf = Buffer.alloc(0);
      this.fragments = null; // [opcode, chunks, size] of a fragmented message
      this.closeSent = false;
      socket.on('data', (chunk) => this.onData(chunk));
      socket.on('end', () => this.finish(1006, ''));
      socket.on('close', () => this.finish(1006, ''));
      socket.on('error', (e) => {
        if (this.listenerCount('error') > 0) this.emit('error', e);
      });
    }

    frame(opcode, payload) {
      const len = payload.length;
      let head;
      if (len < 126) {
        head = Buffer.from([0x80 | opcode, len]);
      } else if (len < 65536) {
        head = Buffer.alloc(4);
        head[0] = 0x80 | opcode;
        head[1] = 126;
        head.writeUInt16BE(len, 2);
      } else {
        head = Buffer.alloc(10);
        head[0] = 0x80 | opcode;
        head[1] = 127;
        head.writeBigUInt64BE(BigInt(len), 2);
      }
      return Buffer.concat([head, payload]);
    }

    send(data, options, cb) {
      if (typeof options === 'function') {
        cb = options;
        options = undefined;
      }
      if (this.readyState !== STATES.OPEN) {
        const err = new Error('WebSocket is not open');
        if (cb) cb(err);
        return;
      }
      let opcode = 0x2;
      let payload;
      if (typeof data === 'string') {
        opcode = 0x1;
        payload = Buffer.from(data, 'utf8');
      } else if (Buffer.isBuffer(data)) {
        payload = data;
      } else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
        payload = Buffer.from(data.buffer || data, data.byteOffset || 0, data.byteLength);
      } else {
        opcode = 0x1;
        payload = Buffer.from(String(data), 'utf8');
      }
      if (options && options.binary === false) opcode = 0x1;
      if (options && options.binary === true) opcode = 0x2;
      this.socket.write(this.frame(opcode, payload), cb);
    }

    ping(data) {
      if (this.readyState === STATES.OPEN) this.socket.write(this.frame(0x9, Buffer.from(data || '')));
    }

    close(code, reason) {
      if (this.readyState >= STATES.CLOSING) return;
      this.readyState = STATES.CLOSING;
      this.sendClose(code === undefined ? 1000 : code, reason || '');
      // The peer answers with its own close frame; do not wait for it forever.
      setTimeout(() => this.socket.destroy(), 5000).unref();
    }

    terminate() {
      this.socket.destroy();
    }

    sendClose(code, reason) {
      if (this.closeSent) return;
      this.closeSent = true;
      const r = Buffer.from(String(reason), 'utf8');
      const payload = Buffer.alloc(2 + r.length);
      payload.writeUInt16BE(code, 0);
      r.copy(payload, 2);
      this.socket.write(this.frame(0x8, payload));
    }

    fail(code, reason) {
      this.sendClose(code, reason);
      this.readyState = STATES.CLOSING;
      this.socket.end();
      this.finish(code, reason);
    }

    finish(code, reason) {
      if (this.readyState === STATES.CLOSED) return;
      this.readyState = STATES.CLOSED;
      wsClients.delete(this);
      this.socket.destroy();
      this.emit('close', code, Buffer.from(reason));
    }

    onData(chunk) {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      for (;;) {
        const b = this.buf;
        if (b.length < 2) return;
        const fin = (b[0] & 0x80) !== 0;
        const opcode = b[0] & 0x0f;
        const masked = (b[1] & 0x80) !== 0;
        let len = b[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          if (b.length < 4) return;
          len = b.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (b.length < 10) return;
          const big = b.readBigUInt64BE(2);
          if (big > BigInt(WS_MAX_MESSAGE)) return this.fail(1009, 'message too big');
          len = Number(big);
          off = 10;
        }
        if (!masked) return this.fail(1002, 'client frames must be masked');
        if (len > WS_MAX_MESSAGE) return this.fail(1009, 'message too big');
        if (b.length < off + 4 + len) return;
        const mask = b.subarray(off, off + 4);
        const payload = Buffer.from(b.subarray(off + 4, off + 4 + len));
        for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
        this.buf = b.subarray(off + 4 + len);
        if (this.onFrame(fin, opcode, payload) === false) return;
      }
    }

    onFrame(fin, opcode, payload) {
      if (opcode === 0x8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        const reason = payload.length > 2 ? payload.subarray(2).toString('utf8') : '';
        this.sendClose(code === 1005 ? 1000 : code, '');
        this.readyState = STATES.CLOSING;
        this.socket.end();
        this.finish(code, reason);
        return false;
      }
      if (opcode === 0x9) {
        if (this.readyState === STATES.OPEN) this.socket.write(this.frame(0xa, payload));
        this.emit('ping', payload);
        return true;
      }
      if (opcode === 0xa) {
        this.emit('pong', payload);
        return true;
      }
      if (opcode === 0x1 || opcode === 0x2) {
        if (this.fragments !== null) return this.fail(1002, 'new message inside a fragmented one');
        if (!fin) {
          this.fragments = [opcode, [payload], payload.length];
          return true;
        }
        this.deliver(opcode, payload);
        return true;
      }
      if (opcode === 0x0) {
        if (this.fragments === null) return this.fail(1002, 'continuation without a message');
        this.fragments[1].push(payload);
        this.fragments[2] += payload.length;
        if (this.fragments[2] > WS_MAX_MESSAGE) return this.fail(1009, 'message too big');
        if (fin) {
          const [op, chunks, size] = this.fragments;
          this.fragments = null;
          this.deliver(op, Buffer.concat(chunks, size));
        }
        return true;
      }
      return this.fail(1002, `unknown opcode ${opcode}`);
    }

    deliver(opcode, payload) {
      if (this.readyState !== STATES.OPEN) return;
      const isBinary = opcode === 0x2;
      this.emit('message', isBinary ? payload : payload.toString('utf8'), isBinary);
    }
  }
  Object.assign(Conn, STATES);
  Object.assign(Conn.prototype, STATES);
  WebSocketConnection = Conn;
  return Conn;
}

function rawError(socket, status, code, message) {
  const body = errorBody(code, message);
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

function onUpgrade(req, socket, head) {
  socket.setNoDelay(true);
  if (String(req.headers.upgrade || '').toLowerCase() !== 'websocket') {
    rawError(socket, 400, 'bad_request', `unsupported upgrade ${JSON.stringify(req.headers.upgrade)}: only websocket`);
    return;
  }
  if (fn === null) {
    socket.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(NOT_SPECIALIZED)}\r\nConnection: close\r\n\r\n${NOT_SPECIALIZED}`);
    return;
  }
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || req.headers['sec-websocket-version'] !== '13') {
    rawError(socket, 400, 'bad_request', 'a WebSocket handshake needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13');
    return;
  }
  const accept = require('node:crypto').createHash('sha1').update(key + WS_GUID).digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
  // Paused until the function has had the chance to listen (messages are not lost).
  socket.pause();
  const Conn = wsClass();
  const ws = new Conn(socket, makeRequest(req, Buffer.alloc(0)));
  inFlight += 1;
  const inv = req.headers['x-kappa-invocation-id'];
  const waited = sem.acquire();
  const start = () => {
    wsClients.add(ws);
    ws.once('close', () => {
      inFlight -= 1;
      sem.release();
    });
    const failed = (e) => {
      const [msg, tb] = describe(e);
      log(`kappa: function error on a WebSocket${inv ? ` (invocation ${inv})` : ''}: ${msg}\n${tb}`);
      ws.close(1011, 'function error');
    };
    try {
      const rv = fn(ws, wsClients);
      if (rv && typeof rv.then === 'function') rv.then(undefined, failed);
    } catch (e) {
      failed(e);
    }
    if (head && head.length) ws.onData(head);
    socket.resume();
  };
  if (waited !== null) waited.then(start);
  else start();
}

// ------------------------------------------------------------------------------------------
// Server

const HEALTH_BODY = Buffer.from('{"status":"ok"}\n');
const STOPPING_BODY = Buffer.from('{"status":"stopping"}\n');
const NOT_SPECIALIZED = errorBody('not_specialized',
  'this runtime instance has no function loaded yet (POST /v2/specialize first)');

/** Reads the whole body (at most `limit` bytes; 0 = no limit), then calls `cb(body)`. */
function readBody(req, res, limit, cb) {
  const declared = Number(req.headers['content-length'] || 0);
  if (limit && declared > limit) {
    res.shouldKeepAlive = false;
    sendError(res, 413, 'payload_too_large', `request body larger than ${limit} bytes`);
    return;
  }
  const chunks = [];
  let size = 0;
  let failed = false;
  req.on('data', (chunk) => {
    if (failed) return;
    size += chunk.length;
    if (limit && size > limit) {
      failed = true;
      res.shouldKeepAlive = false;
      sendError(res, 413, 'payload_too_large', `request body larger than ${limit} bytes`);
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (!failed) cb(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
  });
}

function onRequest(req, res) {
  const url = req.url;
  const method = req.method;
  inFlight += 1;
  res.on('close', () => {
    inFlight -= 1;
  });
  if ((method === 'GET' || method === 'HEAD') && (url === '/healthz' || url.startsWith('/healthz?'))) {
    send(res, stopping ? 503 : 200, JSON_TYPE, stopping ? STOPPING_BODY : HEALTH_BODY);
    return;
  }
  const isSpecialize = method === 'POST' && (url === '/v2/specialize' || url === '/specialize');
  readBody(req, res, isSpecialize ? SPECIALIZE_MAX_BODY : MAX_BODY, (body) => {
    if (isSpecialize) {
      specialize(body, url === '/specialize').then(([status, out]) => send(res, status, JSON_TYPE, out));
      return;
    }
    if (fn === null) {
      send(res, 500, JSON_TYPE, NOT_SPECIALIZED);
      return;
    }
    invoke(req, res, body);
  });
}

const USAGE = `usage: server.js [--host HOST] [--port PORT]

Kappa Node.js runtime server (Fission environment protocol v2).
  --host HOST   listen address (env HOST; default 127.0.0.1)
  --port PORT   listen port (env PORT, then RUNTIME_PORT; default 8888; 0 picks a free port)
Environment: KAPPA_CONCURRENCY (default 1), KAPPA_GRACE_PERIOD (s, default 30),
KAPPA_MAX_BODY_BYTES (default 0 = no limit), KAPPA_KEEPALIVE_TIMEOUT (s, default 900).
`;

function parseArgs(argv) {
  let host;
  let port;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.indexOf('=');
    const key = eq < 0 ? a : a.slice(0, eq);
    let val = eq < 0 ? undefined : a.slice(eq + 1);
    if (['--port', '-p', '--host'].includes(key) && val === undefined) {
      if (i + 1 >= argv.length) {
        process.stderr.write(`kappa: ${a} needs a value\n${USAGE}`);
        process.exit(2);
      }
      val = argv[++i];
    }
    if (key === '--port' || key === '-p') port = val;
    else if (key === '--host') host = val;
    else if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE);
      process.exit(0);
    } else process.stderr.write(`kappa: ignoring unknown argument ${JSON.stringify(a)}\n`);
  }
  if (host === undefined) host = process.env.HOST || '127.0.0.1';
  if (port === undefined) port = process.env.PORT || process.env.RUNTIME_PORT || '8888';
  const n = /^\d+$/.test(String(port)) ? Number(port) : NaN;
  if (!(n >= 0 && n <= 65535)) {
    process.stderr.write(`kappa: invalid port ${JSON.stringify(port)}: expected 0-65535\n`);
    process.exit(2);
  }
  return [host.replace(/^\[|\]$/g, ''), n];
}

function main() {
  const [host, port] = parseArgs(process.argv.slice(2));
  const server = http.createServer({
    noDelay: true,
    maxHeaderSize: MAX_HEAD,
    requestTimeout: 0,
    keepAlive: true,
  }, onRequest);
  server.on('upgrade', onUpgrade);
  server.keepAliveTimeout = IDLE_TIMEOUT * 1000;
  server.headersTimeout = 60000;
  server.on('clientError', (err, socket) => {
    if (!socket.writable) return;
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const body = errorBody(reasonCode(status), `malformed request: ${err.message}`);
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  });
  server.on('error', (e) => {
    process.stderr.write(`kappa: cannot listen on ${host}:${port}: ${e.message}\n`);
    process.exit(1);
  });
  // Errors the function leaves behind outside a request (a timer, an unawaited promise) are
  // logged and the instance keeps serving: killing it would fail every other request in flight.
  process.on('uncaughtException', (e) => {
    const [msg, tb] = describe(e);
    log(`kappa: uncaught exception outside a request: ${msg}\n${tb}`);
  });
  process.on('unhandledRejection', (e) => {
    const [msg, tb] = describe(e);
    log(`kappa: unhandled promise rejection: ${msg}\n${tb}`);
  });
  const stop = (signal) => {
    if (stopping) {
      if (signal === 'SIGINT') process.exit(130);
      return;
    }
    stopping = true;
    for (const ws of wsClients) ws.close(1001, 'server stopping');
    server.close();
    server.closeIdleConnections();
    if (inFlight > 0) {
      log(`kappa: shutting down: draining ${inFlight} in-flight request(s), grace ${GRACE}s`);
    }
    const deadline = Date.now() + GRACE * 1000;
    const check = () => {
      if (inFlight === 0) process.exit(0);
      if (Date.now() >= deadline) {
        log(`kappa: exiting with ${inFlight} request(s) still in flight after ${GRACE}s`);
        process.exit(0);
      }
      server.closeIdleConnections();
      setTimeout(check, 5);
    };
    check();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  server.listen({ host, port, backlog: 1024 }, () => {
    const addr = server.address();
    const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    process.stdout.write(`kappa nodejs runtime listening on ${shown}:${addr.port}\n`);
  });
}

if (require.main === module) main();
