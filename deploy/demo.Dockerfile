FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p edge-guard-demo

FROM debian:12.8-slim
COPY --from=build /src/target/release/demo-upstream /usr/local/bin/demo-upstream
