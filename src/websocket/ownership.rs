//! Who holds the WebSocket slots: a ledger per VM generation, so that the slots of a VM
//! that died (a trap, an out-of-memory, a panic) come back by themselves.
//!
//! Owns: the shared-data keys under `eg.own.` (the owner-slot pool and the generation
//! counter), the ledger format, the heartbeat, and the reaper's rule for declaring a
//! generation dead and giving its slots back.
//!
//! Must never: write another generation's ledger except to free it with a CAS on the
//! exact stale value it read (so two reapers, or a reaper and a late owner, can never
//! both act on it), release a ledger's slots more than once, or grow without a bound
//! (ledger keys are a pool reused after a generation is reaped or retires).
//!
//! How it works. Every VM (one per Envoy worker, plus the main thread's) registers a
//! generation: a fresh number from `eg.own.generation` and a free key `eg.own.<n>` of
//! the pool (`eg.own.slots` counts the keys ever made). The ledger in that key lists
//! what the generation holds (instance, per route, per counted user) and when it last
//! beat. The host layer records every admission and release in it right after the
//! shared counts change, and beats every [`HEARTBEAT_MS`]. Any live VM's reaper frees a
//! ledger whose beat is older than [`STALE_AFTER_MS`] and subtracts its holdings from
//! the shared counts. Envoy resets a failed VM's streams at their next frame (verified
//! on 1.40 with `FAIL_RELOAD` and `FAIL_CLOSED`): the connections that held those slots
//! carry nothing any more. A VM that was only slow, and finds its ledger freed, registers
//! again and adds its holdings back ([`Written::Reregistered`]).
//!
//! Ledger format (version byte `1`): u64 LE generation, u64 LE heartbeat ms, u32 LE
//! instance count, u16 LE route count then per route `u16 LE len, name, u32 LE count`,
//! u32 LE user count then per user `u16 LE len, id, u32 LE count`. An empty value is a
//! free key; the single byte `0` is a generation that retired cleanly.

use std::collections::BTreeMap;
use std::fmt;

use super::slots::{self, Admission};
use crate::shared_store::{SharedStore, StoreError};

/// Key counting the pool keys ever made (`eg.own.0` .. `eg.own.<n-1>`).
pub const POOL_SIZE_KEY: &str = "eg.own.slots";
/// Key of the last generation number handed out.
pub const GENERATION_KEY: &str = "eg.own.generation";
/// Prefix of the pool keys.
pub const LEDGER_KEY_PREFIX: &str = "eg.own.";
/// A live generation rewrites its ledger at least this often.
pub const HEARTBEAT_MS: u64 = 1_000;
/// A ledger whose heartbeat is older than this belongs to a dead VM.
pub const STALE_AFTER_MS: u64 = 4_000;
/// How often each VM runs the reaper. A dead VM's slots are back within
/// `STALE_AFTER_MS + REAP_EVERY_MS` (plus one tick) of its last heartbeat.
pub const REAP_EVERY_MS: u64 = 1_000;
/// A VM whose own ticks stopped for this long was paused with its whole
/// process (SIGSTOP, a hypervisor pause, heavy swapping): on its first tick
/// after that, every other VM's heartbeat looks stale for the same reason.
pub const PAUSED_AFTER_MS: u64 = 1_000;

/// Whether this VM's reaper may judge other generations at `now_ms`, given
/// when it last ticked (0: never). Not on its first tick, nor on the first
/// tick after a pause of its own: the others were most likely paused with it
/// and beat again on their next tick, well before the next reap is due.
pub fn may_reap(last_tick_ms: u64, now_ms: u64) -> bool {
    last_tick_ms != 0 && now_ms.saturating_sub(last_tick_ms) < PAUSED_AFTER_MS
}

/// Upper bound of the pool: far above workers × VM generations alive at once.
pub const MAX_POOL: u32 = 1_024;

const LEDGER_VERSION: u8 = 1;
const RETIRED: &[u8] = &[0];
const ATTEMPTS: u32 = 100;

