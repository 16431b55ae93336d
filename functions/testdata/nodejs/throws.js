// A handler that throws: the invocation answers 500 with the stack.
module.exports = async (context) => {
  if (context.request.query.ok === '1') return 'fine\n';
  throw new Error('boom from node');
};
