// A plain-data view of the request (a sibling module, to show relative requires work).
exports.describe = (req) => ({
  method: req.method,
  path: req.path,
  query: req.query,
  params: req.params,
  headers: req.headers,
  // `json` is the parsed body when the request's Content-Type is JSON, else undefined.
  json: req.json === undefined ? null : req.json,
  body: req.text,
  function: req.functionName,
  invocationId: req.invocationId,
});
