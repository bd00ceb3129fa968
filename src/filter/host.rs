//! Host calls wrapped once: shared data as a `SharedStore`, the clock,
//! headers, properties and local replies, with host statuses turned into
//! values instead of panics wherever the SDK allows it.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::headers::{HeaderPairs, UpgradeAnswer};
use crate::reply::LocalReply;
use crate::shared_store::{SharedStore, StoreError};

/// Envoy's shared data for this `vm_id`.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            // A key that exists with an empty value.
            Ok((None, Some(cas))) => Ok(Some((Vec::new(), cas))),
            Ok((_, None)) => Ok(None),
            Err(status) => Err(StoreError::Host(status as u32)),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let cas = (cas != 0).then_some(cas);
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Host(status as u32)),
        }
    }
}

/// Milliseconds since the epoch, from Envoy's clock.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[link(wasm_import_module = "env")]
extern "C" {
    // The ABI function behind the SDK's `get_map_bytes`, called directly so
    // that the map is read in place instead of copied into a String and a
    // Vec per header.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    // Behind the SDK's `get_property`, called with a path serialized at
    // compile time (the SDK builds a Vec per call, and panics on a status
    // it does not expect).
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// The cluster Envoy's route chose for this stream (`xds.cluster_name`).
/// Only valid from the request headers on.
pub fn cluster_name() -> Option<Vec<u8>> {
    const PATH: &[u8] = b"xds\0cluster_name";
    handed_over(|data, size| {
        // SAFETY: PATH outlives the call; the out-parameters are valid.
        unsafe { proxy_get_property(PATH.as_ptr(), PATH.len(), data, size) }
    })
}

/// The buffer a host call hands over through its out-parameters, if it
/// succeeded and gave one.
fn handed_over(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    if call(&mut data, &mut size) != Status::Ok || data.is_null() {
        return None;
    }
    // SAFETY: on success the host hands over a buffer of `size` bytes that it
    // allocated through this module's `proxy_on_memory_allocate` (the SDK's
    // allocator), so this module owns it and frees it as a Vec.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A whole header map from one host call, serialized (see `headers`).
fn header_map(map: MapType) -> Option<Vec<u8>> {
    handed_over(|data, size| {
        // SAFETY: the out-parameters are valid.
        unsafe { proxy_get_header_map_pairs(map, data, size) }
    })
}

/// The request headers from one host call, serialized: `RequestHead::read`
/// borrows from them (empty when Envoy has none to give). Only valid during
/// request callbacks.
pub fn request_headers() -> Vec<u8> {
    header_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// The upstream's answer to an upgrade, from one host call. Only valid
/// during response callbacks.
pub fn upgrade_answer() -> UpgradeAnswer {
    match header_map(MapType::HttpResponseHeaders) {
        Some(bytes) => UpgradeAnswer::from_pairs(HeaderPairs::new(&bytes)),
        None => UpgradeAnswer::default(),
    }
}

/// A request header by lookup: only for the fault-injection build (on the
/// request path a lookup of a header Envoy does not inline makes it index
/// the header map for the stream's life; `request_headers` reads them all).
#[cfg(feature = "fault-injection")]
pub fn request_header(name: &str) -> Option<String> {
    header_text(MapType::HttpRequestHeaders, name)
}

/// A response header as text; only valid during response callbacks.
pub fn response_header(name: &str) -> Option<String> {
    header_text(MapType::HttpResponseHeaders, name)
}

fn header_text(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    Some(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

pub fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

/// A property as UTF-8 text (`xds.cluster_name`, `source.address`, ...).
pub fn property_text(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

pub fn send_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
}

pub fn body_bytes(buffer: BufferType, start: usize, len: usize) -> Option<Vec<u8>> {
    super::fault::body_bytes(hostcalls::get_buffer(buffer, start, len).ok().flatten())
}

pub fn replace_body(buffer: BufferType, start: usize, len: usize, value: &[u8]) {
    let _ = hostcalls::set_buffer(buffer, start, len, value);
}
