//! The edge-guard end-to-end harness: a real Envoy (`.venv/bin/envoy`, V8) with
//! the built filter (`target/wasm32-wasip1/release/edge_guard.wasm`) in front of
//! real demo upstreams, all on OS-chosen loopback ports so tests run in parallel.
//!
//! ```no_run
//! use edge_guard_e2e::*;
//! let up = Upstream::start("course_service");
//! let envoy = Envoy::builder(serde_json::json!({"routes": [
//!     {"name": "courses", "prefix": "/api/courses", "cluster": "course_service"}]}))
//!     .upstream(&up)
//!     .start();
//! let resp = envoy.get("/api/courses/7");
//! assert_eq!(resp.status, 200, "{resp:?}");
//! ```
//!
//! Each `Envoy` lives in its own temp dir (`envoy.yaml`, `envoy.log`, stdout/stderr);
//! if the test panics, dropping it prints the log tail and keeps the dir
//! (set `EDGE_GUARD_KEEP_TMP=1` to always keep it). Every process runs in its
//! own process group with a parent-death signal, so nothing outlives a killed
//! test binary (`process`); each is killed with its group and waited on drop.
//! Missing Envoy or wasm is a hard failure, and so is a wasm older than the
//! sources it was built from: run `./build.sh test`. Overrides: `EDGE_GUARD_ENVOY`, `EDGE_GUARD_WASM`,
//! `EDGE_GUARD_UPSTREAM_BIN`.

pub mod envoy;
pub mod http;
pub mod net;
pub mod paths;
pub mod process;
pub mod scripts;
pub mod tools;
pub mod upstream;
pub mod ws;

pub use envoy::{Envoy, EnvoyBuilder, Policy, StartFailure};
pub use http::{Request, Response, SlowUpload};
pub use net::ClosedPort;
pub use process::Guarded;
pub use scripts::ScriptProcess;
pub use upstream::Upstream;
pub use ws::{raw_frame, UpgradeRejected, WsClient, WsEvent};

pub use serde_json::{json, Value};
