// A WebSocket echo upstream that negotiates permessage-deflate and compresses
// every message (threshold 0). Prints `LISTENING <port>` once bound.
// A text message "offer?" is answered with the extension offer it received.
'use strict';
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: { threshold: 0 },
});
wss.on('listening', () => console.log(`LISTENING ${wss.address().port}`));
wss.on('connection', (ws, req) => {
  const offer = req.headers['sec-websocket-extensions'] || '';
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString() === 'offer?') {
      ws.send(JSON.stringify({ offer }));
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
  ws.on('error', () => {});
});
