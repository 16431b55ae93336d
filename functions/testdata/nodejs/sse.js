// Server-sent events held open until released: GET streams "data: first", then waits until a
// POST (to the same instance) releases it, then sends "data: second" and ends. A proxy that
// buffered the response would never deliver "first" before the release.
'use strict';
const { Readable } = require('node:stream');

let release;
let released = new Promise((resolve) => { release = resolve; });

module.exports = async (context) => {
  if (context.request.method === 'POST') {
    release();
    released = new Promise((resolve) => { release = resolve; });
    return 'released\n';
  }
  const wait = released;
  async function* events() {
    yield 'data: first\n\n';
    await wait;
    yield 'data: second\n\n';
  }
  return {
    headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' },
    body: Readable.from(events()),
  };
};
