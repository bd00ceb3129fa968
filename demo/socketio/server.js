// The demo socket.io service (socket.io 4.8), behind edge-guard on a route
// with "engine_io". Environment:
//   HOST (127.0.0.1), PORT (0: any; the port is printed as `LISTENING <port>`),
//   SIO_PATH (/socket.io), PING_INTERVAL_MS (25000), PING_TIMEOUT_MS (20000),
//   PER_MESSAGE_DEFLATE (unset: off; "1": on), NAME (socketio_service).
// Events: "echo" (acknowledged with its argument, or sent back as "echo"
// when the client asked for no acknowledgement),
// "whoami" (acknowledged with the x-user-id it connected with).
// Plain HTTP: GET /health → 200; GET /__stats → JSON of open sessions by user
// and by transport.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const name = process.env.NAME || 'socketio_service';
const httpServer = http.createServer((req, res) => {
  if (req.url === '/health') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', service: name }));
  } else if (req.url === '/__stats') {
    const byUser = {};
    const byTransport = {};
    for (const socket of io.of('/').sockets.values()) {
      const user = socket.handshake.headers['x-user-id'] || '';
      byUser[user] = (byUser[user] || 0) + 1;
      const transport = socket.conn.transport.name;
      byTransport[transport] = (byTransport[transport] || 0) + 1;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ sockets: io.of('/').sockets.size, engine_clients: io.engine.clientsCount, by_user: byUser, by_transport: byTransport }));
  } else if (!res.headersSent && !req.url.startsWith(io.path())) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'not found', service: name }));
  }
});

const io = new Server(httpServer, {
  path: process.env.SIO_PATH || '/socket.io',
  pingInterval: Number(process.env.PING_INTERVAL_MS || 25000),
  pingTimeout: Number(process.env.PING_TIMEOUT_MS || 20000),
  perMessageDeflate: process.env.PER_MESSAGE_DEFLATE === '1',
  serveClient: false,
});

io.on('connection', (socket) => {
  const user = socket.handshake.headers['x-user-id'] || '';
  socket.on('echo', (msg, ack) => {
    if (typeof ack === 'function') ack(msg);
    else socket.emit('echo', msg);
  });
  socket.on('whoami', (ack) => {
    if (typeof ack === 'function') ack(user);
  });
});

httpServer.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
  console.log(`LISTENING ${httpServer.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
