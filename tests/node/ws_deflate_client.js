// A Node `ws` client with its default permessage-deflate offer (compressing
// every message: threshold 0). Usage: ws_deflate_client.js URL SIZE...
// Sends "offer?" first, then one highly compressible text message of each
// SIZE, each waited for as an echo. Prints one JSON line:
// {"extensions": "...", "offer": "...", "echoed": [sizes], "close": code|null}
'use strict';
const WebSocket = require('ws');

const [url, ...sizes] = process.argv.slice(2);
const ws = new WebSocket(url, { perMessageDeflate: { threshold: 0 } });
const result = { extensions: null, offer: null, echoed: [], close: null, error: null };
let pending = sizes.map(Number);
let expected = null;

function done() {
  console.log(JSON.stringify(result));
  process.exit(0);
}

function sendNext() {
  if (pending.length === 0) {
    ws.close(1000);
    return;
  }
  const size = pending.shift();
  expected = 'edge-guard '.repeat(Math.ceil(size / 11)).slice(0, size);
  ws.send(expected);
}

ws.on('open', () => {
  result.extensions = ws.extensions;
  ws.send('offer?');
});
ws.on('message', (data) => {
  const text = data.toString();
  if (result.offer === null) {
    result.offer = JSON.parse(text).offer;
  } else if (text === expected) {
    result.echoed.push(text.length);
  } else {
    result.error = `echo mismatch: ${text.length} bytes`;
  }
  sendNext();
});
ws.on('close', (code) => {
  result.close = code;
  done();
});
ws.on('error', (e) => {
  result.error = String(e.message || e);
});
setTimeout(() => {
  result.error = 'timeout';
  done();
}, 20000);
