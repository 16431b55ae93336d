// Tests for the Kappa Node.js runtime server, with Node's built-in test runner:
//
//     node --test functions/runtimes/nodejs/test_server.js
//
// Each test starts server.js as a real subprocess on a free port (`--port 0`; the port is read
// from the "listening on" line) and talks HTTP to it. No test asserts a wall-clock duration;
// waits are bounded polls.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const HERE = __dirname;
const ROOT = path.resolve(HERE, '..', '..', '..');
const SERVER = path.join(HERE, 'server.js');
const EXAMPLES = path.join(ROOT, 'functions', 'examples', 'nodejs');
const TESTDATA = path.join(ROOT, 'functions', 'testdata', 'nodejs');
const TIMEOUT = 20000; // a bound for waits, never an assertion

class Runtime {
  static async start(t, env = {}, args = ['--port', '0']) {
    const rt = new Runtime();
    const e = { ...process.env, ...env };
    delete e.KAPPA_CONCURRENCY;
    Object.assign(e, env);
    rt.proc = spawn(process.execPath, [SERVER, ...args], { env: e, stdio: ['ignore', 'pipe', 'pipe'] });
    rt.stderr = '';
    rt.proc.stderr.on('data', (d) => { rt.stderr += d; });
    rt.exited = new Promise((resolve) => rt.proc.on('exit', (code, signal) => resolve({ code, signal })));
    t.after(() => { if (rt.proc.exitCode === null) rt.proc.kill('SIGKILL'); });
    rt.firstLine = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`no listening line; stderr: ${rt.stderr}`)), TIMEOUT);
      rt.proc.stdout.on('data', (d) => {
        out += d;
        const nl = out.indexOf('\n');
        if (nl >= 0) {
          clearTimeout(timer);
          resolve(out.slice(0, nl));
        }
      });
    });
    rt.port = Number(rt.firstLine.split(':').pop());
    rt.agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    t.after(() => rt.agent.destroy());
    return rt;
  }

  request(method, urlPath, { body, headers = {}, agent } = {}) {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: this.port, method, path: urlPath, headers,
        agent: agent === undefined ? this.agent : agent, timeout: TIMEOUT }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete }));
        res.on('error', reject);
        res.on('aborted', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), complete: false }));
      });
      req.on('error', reject);
      if (body !== undefined) req.write(body);
      req.end();
    });
  }

  async specialize(filepath, functionName = '', env) {
    const payload = { filepath, functionName };
    if (env) payload.env = env;
    const r = await this.request('POST', '/v2/specialize', { body: JSON.stringify(payload), headers: { 'Content-Type': 'application/json' } });
    return { status: r.status, json: r.body.length ? JSON.parse(r.body) : null };
  }
}

async function specialized(t, filepath, entry = '', env, rtEnv) {
  const rt = await Runtime.start(t, rtEnv);
  const r = await rt.specialize(filepath, entry, env);
  assert.equal(r.status, 202, JSON.stringify(r.json));
  return rt;
}

function tmpdir(t, files) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'kappa-node-test-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  for (const [name, content] of Object.entries(files || {})) {
    fs.mkdirSync(path.dirname(path.join(d, name)), { recursive: true });
    fs.writeFileSync(path.join(d, name), content);
  }
  return d;
}

async function waitFor(what, check) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ------------------------------------------------------------------------------------------

test('listening line, healthz before and after specialize, 202 on specialize', async (t) => {
  const rt = await Runtime.start(t);
  assert.equal(rt.firstLine, `kappa nodejs runtime listening on 127.0.0.1:${rt.port}`);
  assert.equal((await rt.request('GET', '/healthz')).status, 200);
  const r = await rt.specialize(path.join(EXAMPLES, 'hello.js'));
  assert.equal(r.status, 202);
  assert.equal((await rt.request('GET', '/healthz')).status, 200);
  const hello = await rt.request('GET', '/');
  assert.equal(hello.status, 200);
  assert.equal(hello.body.toString(), 'Hello from Node.js!\n');
  assert.equal(hello.headers['content-type'], 'text/plain; charset=utf-8');
});

