// Echo the request back as JSON (entrypoint `index.echo`, or empty for the default export).
//
// Two handler styles side by side:
//   echo    async (context) => ({status, body, headers})
//   legacy  (context, callback) => callback(status, body, headers)   (Fission style)
const { describe } = require('./describe');

async function echo(context) {
  return {
    status: 200,
    headers: { 'X-Echo': 'yes' },
    body: describe(context.request),
  };
}

function legacy(context, callback) {
  setImmediate(() => callback(201, describe(context.request), { 'X-Style': 'callback' }));
}

module.exports = echo;
module.exports.echo = echo;
module.exports.legacy = legacy;
