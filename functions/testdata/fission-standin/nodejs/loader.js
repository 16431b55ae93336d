// How the stand-in loads a function: the module's export, or `module.export` (Fission's form).
'use strict';

const fs = require('fs');
const path = require('path');

exports.loadFunction = (filepath, functionName) => {
  const [file, exported] = (functionName || '').split('.');
  const target = fs.statSync(filepath).isDirectory() ? path.join(filepath, file || 'index') : filepath;
  const mod = require(target);
  const fn = exported ? mod[exported] : mod;
  if (typeof fn !== 'function') throw new Error(`${functionName} is not a function`);
  return fn;
};
