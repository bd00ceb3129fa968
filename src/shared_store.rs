//! The host's shared-data map, abstracted: one key → bytes map per `vm_id`, shared by
//! every worker thread, each value carrying a CAS number.
//!
//! Owns: the [`SharedStore`] trait (the only way pure modules touch shared data), the
//! [`StoreError`] domain error, and [`MemoryStore`], an in-memory model with exactly the
//! host's semantics plus hooks to inject interleavings from "other workers" in tests.
//!
//! Must never: import `proxy_wasm` (the host layer implements the trait over hostcalls),
//! or hide a CAS mismatch from its caller (the read-modify-write loops built on top are
//! only exact if every mismatch is seen).
//!
//! Semantics (verified on our Envoy, modelled exactly by [`MemoryStore`]):
//! - `get` returns the value and its cas, or not-found;
//! - `set` with cas 0 writes unconditionally; with cas != 0 on an existing key whose cas
//!   differs it fails with [`StoreError::CasMismatch`];
//! - **on a key that does not exist yet the cas is ignored and the key is created**, so
//!   two workers racing to create a key both "succeed" and the last one wins;
//! - every successful write gives the key a fresh cas, never 0;
//! - keys cannot be removed: "removal" leaves an empty value behind.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;

/// Access to the shared-data map. Implemented over hostcalls by the host layer and by
/// [`MemoryStore`] natively.
///
/// Host layer note: the SDK's `get_shared_data` returns `(None, Some(cas))` for a key
/// that exists with an EMPTY value; that must map to `Ok(Some((vec![], cas)))`, and only
/// `(None, None)` to `Ok(None)`.
pub trait SharedStore {
    /// `Ok(None)` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// cas 0 writes unconditionally. A missing key is created whatever the cas.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;

    /// Creates `key` with `value` only if it does not exist yet, atomically;
    /// returns whether this call created it. Built on the two semantics
    /// above: a write with a cas the host never hands out fails on any
    /// existing key, and on a missing key the cas is ignored. (Envoy's cas
    /// counter would have to wrap round to exactly [`NEVER_ISSUED_CAS`] on
    /// this very key for it to overwrite.) Unlike get-then-set, two workers
    /// racing here cannot both create.
    fn create_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        match self.set(key, value, NEVER_ISSUED_CAS) {
            Ok(()) => Ok(true),
            Err(StoreError::CasMismatch) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A cas value no write is given in practice (the host counts up from 1).
pub const NEVER_ISSUED_CAS: u32 = u32::MAX;

/// Why a shared-data operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The key was written by someone else since our `get`: re-read and retry.
    CasMismatch,
    /// The host returned this unexpected proxy-wasm status code.
    Host(u32),
    /// A key that must have been created up front does not exist (produced by users of
    /// the store, never by `get`, which reports a missing key as `Ok(None)`).
    MissingKey,
    /// A stored value is not in the format its owner writes (produced by users of the
    /// store).
    Corrupt,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("shared data cas mismatch"),
            StoreError::Host(status) => write!(f, "shared data host error (status {status})"),
            StoreError::MissingKey => f.write_str("shared data key missing (not created up front)"),
            StoreError::Corrupt => f.write_str("shared data value has an unexpected format"),
        }
    }
}

impl std::error::Error for StoreError {}

impl<S: SharedStore + ?Sized> SharedStore for &S {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
}

/// Called before every [`MemoryStore::set`] with the store and the key being written.
/// It may write to the store itself (as "another worker" would between our get and our
/// set); it is not re-entered while it runs. Returning `Some(error)` makes that set fail
/// with `error` without writing.
pub type BeforeSetHook = Box<dyn FnMut(&MemoryStore, &str) -> Option<StoreError>>;

