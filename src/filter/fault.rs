//! Fault injection for the end-to-end tests of what no correct Envoy does:
//! only in a wasm built with the `fault-injection` cargo feature (build.sh
//! puts it at its own path), never in the release wasm, where every hook is
//! an `#[inline(always)]` no-op (or a pass-through) that compiles away.
//!
//! Three faults, each triggered by the test's own traffic:
//! - **trap**: a request carrying `x-edge-guard-fault: trap`, or a
//!   request-body chunk (a WebSocket frame from the client) containing
//!   `edge-guard-fault:trap`, makes this VM trap, as an out-of-memory or a bug
//!   would: Envoy then marks the VM failed and applies the plugin's
//!   `failure_policy`. The body marker picks the worker: the one that holds
//!   that connection.
//! - **no-release**: an upgrade carrying `x-edge-guard-fault: no-release`
//!   skips the slot release its stream would do in `on_log`, `on_done` and
//!   on drop, as if Envoy had ended the stream without any of them: only the
//!   root context's reaper can give the slot back.
//! - **unavailable**: a body read whose bytes contain
//!   `edge-guard-fault:unavailable` gets nothing, as from a host that
//!   announced bytes it does not hand over.
//!
//! Client frames are masked: the tests send body markers in frames with an
//! all-zero mask key, so they appear as is.

#[cfg(feature = "fault-injection")]
mod injected {
    use std::cell::RefCell;

    use proxy_wasm::hostcalls;
    use proxy_wasm::types::BufferType;

    const HEADER: &str = "x-edge-guard-fault";
    const TRAP_MARKER: &[u8] = b"edge-guard-fault:trap";
    const UNAVAILABLE_MARKER: &[u8] = b"edge-guard-fault:unavailable";

    thread_local! {
        /// Streams that leave their slot to the reaper (context ids are
        /// never reused within a VM; a test run marks a handful).
        static NO_RELEASE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn trap() -> ! {
        log::warn!("edge-guard: fault injection: trapping this VM");
        core::arch::wasm32::unreachable()
    }

    pub fn on_request_headers(context_id: u32) {
        match super::super::host::request_header(HEADER).as_deref() {
            Some("trap") => trap(),
            Some("no-release") => {
                log::warn!(
                    "edge-guard: fault injection: stream #{context_id} leaves its slot to the reaper"
                );
                NO_RELEASE.with(|ids| ids.borrow_mut().push(context_id));
            }
            _ => {}
        }
    }

    pub fn on_request_body(body_size: usize) {
        // The host's true bytes (not `body_bytes`, which may lie on purpose).
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if contains(&body, TRAP_MARKER) {
            trap();
        }
    }

    pub fn skips_release(context_id: u32) -> bool {
        NO_RELEASE.with(|ids| ids.borrow().contains(&context_id))
    }

    pub fn body_bytes(bytes: Option<Vec<u8>>) -> Option<Vec<u8>> {
        match bytes {
            Some(b) if contains(&b, UNAVAILABLE_MARKER) => {
                log::warn!("edge-guard: fault injection: body bytes reported unavailable");
                None
            }
            other => other,
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use injected::*;

/// Called first in `on_http_request_headers`: traps, or marks the stream.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn on_request_headers(_context_id: u32) {}

/// Called first in `on_http_request_body`: traps on the marker.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn on_request_body(_body_size: usize) {}

/// Whether this stream must not release its slot itself (never, for real).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn skips_release(_context_id: u32) -> bool {
    false
}

/// What a body read returns: the host's answer (or, injected, nothing).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn body_bytes(bytes: Option<Vec<u8>>) -> Option<Vec<u8>> {
    bytes
}
