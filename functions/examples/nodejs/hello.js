// The Node.js hello world (entrypoint: empty or `hello`): the module's export is the handler.
module.exports = async (context) => ({ status: 200, body: 'Hello from Node.js!\n' });
