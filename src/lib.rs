//! edge-guard: a proxy-wasm HTTP filter for Envoy that enforces request deadlines,
//! WebSocket limits and the declared routing table at the edge.
//!
//! Layout: every module except `filter` is pure policy logic with no `proxy_wasm`
//! import, tested natively. `filter` is the thin host layer and only exists in the
//! wasm build.

pub mod budget;
pub mod deadline;
pub mod drain;
pub mod egress;
pub mod engine_io;
pub mod envoy_check;
pub mod headers;
pub mod health;
pub mod json;
pub mod mismatch;
pub mod path;
pub mod policy;
#[cfg(test)]
mod proptests;
pub mod reply;
pub mod routing;
pub mod shared_store;
pub mod status;
pub mod timers;
pub mod upgrade;
pub mod websocket;

#[cfg(target_arch = "wasm32")]
mod filter;
