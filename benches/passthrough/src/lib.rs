//! The minimal proxy-wasm HTTP filter: one request header read, then continue.
//!
//! The benchmark's second reference (after Envoy with no wasm filter at all):
//! what any proxy-wasm filter costs per request before it does anything
//! useful — the VM call into `on_http_request_headers`, one host call, and
//! the context's creation and teardown. It must stay this small; anything
//! added here hides edge-guard's own cost.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PassthroughRoot) });
}}

struct PassthroughRoot;

impl Context for PassthroughRoot {}

impl RootContext for PassthroughRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Passthrough))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Passthrough;

impl Context for Passthrough {}

impl HttpContext for Passthrough {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Read as bytes: the SDK's String variant panics on non-UTF-8 values.
        // The value is unused; reading it is the work being measured.
        let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        Action::Continue
    }
}
