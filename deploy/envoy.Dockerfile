# Envoy 1.40 with the edge-guard filter, for deploy/docker-compose.yaml. The
# wasm is built here (nothing needed on the host but Docker) the way
# `./build.sh build` builds it: cargo for wasm32-wasip1, then wasm-opt.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip1 \
 && apt-get update -q && apt-get install -y -q --no-install-recommends binaryen && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --target wasm32-wasip1 -p edge-guard \
 && wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int target/wasm32-wasip1/release/edge_guard.wasm -o /edge_guard.wasm

FROM envoyproxy/envoy:v1.40.0
COPY --from=build /edge_guard.wasm /etc/envoy/edge_guard.wasm
COPY deploy/compose/envoy.yaml /etc/envoy/envoy.yaml
