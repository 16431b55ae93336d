// Streams its body from a Readable: `?n=3` chunks, and `?fail=1` breaks after the first one.
const { Readable } = require('node:stream');

module.exports = async (context) => {
  const n = Number(context.request.query.n || 3);
  const fail = context.request.query.fail === '1';
  async function* chunks() {
    for (let i = 0; i < n; i++) {
      if (fail && i === 1) throw new Error('stream broke');
      yield `chunk ${i}\n`;
      await new Promise((r) => setImmediate(r));
    }
  }
  return { headers: { 'Content-Type': 'text/plain' }, body: Readable.from(chunks()) };
};
