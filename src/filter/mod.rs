//! The host layer: the only code that talks to Envoy through proxy-wasm.
//!
//! Owns callbacks, host calls and the per-worker state that ties root and
//! HTTP contexts together. Never holds a policy rule of its own: it asks the
//! pure modules what to do and carries the answer out. Never keeps a
//! `RefCell` borrow across a host call that can call back into the VM
//! (`send_http_response`, `reset_http_request`), since Envoy may re-enter.

mod endpoints;
mod fault;
mod host;
mod http;
mod metrics;
mod ownership;
mod root;
mod worker;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Info by default so that debug lines cost nothing on the request path;
    // `on_vm_start` raises it when Envoy's wasm logger is at debug.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(root::EdgeGuardRoot::new(context_id))
    });
}}
