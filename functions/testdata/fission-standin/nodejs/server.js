// Stand-in for Fission's Node.js environment server (see ../README.md).
'use strict';

const http = require('http');
const path = require('path');
const fs = require('fs');
const dep = require('standin-dep'); // from ./node_modules
const { loadFunction } = require('./loader'); // from this directory

let userFunction = null;

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    console.log(`standin-nodejs: ${req.method} ${req.url}`);
    if (req.method === 'POST' && req.url === '/v2/specialize') {
      if (userFunction) return answer(res, 400, 'Not a generic container');
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
        userFunction = loadFunction(body.filepath, body.functionName);
      } catch (e) {
        return answer(res, 500, `Failed to load function: ${e}`);
      }
      console.log('specialized');
      return answer(res, 202, '');
    }
    if (!userFunction) return answer(res, 500, 'Generic container: no requests supported');
    return answer(res, 200, `${userFunction()} (${dep.name})`);
  });
});

server.listen(8888, '0.0.0.0', () => console.log('standin-nodejs on 8888'));
