// A WebSocket function (Node.js runtime), in the shape Fission's Node.js environment uses:
// the handler gets the socket and the set of this instance's open sockets. It echoes every
// message back (text as text, binary as binary); "clients" answers with the number of open
// sockets and "bye" makes the function close the socket.
//
//     kappa fn create --name ws-node --env nodejs --code websocket.js
//     kappa route create --function ws-node --url /ws-node
//
// A plain HTTP request gets 426 (Upgrade Required).
'use strict';

module.exports = async function (ws, clients) {
  if (!ws || typeof ws.on !== 'function') {
    return { status: 426, body: 'connect with a WebSocket\n' };
  }
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data === 'bye') {
      ws.close(1000, 'bye');
    } else if (!isBinary && data === 'clients') {
      ws.send(String(clients.size));
    } else {
      ws.send(data);
    }
  });
  return undefined;
};
