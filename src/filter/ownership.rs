//! This VM's generation of slot ownership (see `websocket::ownership`): one
//! ledger per VM, shared by every root context the VM runs (a policy change
//! through ECDS adds a root context to the same VM).
//!
//! Owns the VM-wide `Owner`, its registration, heartbeat and clean
//! retirement, and the reaper's schedule. Never decides anything itself:
//! the pure module says what is stale and what to give back.

use std::cell::{Cell, RefCell};

use crate::websocket::ownership::{self, Owner, Reaped, Written, REAP_EVERY_MS};
use crate::websocket::slots::Admission;

use super::host::HostStore;

thread_local! {
    // One wasm VM is one thread: these are per VM.
    static OWNER: RefCell<Option<Owner>> = const { RefCell::new(None) };
    static ROOTS: Cell<u32> = const { Cell::new(0) };
    static NEXT_REAP_MS: Cell<u64> = const { Cell::new(0) };
    static LAST_TICK_MS: Cell<u64> = const { Cell::new(0) };
}

/// A root context of this VM configured. The generation itself is
/// registered with the VM's first slot: a VM that never holds one (Envoy's
/// main thread) has nothing to recover and never shows as failed.
pub fn root_configured() {
    ROOTS.with(|r| r.set(r.get().saturating_add(1)));
}

/// A root context of this VM is done; the last one retires the generation.
pub fn root_done() {
    let left = ROOTS.with(|r| {
        let left = r.get().saturating_sub(1);
        r.set(left);
        left
    });
    if left == 0 {
        OWNER.with(|owner| {
            if let Some(o) = owner.borrow_mut().as_mut() {
                if let Err(e) = o.retire(&HostStore) {
                    log::warn!("edge-guard: retiring slot ownership: {e}");
                }
            }
        });
    }
}

fn with_owner(
    what: &str,
    f: impl FnOnce(&mut Owner) -> Result<Written, ownership::OwnershipError>,
) {
    OWNER.with(|owner| {
        if let Some(o) = owner.borrow_mut().as_mut() {
            match f(o) {
                Ok(Written::Reregistered) => log::warn!(
                    "edge-guard: this VM missed its heartbeat and was declared dead; registered again as generation {} with its slots counted back",
                    o.generation()
                ),
                Ok(_) => {}
                Err(e) => log::warn!("edge-guard: slot ownership ({what}): {e}"),
            }
        }
    });
}

pub fn acquired(admission: &Admission, now_ms: u64) {
    OWNER.with(|owner| {
        let mut owner = owner.borrow_mut();
        if owner.is_none() {
            match Owner::register(&HostStore, now_ms) {
                Ok(o) => {
                    log::debug!("edge-guard: slot-ownership generation {}", o.generation());
                    *owner = Some(o);
                }
                Err(e) => log::error!(
                    "edge-guard: cannot register slot ownership ({e}); this VM's slots will not be recovered if it fails"
                ),
            }
        }
    });
    with_owner("acquire", |o| o.acquired(&HostStore, admission, now_ms));
}

pub fn released(admission: &Admission, now_ms: u64) {
    with_owner("release", |o| o.released(&HostStore, admission, now_ms));
}

/// Every tick: beat when due, and reap dead generations every
/// `REAP_EVERY_MS`. Returns what was reclaimed, for the caller's metrics.
pub fn tick(now_ms: u64) -> Vec<Reaped> {
    let last_tick = LAST_TICK_MS.with(|t| t.replace(now_ms));
    with_owner("heartbeat", |o| o.heartbeat(&HostStore, now_ms));
    if !ownership::may_reap(last_tick, now_ms) {
        // Paused with the whole process: give the others one reap period
        // to beat again before judging them.
        NEXT_REAP_MS.with(|n| n.set(now_ms.saturating_add(REAP_EVERY_MS)));
        return Vec::new();
    }
    if now_ms < NEXT_REAP_MS.with(Cell::get) {
        return Vec::new();
    }
    NEXT_REAP_MS.with(|n| n.set(now_ms.saturating_add(REAP_EVERY_MS)));
    let own = OWNER.with(|o| o.borrow().as_ref().map(Owner::generation));
    match ownership::reap(&HostStore, now_ms, own) {
        Ok(reaped) => reaped,
        Err(e) => {
            log::warn!("edge-guard: reaping dead VMs' slots: {e}");
            Vec::new()
        }
    }
}