test('port and host from the environment', async (t) => {
  for (const v of ['PORT', 'RUNTIME_PORT']) {
    const rt = await Runtime.start(t, { PORT: '', RUNTIME_PORT: '', HOST: '127.0.0.1', [v]: '0' }, []);
    assert.equal((await rt.request('GET', '/healthz')).status, 200);
  }
});

test('invoke before specialize is not_specialized; a second specialize is refused', async (t) => {
  const rt = await Runtime.start(t);
  const r = await rt.request('GET', '/x');
  assert.equal(r.status, 500);
  assert.equal(JSON.parse(r.body).error.code, 'not_specialized');
  assert.equal((await rt.specialize(path.join(EXAMPLES, 'hello.js'))).status, 202);
  const again = await rt.specialize(path.join(EXAMPLES, 'hello.js'));
  assert.equal(again.status, 400);
  assert.equal(again.json.error.code, 'already_specialized');
  assert.equal((await rt.request('POST', '/v2/specialize', { body: 'nope' })).status, 400);
});

test('malformed specialize requests are 400 naming the field', async (t) => {
  const rt = await Runtime.start(t);
  let r = await rt.request('POST', '/v2/specialize', { body: '{' });
  assert.equal(r.status, 400);
  r = await rt.request('POST', '/v2/specialize', { body: '{"functionName":"x"}' });
  assert.equal(r.status, 400);
  assert.match(JSON.parse(r.body).error.message, /filepath/);
  r = await rt.request('POST', '/v2/specialize', { body: '{"filepath":"/x","env":{"A":{}}}' });
  assert.match(JSON.parse(r.body).error.message, /env/);
  // Still generic: a good specialize works.
  assert.equal((await rt.specialize(path.join(EXAMPLES, 'hello.js'))).status, 202);
});

test('directory package: main, file.export, callback style and the request mapping', async (t) => {
  const rt = await specialized(t, path.join(EXAMPLES, 'echo'), 'index.echo');
  const r = await rt.request('POST', '/a/b%20c?x=1&x=2&y=%C3%A9+z', {
    body: '{"k":[1,2]}',
    headers: { 'Content-Type': 'application/json', 'X-Kappa-Params-Id': '42', 'X-Kappa-Function-Name': 'echo', 'X-Kappa-Invocation-Id': 'inv-1' },
  });
  assert.equal(r.status, 200, r.body.toString());
  assert.equal(r.headers['x-echo'], 'yes');
  const v = JSON.parse(r.body);
  assert.equal(v.method, 'POST');
  assert.equal(v.path, '/a/b%20c');
  assert.deepEqual(v.query, { x: ['1', '2'], y: 'é z' });
  assert.deepEqual(v.params, { id: '42' });
  assert.deepEqual(v.json, { k: [1, 2] });
  assert.equal(v.body, '{"k":[1,2]}');
  assert.equal(v.function, 'echo');
  assert.equal(v.invocationId, 'inv-1');
  assert.equal(v.headers['x-kappa-params-id'], '42');
  // Empty entrypoint: package.json main's default export.
  const main = await specialized(t, path.join(EXAMPLES, 'echo'), '');
  assert.equal(JSON.parse((await main.request('GET', '/')).body).method, 'GET');
  // (context, callback)
  const cb = await specialized(t, path.join(EXAMPLES, 'echo'), 'index.legacy');
  const c = await cb.request('PUT', '/p', { body: 'text body', headers: { 'Content-Type': 'text/plain' } });
  assert.equal(c.status, 201);
  assert.equal(c.headers['x-style'], 'callback');
  assert.equal(JSON.parse(c.body).json, null);
  assert.equal(JSON.parse(c.body).body, 'text body');
});

