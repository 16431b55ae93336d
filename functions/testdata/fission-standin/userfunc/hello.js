// A function for the Node.js stand-in.
module.exports = () => 'hello from a Fission-style Node.js server';