/// In-memory [`SharedStore`] with exactly the host's semantics, single-threaded.
/// Public (not `cfg(test)`) so every module's tests can use it; unused in the wasm.
#[derive(Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    last_cas: Cell<u32>,
    writes: Cell<u64>,
    reads: Cell<u64>,
    before_set: RefCell<Option<BeforeSetHook>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.borrow().len())
            .field("writes", &self.writes.get())
            .finish()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn next_cas(&self) -> u32 {
        let next = match self.last_cas.get().wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.last_cas.set(next);
        next
    }

    /// Simulates another worker rewriting `key` with the same value: its cas changes, so
    /// the next `set` with the old cas fails. Returns false if the key does not exist.
    pub fn bump(&self, key: &str) -> bool {
        let cas = self.next_cas();
        match self.entries.borrow_mut().get_mut(key) {
            Some(entry) => {
                entry.1 = cas;
                true
            }
            None => false,
        }
    }

    /// Installs the hook run before every `set` (replacing any previous one).
    pub fn set_before_set_hook(
        &self,
        hook: impl FnMut(&MemoryStore, &str) -> Option<StoreError> + 'static,
    ) {
        *self.before_set.borrow_mut() = Some(Box::new(hook));
    }

    pub fn clear_before_set_hook(&self) {
        *self.before_set.borrow_mut() = None;
    }

    /// The current value of `key`, without its cas.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.borrow().get(key).map(|(v, _)| v.clone())
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Sum of key and value lengths: what the map costs.
    pub fn total_bytes(&self) -> usize {
        self.entries
            .borrow()
            .iter()
            .map(|(k, (v, _))| k.len().saturating_add(v.len()))
            .fold(0usize, usize::saturating_add)
    }

    /// Number of successful writes so far.
    pub fn write_count(&self) -> u64 {
        self.writes.get()
    }

    /// Number of reads (`get`) so far.
    pub fn read_count(&self) -> u64 {
        self.reads.get()
    }

    fn run_hook(&self, key: &str) -> Option<StoreError> {
        // Take the hook out while it runs so it can use the store (and is not re-entered).
        let taken = self.before_set.borrow_mut().take();
        let mut hook = taken?;
        let result = hook(self, key);
        let mut slot = self.before_set.borrow_mut();
        if slot.is_none() {
            *slot = Some(hook);
        }
        result
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.reads.set(self.reads.get().saturating_add(1));
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some(error) = self.run_hook(key) {
            return Err(error);
        }
        let current = self.entries.borrow().get(key).map(|(_, c)| *c);
        if let Some(current) = current {
            if cas != 0 && cas != current {
                return Err(StoreError::CasMismatch);
            }
        }
        // Missing key: the cas is ignored and the key is created (host behaviour).
        let new_cas = self.next_cas();
        self.entries
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), new_cas));
        self.writes.set(self.writes.get().saturating_add(1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn get_missing_key_is_none() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k").unwrap(), None);
    }

    #[test]
    fn set_cas_zero_creates_and_overwrites() {
        let store = MemoryStore::new();
        store.set("k", b"a", 0).unwrap();
        let (v, cas1) = store.get("k").unwrap().unwrap();
        assert_eq!(v, b"a");
        assert_ne!(cas1, 0);
        store.set("k", b"b", 0).unwrap();
        let (v, cas2) = store.get("k").unwrap().unwrap();
        assert_eq!(v, b"b");
        assert_ne!(cas2, cas1);
    }

    #[test]
    fn set_with_current_cas_succeeds_and_changes_cas() {
        let store = MemoryStore::new();
        store.set("k", b"a", 0).unwrap();
        let (_, cas) = store.get("k").unwrap().unwrap();
        store.set("k", b"b", cas).unwrap();
        let (v, new_cas) = store.get("k").unwrap().unwrap();
        assert_eq!(v, b"b");
        assert_ne!(new_cas, cas);
        assert_ne!(new_cas, 0);
    }

    #[test]
    fn set_with_stale_cas_is_mismatch_and_keeps_value() {
        let store = MemoryStore::new();
        store.set("k", b"a", 0).unwrap();
        let (_, cas) = store.get("k").unwrap().unwrap();
        store.set("k", b"b", cas).unwrap();
        assert_eq!(store.set("k", b"c", cas), Err(StoreError::CasMismatch));
        assert_eq!(store.value("k").unwrap(), b"b");
    }

    #[test]
    fn set_on_missing_key_ignores_cas_and_creates() {
        let store = MemoryStore::new();
        store.set("k", b"first", 12345).unwrap();
        assert_eq!(store.value("k").unwrap(), b"first");
    }

    #[test]
    fn racing_creates_both_succeed_and_last_wins() {
        let store = MemoryStore::new();
        // Both workers saw "not found", then both create.
        assert_eq!(store.get("k").unwrap(), None);
        store.set("k", b"worker1", 0).unwrap();
        store.set("k", b"worker2", 0).unwrap();
        assert_eq!(store.value("k").unwrap(), b"worker2");
    }

    #[test]
    fn empty_value_is_an_existing_key() {
        let store = MemoryStore::new();
        store.set("k", b"", 0).unwrap();
        let (v, cas) = store.get("k").unwrap().unwrap();
        assert!(v.is_empty());
        assert_ne!(cas, 0);
    }

    #[test]
    fn bump_makes_next_set_with_old_cas_fail() {
        let store = MemoryStore::new();
        store.set("k", b"a", 0).unwrap();
        let (_, cas) = store.get("k").unwrap().unwrap();
        assert!(store.bump("k"));
        assert_eq!(store.set("k", b"b", cas), Err(StoreError::CasMismatch));
        assert_eq!(store.value("k").unwrap(), b"a");
        assert!(!store.bump("missing"));
    }

    #[test]
    fn hook_can_write_between_get_and_set_without_reentry() {
        let store = MemoryStore::new();
        store.set("k", b"a", 0).unwrap();
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        store.set_before_set_hook(move |s, key| {
            c.set(c.get() + 1);
            // This nested set does not re-run the hook.
            s.set(key, b"other", 0).unwrap();
            None
        });
        let (_, cas) = store.get("k").unwrap().unwrap();
        assert_eq!(store.set("k", b"mine", cas), Err(StoreError::CasMismatch));
        assert_eq!(calls.get(), 1);
        assert_eq!(store.value("k").unwrap(), b"other");
        store.clear_before_set_hook();
        let (_, cas) = store.get("k").unwrap().unwrap();
        store.set("k", b"mine", cas).unwrap();
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn hook_can_inject_host_error() {
        let store = MemoryStore::new();
        store.set_before_set_hook(|_, _| Some(StoreError::Host(2)));
        assert_eq!(store.set("k", b"a", 0), Err(StoreError::Host(2)));
        assert_eq!(store.get("k").unwrap(), None);
    }

    #[test]
    fn works_through_a_dyn_reference() {
        let store = MemoryStore::new();
        let dyn_store: &dyn SharedStore = &store;
        dyn_store.set("k", b"v", 0).unwrap();
        assert_eq!(store.keys(), vec!["k".to_owned()]);
        assert_eq!(store.total_bytes(), 2);
        assert_eq!(store.write_count(), 1);
        assert_eq!(store.read_count(), 0);
        let _ = dyn_store.get("k").unwrap();
        assert_eq!(store.read_count(), 1);
    }

    #[test]
    fn a_reference_is_a_store_over_the_same_entries() {
        // Code generic over `S: SharedStore` is handed `&store` (or a `&dyn`):
        // reads and writes through it are the store's own.
        fn write_then_read<S: SharedStore>(s: S) -> Option<(Vec<u8>, u32)> {
            s.set("k", b"v", 0).unwrap();
            s.get("k").unwrap()
        }
        let store = MemoryStore::new();
        let (value, cas) = write_then_read(&store).unwrap();
        assert_eq!(value, b"v");
        assert_eq!(store.get("k").unwrap(), Some((b"v".to_vec(), cas)));
        let dyn_store: &dyn SharedStore = &store;
        let (value, cas2) = write_then_read(dyn_store).unwrap();
        assert_eq!(value, b"v");
        assert_ne!(cas2, cas);
        assert_eq!(store.get("k").unwrap(), Some((b"v".to_vec(), cas2)));
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(
            StoreError::Host(7).to_string(),
            "shared data host error (status 7)"
        );
        assert_eq!(
            StoreError::CasMismatch.to_string(),
            "shared data cas mismatch"
        );
    }

    #[test]
    fn debug_shows_the_size_not_the_contents() {
        let store = MemoryStore::new();
        store.set("k", b"secret", 0).unwrap();
        store.set("k", b"secret", 0).unwrap();
        let debug = format!("{store:?}");
        assert_eq!(debug, "MemoryStore { entries: 1, writes: 2 }");
    }
}

#[cfg(test)]
mod create_if_absent_tests {
    use super::*;

    #[test]
    fn creates_once_and_never_overwrites() {
        let store = MemoryStore::new();
        assert_eq!(store.create_if_absent("k", b"first"), Ok(true));
        assert_eq!(store.create_if_absent("k", b"second"), Ok(false));
        assert_eq!(store.value("k"), Some(b"first".to_vec()));
    }

    #[test]
    fn a_racing_creator_cannot_reset_a_raised_count() {
        // Worker A creates the key and raises it; worker B, configuring late,
        // must not put the zero back (get-then-set would).
        let store = MemoryStore::new();
        assert_eq!(store.create_if_absent("count", b"0"), Ok(true));
        let (_, cas) = store.get("count").unwrap().unwrap();
        store.set("count", b"1", cas).unwrap();
        assert_eq!(store.create_if_absent("count", b"0"), Ok(false));
        assert_eq!(store.value("count"), Some(b"1".to_vec()));
    }
}