/// What one generation holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub instance: u32,
    pub routes: BTreeMap<String, u32>,
    pub users: BTreeMap<String, u32>,
}

impl Holdings {
    pub fn add(&mut self, admission: &Admission) {
        self.instance = self.instance.saturating_add(1);
        let route = self.routes.entry(admission.route().to_owned()).or_default();
        *route = route.saturating_add(1);
        if let Some(user) = admission.counted_user() {
            let count = self.users.entry(user.to_owned()).or_default();
            *count = count.saturating_add(1);
        }
    }

    pub fn remove(&mut self, admission: &Admission) {
        self.instance = self.instance.saturating_sub(1);
        decrement_entry(&mut self.routes, admission.route());
        if let Some(user) = admission.counted_user() {
            decrement_entry(&mut self.users, user);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.instance == 0 && self.routes.is_empty() && self.users.is_empty()
    }

    /// Adds (`sign` 1) or subtracts (`sign` -1) these holdings to/from the shared
    /// counts. Tries every count and returns the first error.
    fn apply_to_counts<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        sign: i64,
    ) -> Result<(), StoreError> {
        let mut result =
            slots::adjust_count(store, slots::INSTANCE_KEY, sign * i64::from(self.instance));
        for (route, n) in &self.routes {
            let r = slots::adjust_count(store, &slots::route_key(route), sign * i64::from(*n));
            result = result.and(r);
        }
        for (user, n) in &self.users {
            result = result.and(slots::adjust_user(store, user, sign * i64::from(*n)));
        }
        result
    }
}

fn decrement_entry(map: &mut BTreeMap<String, u32>, key: &str) {
    if let Some(count) = map.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// One generation's ledger as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub generation: u64,
    pub heartbeat_ms: u64,
    pub holdings: Holdings,
}

impl Ledger {
    pub fn encode(&self) -> Vec<u8> {
        encode_ledger(self.generation, self.heartbeat_ms, &self.holdings)
    }

    pub fn decode(bytes: &[u8]) -> Option<Ledger> {
        let mut r = Reader(bytes);
        if r.take::<1>()? != [LEDGER_VERSION] {
            return None;
        }
        let generation = u64::from_le_bytes(r.take()?);
        let heartbeat_ms = u64::from_le_bytes(r.take()?);
        let instance = u32::from_le_bytes(r.take()?);
        let mut holdings = Holdings {
            instance,
            ..Holdings::default()
        };
        for _ in 0..u16::from_le_bytes(r.take()?) {
            let (name, n) = r.named()?;
            holdings.routes.insert(name, n);
        }
        for _ in 0..u32::from_le_bytes(r.take()?) {
            let (id, n) = r.named()?;
            holdings.users.insert(id, n);
        }
        r.0.is_empty().then_some(Ledger {
            generation,
            heartbeat_ms,
            holdings,
        })
    }
}

fn encode_ledger(generation: u64, heartbeat_ms: u64, holdings: &Holdings) -> Vec<u8> {
    let mut out = vec![LEDGER_VERSION];
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&heartbeat_ms.to_le_bytes());
    out.extend_from_slice(&holdings.instance.to_le_bytes());
    let routes = u16::try_from(holdings.routes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&routes.to_le_bytes());
    for (name, n) in holdings.routes.iter().take(usize::from(routes)) {
        push_named(&mut out, name, *n);
    }
    let users = u32::try_from(holdings.users.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&users.to_le_bytes());
    for (id, n) in &holdings.users {
        push_named(&mut out, id, *n);
    }
    out
}

/// The generation a stored ledger belongs to, read from its head only.
fn generation_of(bytes: &[u8]) -> Option<u64> {
    let mut r = Reader(bytes);
    (r.take::<1>()? == [LEDGER_VERSION]).then_some(())?;
    Some(u64::from_le_bytes(r.take()?))
}

