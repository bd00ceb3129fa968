//! Fault injection for the VM-failure tests: only in a wasm built with the
//! `fault-injection` cargo feature (build.sh puts it at its own path), never
//! in the release wasm.
//!
//! A request carrying `x-edge-guard-fault: trap`, or a request-body chunk
//! (a WebSocket frame from the client) containing `edge-guard-fault:trap`,
//! makes this VM trap, as an out-of-memory or a bug would: Envoy then marks
//! the VM failed and applies the plugin's `failure_policy`. The body marker
//! picks the worker: the one that holds that connection.

#[cfg(feature = "fault-injection")]
pub fn on_request_headers() {
    if super::host::request_header("x-edge-guard-fault").as_deref() == Some("trap") {
        log::warn!("edge-guard: fault injection: trapping this VM");
        core::arch::wasm32::unreachable();
    }
}

#[cfg(feature = "fault-injection")]
pub fn on_request_body(body_size: usize) {
    const MARKER: &[u8] = b"edge-guard-fault:trap";
    let body =
        super::host::body_bytes(proxy_wasm::types::BufferType::HttpRequestBody, 0, body_size)
            .unwrap_or_default();
    // Client frames are masked: the test sends the marker in a frame with an
    // all-zero mask key, so it appears as is.
    if body.windows(MARKER.len()).any(|w| w == MARKER) {
        log::warn!("edge-guard: fault injection: trapping this VM");
        core::arch::wasm32::unreachable();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn on_request_headers() {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn on_request_body(_body_size: usize) {}