test('entrypoint forms: single word, .js given, dotted file names, index/main fallbacks', async (t) => {
  const d = tmpdir(t, {
    'a.js': "module.exports = async () => 'a default\\n'; module.exports.other = async () => 'a other\\n';",
    'my.handlers.js': "exports.main = async () => 'dotted\\n';",
    'lib/util.js': "exports.value = () => 'nested\\n';",
  });
  const cases = [
    ['a', 'a default\n'], ['a.js', 'a default\n'], ['a.other', 'a other\n'],
    ['my.handlers.main', 'dotted\n'], ['lib/util.value', 'nested\n'],
  ];
  for (const [entry, want] of cases) {
    const rt = await specialized(t, d, entry);
    assert.equal((await rt.request('GET', '/')).body.toString(), want, entry);
  }
  const single = tmpdir(t, { 'only.js': "module.exports = () => 'only\\n';" });
  const rt = await specialized(t, single, '');
  assert.equal((await rt.request('GET', '/')).body.toString(), 'only\n');
  // A single file: the file part does not matter, the export does.
  const f = await specialized(t, path.join(d, 'a.js'), 'whatever.other');
  assert.equal((await f.request('GET', '/')).body.toString(), 'a other\n');
  const w = await specialized(t, path.join(d, 'a.js'), 'other');
  assert.equal((await w.request('GET', '/')).body.toString(), 'a other\n');
});

test('ES modules: .mjs, "type": "module", env applied before loading', async (t) => {
  const esm = await specialized(t, path.join(TESTDATA, 'esm'), '', { GREETING: 'hej' });
  assert.deepEqual(JSON.parse((await esm.request('GET', '/')).body), { esm: true, env: 'hej' });
  const named = await specialized(t, path.join(TESTDATA, 'esm'), 'index.named');
  assert.equal((await named.request('GET', '/')).body.toString(), 'named export\n');
  const mjs = await specialized(t, path.join(TESTDATA, 'hello.mjs'), 'hello.main');
  const r = await mjs.request('DELETE', '/');
  assert.equal(r.status, 201);
  assert.equal(r.body.toString(), 'main DELETE\n');
});

test('load failures come back with the cause and the stack', async (t) => {
  const rt = await Runtime.start(t);
  let r = await rt.specialize(path.join(TESTDATA, 'syntax_error.js'));
  assert.equal(r.status, 500);
  assert.equal(r.json.error.code, 'specialize_failed');
  assert.match(r.json.error.message, /SyntaxError/);
  assert.match(r.json.error.message, /syntax_error\.js:3/);
  r = await rt.specialize(path.join(TESTDATA, 'import_error.js'));
  assert.match(r.json.error.message, /Cannot find module 'definitely-not-installed-kappa'/);
  assert.match(r.json.error.traceback, /import_error\.js:2/);
  r = await rt.specialize(TESTDATA, 'nope.main');
  assert.match(r.json.error.message, /no file "nope"/);
  r = await rt.specialize(path.join(TESTDATA, 'hello.mjs'), 'x.missing');
  assert.match(r.json.error.message, /no export "missing".*default, main/);
  r = await rt.specialize('/does/not/exist');
  assert.match(r.json.error.message, /does not exist/);
  r = await rt.specialize(TESTDATA, '../x.main');
  assert.match(r.json.error.message, /outside the package/);
  // A failed specialize leaves the instance generic.
  assert.equal((await rt.specialize(path.join(EXAMPLES, 'hello.js'))).status, 202);
});

test('an exception answers 500 with the stack, and the instance keeps serving', async (t) => {
  const rt = await specialized(t, path.join(TESTDATA, 'throws.js'));
  const r = await rt.request('GET', '/', { headers: { 'X-Kappa-Invocation-Id': 'inv-9' } });
  assert.equal(r.status, 500);
  const err = JSON.parse(r.body).error;
  assert.equal(err.code, 'function_error');
  assert.equal(err.message, 'Error: boom from node');
  assert.match(err.traceback, /throws\.js:4/);
  assert.doesNotMatch(err.traceback, /server\.js/);
  assert.equal(err.invocation_id, 'inv-9');
  await waitFor('the error in the log', () => rt.stderr.includes('boom from node'));
  assert.equal((await rt.request('GET', '/?ok=1')).body.toString(), 'fine\n');
});