fn push_named(out: &mut Vec<u8>, name: &str, n: u32) {
    // Route names are at most 64 bytes and user ids at most 256 (slots enforces it).
    let bytes = name.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
    out.extend_from_slice(&n.to_le_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let head: [u8; N] = self.0.get(..N)?.try_into().ok()?;
        self.0 = self.0.get(N..)?;
        Some(head)
    }

    fn named(&mut self) -> Option<(String, u32)> {
        let len = usize::from(u16::from_le_bytes(self.take()?));
        let name = String::from_utf8(self.0.get(..len)?.to_vec()).ok()?;
        self.0 = self.0.get(len..)?;
        Some((name, u32::from_le_bytes(self.take()?)))
    }
}

/// Why ownership bookkeeping failed. The admission itself stands either way: only the
/// recovery of its slot after a VM failure is at stake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnershipError {
    Store(StoreError),
    /// Every key of the pool is held by a live generation.
    PoolFull,
    /// Still losing CAS races after the bounded attempts.
    Contention,
}

impl fmt::Display for OwnershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnershipError::Store(e) => write!(f, "{e}"),
            OwnershipError::PoolFull => write!(
                f,
                "all {MAX_POOL} slot-ownership ledgers are held by live VMs"
            ),
            OwnershipError::Contention => f.write_str("shared data contention, gave up"),
        }
    }
}

impl std::error::Error for OwnershipError {}

impl From<StoreError> for OwnershipError {
    fn from(e: StoreError) -> Self {
        OwnershipError::Store(e)
    }
}

/// How a ledger write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Written,
    /// Nothing to write yet (a heartbeat before it is due).
    NotDue,
    /// A reaper had declared this generation dead (it was too slow to beat): it
    /// registered again and put its holdings back into the shared counts.
    Reregistered,
}

/// The ledger of this VM's generation, kept in memory and mirrored to shared data.
#[derive(Debug)]
pub struct Owner {
    key: String,
    generation: u64,
    holdings: Holdings,
    written_ms: u64,
}

pub fn ledger_key(slot: u32) -> String {
    format!("{LEDGER_KEY_PREFIX}{slot}")
}

fn read_u64<S: SharedStore + ?Sized>(store: &S, key: &str) -> Result<(u64, u32), StoreError> {
    match store.get(key)? {
        None => Ok((0, 0)),
        Some((value, cas)) if value.is_empty() => Ok((0, cas)),
        Some((value, cas)) => std::str::from_utf8(&value)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(|n| (n, cas))
            .ok_or(StoreError::Corrupt),
    }
}

