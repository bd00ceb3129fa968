// Drives socket.io-client 4.8 clients from commands on stdin, one JSON object
// a line, and reports what happens as JSON lines on stdout:
//   {"cmd":"connect","id":"a1","user":"alice","transports":["polling","websocket"],"upgrade":true}
//       → {"id":"a1","event":"connect","transport":"polling"}
//       → {"id":"a1","event":"upgrade","transport":"websocket"}
//       → {"id":"a1","event":"connect_error","message":"…","description":429}
//       → {"id":"a1","event":"disconnect","reason":"…"}
//   {"cmd":"emit","id":"a1","count":5}   (echo events with acks, sent at once)
//       → {"id":"a1","event":"acked","count":5}
//   {"cmd":"close","id":"a1"}            → {"id":"a1","event":"closed"}
// Environment: URL (http://host:port), SIO_PATH (/socket.io).
'use strict';
const { io } = require('socket.io-client');
const readline = require('readline');

const url = process.env.URL;
const path = process.env.SIO_PATH || '/socket.io';
const clients = new Map();
const out = (o) => console.log(JSON.stringify(o));

function connect(cmd) {
  const socket = io(url, {
    path,
    transports: cmd.transports || ['polling', 'websocket'],
    upgrade: cmd.upgrade !== false,
    extraHeaders: cmd.user ? { 'x-user-id': cmd.user } : {},
    reconnection: cmd.reconnection !== false,
    reconnectionDelay: 200,
    reconnectionDelayMax: 500,
    timeout: 5000,
    forceNew: true,
  });
  clients.set(cmd.id, socket);
  socket.io.on('open', () => {
    socket.io.engine.once('upgrade', (t) => out({ id: cmd.id, event: 'upgrade', transport: t.name }));
  });
  socket.on('connect', () => {
    out({ id: cmd.id, event: 'connect', transport: socket.io.engine.transport.name });
  });
  socket.on('connect_error', (err) => {
    out({ id: cmd.id, event: 'connect_error', message: String(err.message), description: typeof err.description === 'number' ? err.description : String(err.description || '') });
  });
  socket.on('disconnect', (reason) => out({ id: cmd.id, event: 'disconnect', reason }));
}

function emit(cmd) {
  const socket = clients.get(cmd.id);
  let acked = 0;
  for (let i = 0; i < cmd.count; i++) {
    socket.emit('echo', { i }, () => {
      acked += 1;
      if (acked === cmd.count) out({ id: cmd.id, event: 'acked', count: acked });
    });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'connect') connect(cmd);
  else if (cmd.cmd === 'emit') emit(cmd);
  else if (cmd.cmd === 'close') {
    const socket = clients.get(cmd.id);
    if (socket) socket.close();
    out({ id: cmd.id, event: 'closed' });
  }
}).on('close', () => process.exit(0));
out({ event: 'ready' });