test('bodies: string, Buffer, object, null, status/headers, thrown 4xx, bad values', async (t) => {
  const d = tmpdir(t, {
    'h.js': `
      module.exports = async ({ request }) => {
        switch (request.query.kind) {
          case 'buf': return { body: Buffer.from([0, 1, 2]) };
          case 'obj': return { status: 201, body: { a: 1 }, headers: { 'X-A': 'b', 'Set-Cookie': ['x=1', 'y=2'] } };
          case 'plain': return { hello: 'world' };
          case 'none': return undefined;
          case 'array': return [1, 2];
          case 'html': return { body: '<p>', headers: { 'content-type': 'text/html' } };
          case 'teapot': throw Object.assign(new Error('short and stout'), { status: 418 });
          case 'badstatus': return { status: 'abc' };
          case 'badheader': return { headers: { 'X-Bad': 'a\\r\\nb' }, body: 'x' };
          case 'json': return { body: request.json };
          default: return 'text';
        }
      };`,
  });
  const rt = await specialized(t, d, 'h');
  const get = (q, opts) => rt.request('GET', `/?kind=${q}`, opts);
  let r = await get('buf');
  assert.equal(r.headers['content-type'], 'application/octet-stream');
  assert.deepEqual([...r.body], [0, 1, 2]);
  r = await get('obj');
  assert.equal(r.status, 201);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers['x-a'], 'b');
  assert.deepEqual(r.headers['set-cookie'], ['x=1', 'y=2']);
  assert.deepEqual(JSON.parse(r.body), { a: 1 });
  assert.deepEqual(JSON.parse((await get('plain')).body), { hello: 'world' });
  r = await get('none');
  assert.equal(r.status, 200);
  assert.equal(r.body.length, 0);
  assert.deepEqual(JSON.parse((await get('array')).body), [1, 2]);
  assert.equal((await get('html')).headers['content-type'], 'text/html');
  r = await get('teapot');
  assert.equal(r.status, 418);
  assert.equal(JSON.parse(r.body).error.message, 'short and stout');
  r = await get('badstatus');
  assert.equal(r.status, 500);
  assert.match(JSON.parse(r.body).error.message, /status/);
  r = await get('badheader');
  assert.equal(r.status, 500);
  assert.equal(JSON.parse(r.body).error.code, 'function_error');
  r = await rt.request('POST', '/?kind=json', { body: '{bad', headers: { 'Content-Type': 'application/json' } });
  assert.equal(r.status, 400);
  assert.match(JSON.parse(r.body).error.message, /not valid JSON/);
  r = await rt.request('HEAD', '/?kind=obj');
  assert.equal(r.status, 201);
  assert.equal(r.body.length, 0);
});

test('a Readable body is streamed chunked; a failure mid-stream truncates it', async (t) => {
  const rt = await specialized(t, path.join(TESTDATA, 'stream.js'));
  let r = await rt.request('GET', '/?n=3');
  assert.equal(r.status, 200);
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.equal(r.body.toString(), 'chunk 0\nchunk 1\nchunk 2\n');
  r = await rt.request('GET', '/?n=3&fail=1', { agent: false }).catch((e) => ({ error: e }));
  assert.ok(r.error || r.complete === false, `the response must not look complete: ${JSON.stringify(r)}`);
  await waitFor('the streaming error in the log', () => rt.stderr.includes('stream broke'));
  assert.equal((await rt.request('GET', '/?n=1', { agent: false })).body.toString(), 'chunk 0\n');
});

test('keep-alive: many requests on one connection', async (t) => {
  const rt = await specialized(t, path.join(EXAMPLES, 'hello.js'));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const ports = new Set();
  for (let i = 0; i < 20; i++) {
    const r = await new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: rt.port, path: '/', agent }, (res) => {
        ports.add(res.socket.localPort);
        res.resume();
        res.on('end', () => resolve(res));
      }).on('error', reject);
    });
    assert.equal(r.statusCode, 200);
  }
  assert.equal(ports.size, 1);
});