/// Adds one to the decimal counter at `key` (created on first use) and returns the new
/// value.
fn next_number<S: SharedStore + ?Sized>(store: &S, key: &str) -> Result<u64, OwnershipError> {
    store.create_if_absent(key, b"0")?;
    for _ in 0..ATTEMPTS {
        let (n, cas) = read_u64(store, key)?;
        let next = n.saturating_add(1);
        match store.set(key, next.to_string().as_bytes(), cas) {
            Ok(()) => return Ok(next),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(OwnershipError::Contention)
}

impl Owner {
    /// Registers a new generation holding nothing: a fresh generation number and a
    /// free pool key (a freed or retired one, or a new one).
    pub fn register<S: SharedStore + ?Sized>(
        store: &S,
        now_ms: u64,
    ) -> Result<Owner, OwnershipError> {
        Owner::claim(store, Holdings::default(), now_ms)
    }

    fn claim<S: SharedStore + ?Sized>(
        store: &S,
        holdings: Holdings,
        now_ms: u64,
    ) -> Result<Owner, OwnershipError> {
        let generation = next_number(store, GENERATION_KEY)?;
        let ledger = Ledger {
            generation,
            heartbeat_ms: now_ms,
            holdings,
        };
        let value = ledger.encode();
        for _ in 0..ATTEMPTS {
            let (pool, _) = read_u64(store, POOL_SIZE_KEY)?;
            let pool = u32::try_from(pool).unwrap_or(u32::MAX);
            for slot in 0..pool {
                let key = ledger_key(slot);
                if let Some((current, cas)) = store.get(&key)? {
                    if (current.is_empty() || current == RETIRED)
                        && store.set(&key, &value, cas).is_ok()
                    {
                        return Ok(Owner::claimed(key, ledger, now_ms));
                    }
                }
            }
            if pool >= MAX_POOL {
                return Err(OwnershipError::PoolFull);
            }
            let slot = u32::try_from(next_number(store, POOL_SIZE_KEY)?.saturating_sub(1))
                .unwrap_or(u32::MAX);
            let key = ledger_key(slot);
            if store.create_if_absent(&key, &value)? {
                return Ok(Owner::claimed(key, ledger, now_ms));
            }
        }
        Err(OwnershipError::Contention)
    }

    fn claimed(key: String, ledger: Ledger, now_ms: u64) -> Owner {
        Owner {
            key,
            generation: ledger.generation,
            holdings: ledger.holdings,
            written_ms: now_ms,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// Records a slot this VM just took (call right after the shared counts changed).
    pub fn acquired<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        admission: &Admission,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        self.holdings.add(admission);
        self.write(store, now_ms)
    }

    /// Records a slot this VM just gave back.
    pub fn released<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        admission: &Admission,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        self.holdings.remove(admission);
        self.write(store, now_ms)
    }

    /// Rewrites the ledger if the last write is [`HEARTBEAT_MS`] old.
    pub fn heartbeat<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        if now_ms < self.written_ms.saturating_add(HEARTBEAT_MS) {
            return Ok(Written::NotDue);
        }
        self.write(store, now_ms)
    }

    /// The VM's last plugin is going away cleanly: frees the ledger for reuse. A
    /// generation that still holds slots keeps its ledger (its streams may outlive the
    /// plugin): the reaper frees it once the VM stops beating.
    pub fn retire<S: SharedStore + ?Sized>(&mut self, store: &S) -> Result<(), OwnershipError> {
        if !self.holdings.is_empty() {
            return Ok(());
        }
        for _ in 0..ATTEMPTS {
            let Some((current, cas)) = store.get(&self.key)? else {
                return Ok(());
            };
            if generation_of(&current) != Some(self.generation) {
                return Ok(()); // reaped already
            }
            match store.set(&self.key, RETIRED, cas) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OwnershipError::Contention)
    }

    fn write<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        let value = encode_ledger(self.generation, now_ms, &self.holdings);
        for _ in 0..ATTEMPTS {
            let current = store.get(&self.key)?;
            let ours = current
                .as_ref()
                .is_some_and(|(v, _)| generation_of(v) == Some(self.generation));
            let Some((_, cas)) = current.filter(|_| ours) else {
                // Reaped: its counts were subtracted. Come back as a new generation
                // and add what this VM still holds.
                let holdings = std::mem::take(&mut self.holdings);
                *self = Owner::claim(store, holdings, now_ms)?;
                self.holdings.apply_to_counts(store, 1)?;
                return Ok(Written::Reregistered);
            };
            match store.set(&self.key, &value, cas) {
                Ok(()) => {
                    self.written_ms = now_ms;
                    return Ok(Written::Written);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OwnershipError::Contention)
    }
}

/// A generation declared dead, and what it held (now given back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub generation: u64,
    pub holdings: Holdings,
}

/// Frees every ledger whose heartbeat is older than [`STALE_AFTER_MS`] at `now_ms`
/// (other than `own_generation`'s) and gives its slots back. Each stale ledger is
/// freed by exactly one caller: the one whose CAS on the value it read succeeds.
pub fn reap<S: SharedStore + ?Sized>(
    store: &S,
    now_ms: u64,
    own_generation: Option<u64>,
) -> Result<Vec<Reaped>, StoreError> {
    let (pool, _) = read_u64(store, POOL_SIZE_KEY)?;
    let mut reaped = Vec::new();
    for slot in 0..u32::try_from(pool).unwrap_or(u32::MAX).min(MAX_POOL) {
        let key = ledger_key(slot);
        let Some((value, cas)) = store.get(&key)? else {
            continue;
        };
        let Some(ledger) = Ledger::decode(&value) else {
            continue; // free, retired, or not ours to judge
        };
        if Some(ledger.generation) == own_generation
            || now_ms.saturating_sub(ledger.heartbeat_ms) < STALE_AFTER_MS
        {
            continue;
        }
        match store.set(&key, b"", cas) {
            Ok(()) => {
                // Best effort per count: a failure here leaves that one count high.
                let _ = ledger.holdings.apply_to_counts(store, -1);
                reaped.push(Reaped {
                    generation: ledger.generation,
                    holdings: ledger.holdings,
                });
            }
            Err(StoreError::CasMismatch) => {} // its owner beat, or another reaper won
            Err(e) => return Err(e),
        }
    }
    Ok(reaped)
}

/// Slots held by the other Envoy process during a hot restart: Envoy merges the
/// parent's gauges into the child's, so the instance gauge read in this process is its
/// own count plus the parent's. The host layer raises the gauge before it takes a slot
/// and lowers it after it gives one back, so `merged_gauge >= own_count` holds in this
/// process at any instant and the difference never under-counts the parent.
pub fn held_elsewhere(merged_gauge: u64, own_count: u32) -> u32 {
    u32::try_from(merged_gauge.saturating_sub(u64::from(own_count))).unwrap_or(u32::MAX)
}

/// The instance limit left to this process when `elsewhere` slots are held by another.
pub fn local_limit(limit: Option<u32>, elsewhere: u32) -> Option<u32> {
    limit.map(|l| l.saturating_sub(elsewhere))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_reaper_that_was_paused_itself_does_not_judge_the_others() {
        assert!(!may_reap(0, 10_000), "first tick");
        assert!(may_reap(10_000, 10_050));
        assert!(may_reap(10_000, 10_000 + PAUSED_AFTER_MS - 1));
        assert!(!may_reap(10_000, 10_000 + PAUSED_AFTER_MS));
        assert!(
            !may_reap(10_000, 10_000 + STALE_AFTER_MS * 3),
            "whole process stopped"
        );
        assert!(
            may_reap(10_000, 9_000),
            "a clock that went back is no pause"
        );
    }
    use super::*;
    use crate::shared_store::MemoryStore;
    use crate::websocket::slots::{
        ensure_keys, read_counts, try_acquire, user_count, AdmissionRequest,
    };

    fn store() -> MemoryStore {
        let s = MemoryStore::new();
        ensure_keys(&s, &["chat", "feed"]).unwrap();
        s
    }

    fn admit(s: &MemoryStore, route: &str, user: Option<&str>) -> Admission {
        try_acquire(
            s,
            &AdmissionRequest {
                route,
                route_limit: None,
                instance_limit: Some(100),
                user,
                user_limit: Some(10),
            },
        )
        .unwrap()
    }

    fn instance(s: &MemoryStore) -> u32 {
        read_counts(s, &["chat"]).unwrap().instance
    }

    #[test]
    fn ledger_round_trips() {
        let mut holdings = Holdings::default();
        let s = store();
        holdings.add(&admit(&s, "chat", Some("ann")));
        holdings.add(&admit(&s, "chat", Some("bob")));
        holdings.add(&admit(&s, "feed", None));
        let ledger = Ledger {
            generation: 7,
            heartbeat_ms: 123_456,
            holdings,
        };
        let decoded = Ledger::decode(&ledger.encode()).unwrap();
        assert_eq!(decoded, ledger);
        assert_eq!(decoded.holdings.instance, 3);
        assert_eq!(decoded.holdings.routes["chat"], 2);
        assert_eq!(decoded.holdings.users["ann"], 1);
    }

    #[test]
    fn garbage_free_and_retired_values_are_not_ledgers() {
        assert_eq!(Ledger::decode(b""), None);
        assert_eq!(Ledger::decode(RETIRED), None);
        assert_eq!(Ledger::decode(&[1, 2, 3]), None);
        let mut bytes = Ledger {
            generation: 1,
            heartbeat_ms: 1,
            holdings: Holdings::default(),
        }
        .encode();
        bytes.push(0);
        assert_eq!(Ledger::decode(&bytes), None, "trailing bytes");
    }

    #[test]
    fn holdings_add_and_remove_drop_zero_entries() {
        let s = store();
        let a = admit(&s, "chat", Some("ann"));
        let mut h = Holdings::default();
        h.add(&a);
        h.remove(&a);
        assert!(h.is_empty());
        h.remove(&a);
        assert!(h.is_empty(), "never below zero");
    }

    #[test]
    fn generations_get_distinct_numbers_and_pool_keys() {
        let s = store();
        let a = Owner::register(&s, 0).unwrap();
        let b = Owner::register(&s, 0).unwrap();
        assert_ne!(a.generation(), b.generation());
        assert_ne!(a.key, b.key);
        assert_eq!(s.value(POOL_SIZE_KEY).unwrap(), b"2");
    }

    #[test]
    fn a_dead_generations_slots_come_back_and_a_live_ones_stay() {
        let s = store();
        let mut dead = Owner::register(&s, 0).unwrap();
        let mut live = Owner::register(&s, 0).unwrap();
        for user in ["ann", "ann", "bob"] {
            let a = admit(&s, "chat", Some(user));
            dead.acquired(&s, &a, 0).unwrap();
        }
        let a = admit(&s, "feed", Some("ann"));
        live.acquired(&s, &a, 0).unwrap();
        assert_eq!(instance(&s), 4);

        // The live one keeps beating; the dead one stopped at 0.
        live.heartbeat(&s, 3_000).unwrap();
        assert_eq!(reap(&s, STALE_AFTER_MS - 1, None).unwrap(), vec![]);
        let reaped = reap(&s, STALE_AFTER_MS, Some(live.generation())).unwrap();
        assert_eq!(reaped.len(), 1);
        assert_eq!(reaped[0].generation, dead.generation());
        assert_eq!(reaped[0].holdings.instance, 3);
        assert_eq!(instance(&s), 1);
        let counts = read_counts(&s, &["chat", "feed"]).unwrap();
        assert_eq!(counts.routes, vec![("chat".into(), 0), ("feed".into(), 1)]);
        assert_eq!(user_count(&s, "ann").unwrap(), 1);
        assert_eq!(user_count(&s, "bob").unwrap(), 0);

        // Reaped once only.
        assert_eq!(
            reap(&s, STALE_AFTER_MS * 2, Some(live.generation())).unwrap(),
            vec![]
        );
        assert_eq!(instance(&s), 1);
    }

    #[test]
    fn a_freed_pool_key_is_reused() {
        let s = store();
        let _dead = Owner::register(&s, 0).unwrap();
        reap(&s, STALE_AFTER_MS, None).unwrap();
        let next = Owner::register(&s, STALE_AFTER_MS).unwrap();
        assert_eq!(next.key, ledger_key(0));
        assert_eq!(s.value(POOL_SIZE_KEY).unwrap(), b"1");
    }

    #[test]
    fn a_slow_owner_that_was_reaped_comes_back_with_its_holdings() {
        let s = store();
        let mut slow = Owner::register(&s, 0).unwrap();
        let a = admit(&s, "chat", Some("ann"));
        slow.acquired(&s, &a, 0).unwrap();
        reap(&s, STALE_AFTER_MS, None).unwrap();
        assert_eq!(instance(&s), 0);
        let first = slow.generation();
        assert_eq!(
            slow.heartbeat(&s, STALE_AFTER_MS).unwrap(),
            Written::Reregistered
        );
        assert_ne!(slow.generation(), first);
        assert_eq!(instance(&s), 1);
        assert_eq!(user_count(&s, "ann").unwrap(), 1);
        // And its release later balances exactly.
        slow.released(&s, &a, STALE_AFTER_MS + 1).unwrap();
        crate::websocket::slots::release(&s, a).unwrap();
        assert_eq!(instance(&s), 0);
        assert!(slow.holdings().is_empty());
    }

    #[test]
    fn two_reapers_racing_free_a_ledger_once() {
        let s = store();
        let mut dead = Owner::register(&s, 0).unwrap();
        let a = admit(&s, "chat", None);
        dead.acquired(&s, &a, 0).unwrap();
        // The other reaper frees it between our read and our write.
        let key = dead.key.clone();
        s.set_before_set_hook(move |st, k| {
            if k == key {
                st.set(k, b"", 0).unwrap();
            }
            None
        });
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap(), vec![]);
        s.clear_before_set_hook();
        assert_eq!(
            instance(&s),
            1,
            "the winner (simulated) did the subtraction"
        );
    }

    #[test]
    fn heartbeat_writes_only_when_due() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let writes = s.write_count();
        assert_eq!(o.heartbeat(&s, HEARTBEAT_MS - 1).unwrap(), Written::NotDue);
        assert_eq!(s.write_count(), writes);
        assert_eq!(o.heartbeat(&s, HEARTBEAT_MS).unwrap(), Written::Written);
    }

    #[test]
    fn a_retired_generation_is_not_reaped_and_its_key_is_reused() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        o.retire(&s).unwrap();
        assert_eq!(reap(&s, STALE_AFTER_MS * 10, None).unwrap(), vec![]);
        let next = Owner::register(&s, 1).unwrap();
        assert_eq!(next.key, o.key);
    }

    #[test]
    fn the_pool_is_bounded() {
        let s = store();
        s.set(POOL_SIZE_KEY, MAX_POOL.to_string().as_bytes(), 0)
            .unwrap();
        assert_eq!(
            Owner::register(&s, 0).unwrap_err(),
            OwnershipError::PoolFull
        );
    }

    #[test]
    fn holdings_are_empty_only_when_every_count_is() {
        assert!(Holdings::default().is_empty());
        let one = |f: &dyn Fn(&mut Holdings)| {
            let mut h = Holdings::default();
            f(&mut h);
            h.is_empty()
        };
        assert!(!one(&|h| h.instance = 1));
        assert!(!one(&|h| {
            h.routes.insert("chat".into(), 1);
        }));
        assert!(!one(&|h| {
            h.users.insert("ann".into(), 1);
        }));
    }

    #[test]
    fn an_owner_shows_what_it_holds() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let a = admit(&s, "chat", Some("ann"));
        o.acquired(&s, &a, 0).unwrap();
        assert_eq!(o.holdings().instance, 1);
        assert_eq!(o.holdings().routes["chat"], 1);
        assert_eq!(o.holdings().users["ann"], 1);
    }

    #[test]
    fn an_owner_still_holding_slots_keeps_its_ledger_at_retirement() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        o.acquired(&s, &admit(&s, "chat", None), 0).unwrap();
        o.retire(&s).unwrap();
        let reaped = reap(&s, STALE_AFTER_MS, None).unwrap();
        assert_eq!(reaped.len(), 1, "its streams may outlive the plugin");
        assert_eq!(instance(&s), 0);
    }

    #[test]
    fn a_counter_left_empty_reads_as_zero() {
        let s = store();
        s.set(GENERATION_KEY, b"", 0).unwrap();
        s.set(POOL_SIZE_KEY, b"", 0).unwrap();
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap(), vec![]);
        let o = Owner::register(&s, 0).unwrap();
        assert_eq!(o.generation(), 1);
        assert_eq!(o.key, ledger_key(0));
    }

    #[test]
    fn ownership_errors_are_readable() {
        assert_eq!(
            OwnershipError::PoolFull.to_string(),
            "all 1024 slot-ownership ledgers are held by live VMs"
        );
        assert_eq!(
            OwnershipError::Contention.to_string(),
            "shared data contention, gave up"
        );
        assert_eq!(
            OwnershipError::from(StoreError::MissingKey).to_string(),
            StoreError::MissingKey.to_string()
        );
    }

    #[test]
    fn the_other_process_share_is_the_merged_gauge_minus_ours() {
        assert_eq!(held_elsewhere(10, 5), 5);
        assert_eq!(held_elsewhere(3, 5), 0, "never negative");
        assert_eq!(local_limit(Some(5), 3), Some(2));
        assert_eq!(local_limit(Some(5), 9), Some(0));
        assert_eq!(local_limit(None, 9), None);
    }
}
