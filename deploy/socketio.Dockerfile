# The demo socket.io service (demo/socketio/server.js) for deploy/docker-compose.yaml,
# with the Node packages its package-lock pins.
FROM node:20.18.1-slim
WORKDIR /app
COPY demo/socketio/package.json demo/socketio/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY demo/socketio/server.js ./
USER node
CMD ["node", "server.js"]