test('KAPPA_CONCURRENCY bounds calls into the function; /healthz answers meanwhile', async (t) => {
  const d = tmpdir(t, {
    'c.js': `
      const fs = require('node:fs');
      const path = require('node:path');
      let running = 0, peak = 0;
      module.exports = async ({ request }) => {
        const dir = request.query.dir;
        running++; peak = Math.max(peak, running);
        fs.writeFileSync(path.join(dir, 'peak'), String(peak));
        fs.writeFileSync(path.join(dir, 'started-' + request.query.i), '');
        while (!fs.existsSync(path.join(dir, 'gate'))) await new Promise((r) => setTimeout(r, 5));
        running--;
        return 'done';
      };`,
  });
  for (const want of [1, 3]) {
    const work = tmpdir(t);
    const rt = await specialized(t, d, 'c', undefined, { KAPPA_CONCURRENCY: String(want) });
    const calls = [0, 1, 2].map((i) => rt.request('GET', `/?i=${i}&dir=${encodeURIComponent(work)}`, { agent: false }));
    const started = () => fs.readdirSync(work).filter((n) => n.startsWith('started-')).length;
    await waitFor(`${want} calls inside the function`, () => started() >= want);
    assert.equal((await rt.request('GET', '/healthz', { agent: false })).status, 200);
    fs.writeFileSync(path.join(work, 'gate'), '');
    for (const r of await Promise.all(calls)) assert.equal(r.body.toString(), 'done');
    assert.equal(Number(fs.readFileSync(path.join(work, 'peak'), 'utf8')), want, `KAPPA_CONCURRENCY=${want}`);
  }
});

test('SIGTERM: idle exits 0; an in-flight request finishes first', async (t) => {
  const idle = await Runtime.start(t);
  idle.proc.kill('SIGTERM');
  assert.equal((await idle.exited).code, 0);

  const d = tmpdir(t, {
    'g.js': `
      const fs = require('node:fs');
      module.exports = async ({ request }) => {
        fs.writeFileSync(request.query.started, '');
        while (!fs.existsSync(request.query.gate)) await new Promise((r) => setTimeout(r, 5));
        return 'released';
      };`,
  });
  const started = path.join(d, 'started');
  const gate = path.join(d, 'gate');
  const rt = await specialized(t, d, 'g');
  const call = rt.request('GET', `/?started=${encodeURIComponent(started)}&gate=${encodeURIComponent(gate)}`, { agent: false });
  await waitFor('the call to start', () => fs.existsSync(started));
  rt.proc.kill('SIGTERM');
  await waitFor('the drain to start', () => rt.stderr.includes('draining 1 in-flight'));
  assert.equal(rt.proc.exitCode, null);
  fs.writeFileSync(gate, '');
  const r = await call;
  assert.equal(r.body.toString(), 'released');
  assert.equal((await rt.exited).code, 0);
});

test('KAPPA_MAX_BODY_BYTES answers 413', async (t) => {
  const rt = await specialized(t, path.join(EXAMPLES, 'hello.js'), '', undefined, { KAPPA_MAX_BODY_BYTES: '10' });
  const r = await rt.request('POST', '/', { body: 'x'.repeat(100), agent: false });
  assert.equal(r.status, 413);
  assert.equal((await rt.request('POST', '/', { body: 'x'.repeat(5), agent: false })).status, 200);
});

test('trace context: traceparent, traceId, childTraceparent; trace ids in error lines', async (t) => {
  const d = tmpdir(t, {
    'fn.js': `module.exports = async (context) => {
  const r = context.request;
  if (r.headers['x-fail']) throw new Error('boom');
  return { body: { tp: r.traceparent ?? null, trace: r.traceId ?? null, child: r.childTraceparent() ?? null } };
};`,
  });
  const rt = await specialized(t, d, 'fn');
  const tp = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  const v = JSON.parse((await rt.request('GET', '/', { headers: { traceparent: tp } })).body);
  assert.equal(v.tp, tp);
  assert.equal(v.trace, '0af7651916cd43dd8448eb211c80319c');
  const child = v.child.split('-');
  assert.deepEqual([child[0], child[1], child[3]], ['00', v.trace, '01']);
  assert.notEqual(child[2], 'b7ad6b7169203331');
  assert.equal(child[2].length, 16);
  for (const bad of ['junk', `00-${'0'.repeat(32)}-b7ad6b7169203331-01`]) {
    const w = JSON.parse((await rt.request('GET', '/', { headers: { traceparent: bad } })).body);
    assert.deepEqual(w, { tp: null, trace: null, child: null });
  }
  const f = await rt.request('GET', '/', { headers: { traceparent: tp, 'x-fail': '1', 'X-Kappa-Invocation-Id': 'inv-7' } });
  assert.equal(f.status, 500);
  await waitFor('the error line', () => rt.stderr.includes('(invocation inv-7, trace 0af7651916cd43dd8448eb211c80319c)'));
});
