//! WebSocket accounting and frame parsing, all pure (no `proxy_wasm` import).
//!
//! Owns: admission of upgrades against instance/route/user connection limits across
//! workers ([`slots`]), the RFC 6455 frame scanner ([`frame`]) and the per-connection
//! limits enforced on the scanned frames ([`monitor`]), and when compressed frames are
//! legal ([`compression`]).
//!
//! Must never: talk to the host directly. The host layer hands in a
//! [`SharedStore`](crate::shared_store::SharedStore), [`ChunkSource`]s and the time, and
//! acts on the returned decisions (reply codes, close frames, timers).

pub mod compression;
pub mod frame;
pub mod monitor;
pub mod ownership;
pub mod slots;

pub use frame::{
    ChunkSource, Frame, FrameError, FrameScanner, Opcode, ScanError, Sender, SliceSource,
};
pub use monitor::{
    close_frame, CloseReason, ConnectionLimits, ConnectionMonitor, Direction, Verdict,
};
pub use slots::{
    ensure_keys, read_counts, release, try_acquire, Admission, AdmissionRequest, Rejection,
    WsCounts,
};
