//! Who holds the WebSocket slots: a ledger per VM generation, so that the slots of a VM
//! that died (a trap, an out-of-memory, a panic) come back by themselves.
//!
//! Owns: the shared-data keys under `eg.own.` (the owner-slot pool, each pool key's user
//! sub-ledgers, and the generation counter), the ledger format, the heartbeat, and the
//! reaper's rule for declaring a generation dead and giving its slots back.
//!
//! Must never: write another generation's records except to take them over with a CAS on
//! the exact value it read (so two reapers, or a reaper and a late owner, can never both
//! act on one), give a record's slots back more than once, copy or rewrite on an
//! acquire, a release, a heartbeat or a reap pass that finds nothing stale data that
//! grows with the number of users a VM holds (only the head and one sub-ledger, about a
//! 64th of the users, move), or grow without a bound (pool keys are reused after a
//! generation is reaped or retires; keys are one head and [`slots::N_SHARDS`]
//! sub-ledgers per pool key).
//!
//! How it works. Every VM (one per Envoy worker, plus the main thread's) registers a
//! generation: a fresh number from `eg.own.generation` and a free key `eg.own.<n>` of the
//! pool (`eg.own.slots` counts the keys ever made). That key, the head, holds the
//! generation, when it last beat, and its instance and per-route counts; each of the
//! [`slots::N_SHARDS`] sub-ledgers `eg.own.<n>.u<k>` holds its counted users of user
//! shard `k`, tagged with the generation. The VM keeps every sub-ledger in memory in its
//! stored form and edits it in place. The host layer records every admission right after
//! the shared counts change and every release right before (the user's sub-ledger, then
//! the head), so a VM dying in between leaves that one count high, never low. It beats
//! (rewrites the head) every [`HEARTBEAT_MS`]. Any live VM's reaper reads only the heads;
//! one whose beat is older than [`STALE_AFTER_MS`] is turned into a "reaping" head by a
//! CAS (one reaper wins and subtracts its instance and route counts), then every
//! sub-ledger still tagged with that generation is emptied by a CAS and its users
//! subtracted, then the head is freed. Any reaper finishes a reaping head it finds (one
//! whose reaper stopped midway): the pool key is reused only once every sub-ledger is
//! given back. Envoy resets a failed VM's streams at their next frame (verified on 1.40
//! with `FAIL_RELOAD` and `FAIL_CLOSED`): the connections that held those slots carry
//! nothing any more. A VM that was only slow finds its head or a sub-ledger taken: it
//! adds back exactly what its records said when the reaper took them (everything it
//! holds but the change it was recording, if that change had not reached the record)
//! and registers again ([`Written::Reregistered`]). Left inexact: the counts of a head
//! whose reaper died between its CAS and its subtraction stay high; a sub-ledger whose
//! write failed (a host error) is one change behind until the next beat rewrites it, and
//! a VM reaped in that second is reaped for what it says. Heads of another format
//! (version `1`, an older build's) are neither reaped nor reused.
//!
//! Formats. Head (version byte `2`): u64 LE generation, u64 LE heartbeat ms, u32 LE
//! instance count, u16 LE route count then per route `u16 LE len, name, u32 LE count`.
//! The same bytes with version byte `3` are a head being reaped; an empty value is a free
//! key; the single byte `0` is a generation that retired cleanly. Sub-ledger (version
//! byte `1`): u64 LE generation tag, then per user `u16 LE len, id, u32 LE count` (the
//! user shards' entry format); it belongs to the generation of its tag only while the
//! head is that generation's, and is emptied (`""`) when given back.

use std::fmt;

use super::slots::{self, Admission};
use crate::shared_store::{SharedStore, StoreError};

/// Key counting the pool keys ever made (`eg.own.0` .. `eg.own.<n-1>`).
pub const POOL_SIZE_KEY: &str = "eg.own.slots";
/// Key of the last generation number handed out.
pub const GENERATION_KEY: &str = "eg.own.generation";
/// Prefix of the pool keys.
pub const LEDGER_KEY_PREFIX: &str = "eg.own.";
/// A live generation rewrites its head at least this often.
pub const HEARTBEAT_MS: u64 = 1_000;
/// A head whose heartbeat is older than this belongs to a dead VM.
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

const LIVE: u8 = 2;
const REAPING: u8 = 3;
const RETIRED: &[u8] = &[0];
const USERS_VERSION: u8 = 1;
/// Version byte and generation tag.
const USERS_HEADER: usize = 9;
const ATTEMPTS: u32 = 100;
// `Owner::dirty` has one bit per sub-ledger.
const _: () = assert!(slots::N_SHARDS <= u64::BITS);

/// What one generation's head records: its instance and per-route counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub instance: u32,
    /// Per route with slots held: sorted by name, unique, no zero count (a
    /// handful of routes: a sorted `Vec`, which also keeps B-tree code out of
    /// the wasm).
    pub routes: Vec<(String, u32)>,
}

impl Holdings {
    pub fn add(&mut self, admission: &Admission) {
        self.instance = self.instance.saturating_add(1);
        self.add_route(admission.route(), 1);
    }

    pub fn remove(&mut self, admission: &Admission) {
        self.instance = self.instance.saturating_sub(1);
        if let Ok(i) = self.find_route(admission.route()) {
            if let Some((_, count)) = self.routes.get_mut(i) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.routes.remove(i);
                }
            }
        }
    }

    /// Slots held on `route`.
    pub fn route(&self, route: &str) -> u32 {
        self.find_route(route)
            .ok()
            .and_then(|i| self.routes.get(i))
            .map_or(0, |(_, n)| *n)
    }

    fn find_route(&self, route: &str) -> Result<usize, usize> {
        self.routes
            .binary_search_by(|(name, _)| name.as_str().cmp(route))
    }

    /// Adds `n` slots on `route`, keeping the list sorted and unique.
    fn add_route(&mut self, route: &str, n: u32) {
        if n == 0 {
            return;
        }
        match self.find_route(route) {
            Ok(i) => {
                if let Some((_, count)) = self.routes.get_mut(i) {
                    *count = count.saturating_add(n);
                }
            }
            Err(i) => self.routes.insert(i, (route.to_owned(), n)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.instance == 0 && self.routes.is_empty()
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
        result
    }
}

/// One generation's head as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub generation: u64,
    pub heartbeat_ms: u64,
    pub holdings: Holdings,
}

impl Head {
    pub fn encode(&self) -> Vec<u8> {
        encode_head(self.generation, self.heartbeat_ms, &self.holdings)
    }

    /// A live head (not free, retired, or being reaped).
    pub fn decode(bytes: &[u8]) -> Option<Head> {
        match decode_head(bytes)? {
            (LIVE, head) => Some(head),
            _ => None,
        }
    }
}

fn encode_head(generation: u64, heartbeat_ms: u64, holdings: &Holdings) -> Vec<u8> {
    let mut out = vec![LIVE];
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&heartbeat_ms.to_le_bytes());
    out.extend_from_slice(&holdings.instance.to_le_bytes());
    let routes = u16::try_from(holdings.routes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&routes.to_le_bytes());
    for (name, n) in holdings.routes.iter().take(usize::from(routes)) {
        // Route names are at most 64 bytes (the policy enforces it).
        let _ = slots::push_entry(&mut out, name.as_bytes(), *n);
    }
    out
}

/// A live (`LIVE`) or reaping (`REAPING`) head, with its version byte.
fn decode_head(bytes: &[u8]) -> Option<(u8, Head)> {
    let (&state, mut rest) = bytes.split_first()?;
    if state != LIVE && state != REAPING {
        return None;
    }
    let generation = u64::from_le_bytes(take(&mut rest)?);
    let heartbeat_ms = u64::from_le_bytes(take(&mut rest)?);
    let instance = u32::from_le_bytes(take(&mut rest)?);
    let mut holdings = Holdings {
        instance,
        ..Holdings::default()
    };
    for _ in 0..u16::from_le_bytes(take(&mut rest)?) {
        let (name, n, after) = slots::parse_entry(rest)?;
        holdings.add_route(std::str::from_utf8(name).ok()?, n);
        rest = after;
    }
    let head = Head {
        generation,
        heartbeat_ms,
        holdings,
    };
    rest.is_empty().then_some((state, head))
}

/// The generation of a live head, read from its first bytes only.
fn live_generation(bytes: &[u8]) -> Option<u64> {
    match bytes.split_first()? {
        (&LIVE, mut rest) => Some(u64::from_le_bytes(take(&mut rest)?)),
        _ => None,
    }
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let head: [u8; N] = bytes.get(..N)?.try_into().ok()?;
    *bytes = bytes.get(N..)?;
    Some(head)
}

/// The generation tag of a stored sub-ledger (`None`: emptied, or not a sub-ledger).
fn users_tag(bytes: &[u8]) -> Option<u64> {
    match bytes.split_first()? {
        (&USERS_VERSION, mut rest) => Some(u64::from_le_bytes(take(&mut rest)?)),
        _ => None,
    }
}

/// One sub-ledger in its stored form (version byte, generation tag, entries), edited in
/// place: about 26 bytes per user and no allocation per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Users(Vec<u8>);

impl Users {
    fn new() -> Users {
        let mut bytes = Vec::with_capacity(USERS_HEADER);
        bytes.push(USERS_VERSION);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        Users(bytes)
    }

    fn set_tag(&mut self, generation: u64) {
        if let Some(tag) = self.0.get_mut(1..USERS_HEADER) {
            tag.copy_from_slice(&generation.to_le_bytes());
        }
    }

    fn entries(&self) -> &[u8] {
        self.0.get(USERS_HEADER..).unwrap_or_default()
    }

    /// Where `user`'s entry is (start, end) and its count.
    fn find(&self, user: &[u8]) -> Option<(usize, usize, u32)> {
        let mut at = USERS_HEADER;
        while let Some((id, count, rest)) = self.0.get(at..).and_then(slots::parse_entry) {
            let end = self.0.len().saturating_sub(rest.len());
            if id == user {
                return Some((at, end, count));
            }
            at = end;
        }
        None
    }

    fn count(&self, user: &str) -> u32 {
        self.find(user.as_bytes()).map_or(0, |(_, _, n)| n)
    }

    fn add(&mut self, user: &str) {
        match self.find(user.as_bytes()) {
            Some((_, end, n)) => self.put_count(end, n.saturating_add(1)),
            // User ids are at most 256 bytes (slots enforces it): the length fits.
            None => {
                let _ = slots::push_entry(&mut self.0, user.as_bytes(), 1);
            }
        }
    }

    /// Whether `user` was listed (and is now one fewer).
    fn remove(&mut self, user: &str) -> bool {
        let Some((start, end, n)) = self.find(user.as_bytes()) else {
            return false;
        };
        if n > 1 {
            self.put_count(end, n.saturating_sub(1));
        } else {
            self.0.drain(start..end);
        }
        true
    }

    /// Writes the count that ends at `end`.
    fn put_count(&mut self, end: usize, n: u32) {
        if let Some(count) = self.0.get_mut(end.saturating_sub(4)..end) {
            count.copy_from_slice(&n.to_le_bytes());
        }
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

/// Whether this generation's records are in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    Live,
    /// Retired cleanly (holding nothing): its head says so, nobody reaps it.
    Retired,
    /// A registration failed after the counts were put back: the shared counts hold
    /// what this VM holds, and no record does. The next write registers again.
    Missing,
}

/// A change this VM made to its holdings that no record a reaper read holds.
struct Unrecorded<'a> {
    admission: &'a Admission,
    acquired: bool,
    /// The user's entry too (its sub-ledger was not written).
    user: bool,
}

/// The ledger of this VM's generation, kept in memory and mirrored to shared data.
#[derive(Debug)]
pub struct Owner {
    key: String,
    slot: u32,
    generation: u64,
    holdings: Holdings,
    /// One per user shard, in stored form.
    users: Vec<Users>,
    written_ms: u64,
    records: Records,
    /// Sub-ledgers whose last write failed (bit `k`): rewritten at the next heartbeat.
    dirty: u64,
}

/// Key of pool slot `slot`'s head.
pub fn ledger_key(slot: u32) -> String {
    format!("{LEDGER_KEY_PREFIX}{slot}")
}

/// Key of pool slot `slot`'s sub-ledger for user shard `shard`.
pub fn users_key(slot: u32, shard: u32) -> String {
    format!("{LEDGER_KEY_PREFIX}{slot}.u{shard}")
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

fn pool_size<S: SharedStore + ?Sized>(store: &S) -> Result<u32, StoreError> {
    let (pool, _) = read_u64(store, POOL_SIZE_KEY)?;
    Ok(u32::try_from(pool).unwrap_or(u32::MAX))
}

/// Takes a free (empty or retired) pool key, or a new one, for `head`; returns its slot.
fn claim_head<S: SharedStore + ?Sized>(store: &S, head: &[u8]) -> Result<u32, OwnershipError> {
    for _ in 0..ATTEMPTS {
        let pool = pool_size(store)?;
        for slot in 0..pool {
            let key = ledger_key(slot);
            if let Some((current, cas)) = store.get(&key)? {
                if (current.is_empty() || current == RETIRED) && store.set(&key, head, cas).is_ok()
                {
                    return Ok(slot);
                }
            }
        }
        if pool >= MAX_POOL {
            return Err(OwnershipError::PoolFull);
        }
        let slot =
            u32::try_from(next_number(store, POOL_SIZE_KEY)?.saturating_sub(1)).unwrap_or(u32::MAX);
        if store.create_if_absent(&ledger_key(slot), head)? {
            return Ok(slot);
        }
    }
    Err(OwnershipError::Contention)
}

/// Turns generation `generation`'s live head at `key` into a retired one (free for the
/// next claimant, reaped by nobody). Nothing to do if it is not that generation's.
fn retire_head<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    generation: u64,
) -> Result<(), OwnershipError> {
    for _ in 0..ATTEMPTS {
        let Some((current, cas)) = store.get(key)? else {
            return Ok(());
        };
        if live_generation(&current) != Some(generation) {
            return Ok(()); // reaped already
        }
        match store.set(key, RETIRED, cas) {
            Ok(()) => return Ok(()),
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
        let mut owner = Owner {
            key: String::new(),
            slot: 0,
            generation: 0,
            holdings: Holdings::default(),
            users: (0..slots::N_SHARDS).map(|_| Users::new()).collect(),
            written_ms: now_ms,
            records: Records::Missing,
            dirty: 0,
        };
        owner.claim(store, now_ms)?;
        Ok(owner)
    }

    /// Records everything this VM holds under a new generation: its head in a free pool
    /// key, then every sub-ledger of that key, overwritten (a reaper empties a
    /// generation's sub-ledgers before it frees the key; a retired one held nothing).
    /// All or nothing: if a sub-ledger cannot be written the head is retired again.
    fn claim<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
    ) -> Result<(), OwnershipError> {
        let generation = next_number(store, GENERATION_KEY)?;
        let key_head = encode_head(generation, now_ms, &self.holdings);
        let slot = claim_head(store, &key_head)?;
        let key = ledger_key(slot);
        for (shard, users) in (0..).zip(self.users.iter_mut()) {
            users.set_tag(generation);
            if let Err(e) = store.set(&users_key(slot, shard), &users.0, 0) {
                let _ = retire_head(store, &key, generation);
                return Err(e.into());
            }
        }
        self.key = key;
        self.slot = slot;
        self.generation = generation;
        self.written_ms = now_ms;
        self.records = Records::Live;
        self.dirty = 0;
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The instance and per-route slots this VM holds.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// The slots this VM holds for `user`.
    pub fn user_count(&self, user: &str) -> u32 {
        self.users
            .get(slots::user_shard(user) as usize)
            .map_or(0, |users| users.count(user))
    }

    /// Whether this VM holds no slot at all.
    pub fn is_empty(&self) -> bool {
        self.holdings.is_empty() && self.users.iter().all(|u| u.entries().is_empty())
    }

    /// Records a slot this VM just took (call right after the shared counts changed).
    pub fn acquired<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        admission: &Admission,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        self.record(store, admission, true, now_ms)
    }

    /// Records a slot this VM is about to give back (call before the shared counts change).
    pub fn released<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        admission: &Admission,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        self.record(store, admission, false, now_ms)
    }

    /// Rewrites the head (and any sub-ledger whose last write failed) if the last write
    /// is [`HEARTBEAT_MS`] old.
    pub fn heartbeat<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        if self.records == Records::Retired || now_ms < self.written_ms.saturating_add(HEARTBEAT_MS)
        {
            return Ok(Written::NotDue);
        }
        if self.records == Records::Missing {
            self.written_ms = now_ms; // at most one attempt per beat
            self.claim(store, now_ms)?;
            return Ok(Written::Written);
        }
        let mut dirty = self.dirty;
        while dirty != 0 {
            let shard = dirty.trailing_zeros();
            dirty &= dirty - 1;
            if !self.write_users(store, shard)? {
                return self.reregister(store, now_ms, None);
            }
            self.dirty &= !(1u64 << shard);
        }
        if self.write_head(store, now_ms)? {
            Ok(Written::Written)
        } else {
            self.reregister(store, now_ms, None)
        }
    }

    /// The VM's last plugin is going away cleanly: frees the head for reuse. A
    /// generation that still holds slots keeps its records (its streams may outlive the
    /// plugin): the reaper gives them back once the VM stops beating.
    pub fn retire<S: SharedStore + ?Sized>(&mut self, store: &S) -> Result<(), OwnershipError> {
        if self.records != Records::Live || !self.is_empty() {
            return Ok(());
        }
        retire_head(store, &self.key, self.generation)?;
        self.records = Records::Retired;
        Ok(())
    }

    /// Applies one admission or release to the holdings, then writes the user's
    /// sub-ledger (if the user is counted) and the head.
    fn record<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        admission: &Admission,
        acquired: bool,
        now_ms: u64,
    ) -> Result<Written, OwnershipError> {
        let user = admission
            .counted_user()
            .map(|user| (user, slots::user_shard(user)));
        let user_changed = match user.and_then(|(u, k)| Some((u, self.users.get_mut(k as usize)?)))
        {
            Some((user, users)) if acquired => {
                users.add(user);
                true
            }
            Some((user, users)) => users.remove(user),
            None => false,
        };
        if acquired {
            self.holdings.add(admission);
        } else {
            self.holdings.remove(admission);
        }
        if self.records != Records::Live {
            // The counts hold this change and no record of this VM exists: record
            // everything under a new generation, nothing to put back.
            self.claim(store, now_ms)?;
            return Ok(Written::Written);
        }
        let mut user_error = None;
        if let (true, Some((_, shard))) = (user_changed, user) {
            match self.write_users(store, shard) {
                Ok(true) => {}
                Ok(false) => {
                    let unrecorded = Unrecorded {
                        admission,
                        acquired,
                        user: true,
                    };
                    return self.reregister(store, now_ms, Some(unrecorded));
                }
                Err(e) => {
                    self.dirty |= 1u64 << shard;
                    user_error = Some(e);
                }
            }
        }
        if !self.write_head(store, now_ms)? {
            let unrecorded = Unrecorded {
                admission,
                acquired,
                user: user_error.is_some(),
            };
            return self.reregister(store, now_ms, Some(unrecorded));
        }
        user_error.map_or(Ok(Written::Written), Err)
    }

    /// Writes sub-ledger `shard` as held in memory. `false`: it is not this generation's
    /// any more (a reaper gave it back).
    fn write_users<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        shard: u32,
    ) -> Result<bool, OwnershipError> {
        let Some(users) = self.users.get(shard as usize) else {
            return Ok(true);
        };
        let key = users_key(self.slot, shard);
        for _ in 0..ATTEMPTS {
            let Some((current, cas)) = store.get(&key)? else {
                return Ok(false);
            };
            if users_tag(&current) != Some(self.generation) {
                return Ok(false);
            }
            match store.set(&key, &users.0, cas) {
                Ok(()) => return Ok(true),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OwnershipError::Contention)
    }

    /// Writes the head, beating. `false`: it is not this generation's live head any more
    /// (a reaper took it).
    fn write_head<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
    ) -> Result<bool, OwnershipError> {
        let value = encode_head(self.generation, now_ms, &self.holdings);
        for _ in 0..ATTEMPTS {
            let Some((current, cas)) = store.get(&self.key)? else {
                return Ok(false);
            };
            if live_generation(&current) != Some(self.generation) {
                return Ok(false);
            }
            match store.set(&self.key, &value, cas) {
                Ok(()) => {
                    self.written_ms = now_ms;
                    return Ok(true);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OwnershipError::Contention)
    }

    /// A reaper took this generation: it gives back (or gave back) exactly what the
    /// records said, i.e. the holdings without `unrecorded`. Puts that back into the
    /// counts, then records the holdings under a new generation. Counts first: a
    /// failure in between leaves them high, never low.
    fn reregister<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        now_ms: u64,
        unrecorded: Option<Unrecorded<'_>>,
    ) -> Result<Written, OwnershipError> {
        self.records = Records::Missing;
        let mut added = self.holdings.apply_to_counts(store, 1);
        for (shard, users) in (0..).zip(&self.users) {
            if !users.entries().is_empty() {
                added = added.and(slots::adjust_users(store, shard, users.entries(), 1));
            }
        }
        if let Some(change) = unrecorded {
            // Not in any record the reaper read: take it out again.
            let undo = if change.acquired { -1 } else { 1 };
            let route = slots::route_key(change.admission.route());
            added = added
                .and(slots::adjust_count(store, slots::INSTANCE_KEY, undo))
                .and(slots::adjust_count(store, &route, undo));
            if let (true, Some(user)) = (change.user, change.admission.counted_user()) {
                added = added.and(slots::adjust_user(store, user, undo));
            }
        }
        self.claim(store, now_ms)?;
        added?;
        Ok(Written::Reregistered)
    }
}

/// A generation declared dead, and what its head held (now given back, with the users
/// of its sub-ledgers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub generation: u64,
    pub holdings: Holdings,
}

/// Takes every head whose heartbeat is older than [`STALE_AFTER_MS`] at `now_ms` (other
/// than `own_generation`'s) and gives its slots back; finishes every head left being
/// reaped. Reads only the heads unless one is stale. Each stale head is taken by exactly
/// one caller (the one whose CAS on the value it read succeeds), and each sub-ledger
/// given back by exactly one (the same rule). A store error while giving sub-ledgers
/// back leaves the head being reaped, for the next pass; it is returned only if this
/// pass reaped nothing.
pub fn reap<S: SharedStore + ?Sized>(
    store: &S,
    now_ms: u64,
    own_generation: Option<u64>,
) -> Result<Vec<Reaped>, StoreError> {
    let mut reaped = Vec::new();
    let mut error = None;
    for slot in 0..pool_size(store)?.min(MAX_POOL) {
        let key = ledger_key(slot);
        let Some((mut value, cas)) = store.get(&key)? else {
            continue;
        };
        let Some((state, head)) = decode_head(&value) else {
            continue; // free, retired, or not ours to judge
        };
        if state == LIVE {
            if Some(head.generation) == own_generation
                || now_ms.saturating_sub(head.heartbeat_ms) < STALE_AFTER_MS
            {
                continue;
            }
            if let Some(version) = value.first_mut() {
                *version = REAPING;
            }
            match store.set(&key, &value, cas) {
                Ok(()) => {
                    // Best effort per count: a failure here leaves that one count high.
                    let _ = head.holdings.apply_to_counts(store, -1);
                    reaped.push(Reaped {
                        generation: head.generation,
                        holdings: head.holdings,
                    });
                }
                Err(StoreError::CasMismatch) => continue, // it beat, or another reaper won
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = finish_reaping(store, slot, head.generation) {
            error.get_or_insert(e);
        }
    }
    match error {
        Some(e) if reaped.is_empty() => Err(e),
        _ => Ok(reaped),
    }
}

/// Gives back every sub-ledger of pool slot `slot` still tagged `generation`, then (if
/// none failed) frees its head if it is still that generation's reaping head.
fn finish_reaping<S: SharedStore + ?Sized>(
    store: &S,
    slot: u32,
    generation: u64,
) -> Result<(), StoreError> {
    let mut given_back = Ok(());
    for shard in 0..slots::N_SHARDS {
        given_back = given_back.and(give_back_users(store, slot, shard, generation));
    }
    given_back?;
    let key = ledger_key(slot);
    let Some((value, cas)) = store.get(&key)? else {
        return Ok(());
    };
    match decode_head(&value) {
        Some((REAPING, head)) if head.generation == generation => match store.set(&key, b"", cas) {
            Ok(()) | Err(StoreError::CasMismatch) => Ok(()), // freed by another reaper
            Err(e) => Err(e),
        },
        _ => Ok(()),
    }
}

/// Empties sub-ledger `shard` of `slot` if it is still tagged `generation`, and
/// subtracts its users from their counts.
fn give_back_users<S: SharedStore + ?Sized>(
    store: &S,
    slot: u32,
    shard: u32,
    generation: u64,
) -> Result<(), StoreError> {
    let key = users_key(slot, shard);
    for _ in 0..ATTEMPTS {
        let Some((value, cas)) = store.get(&key)? else {
            return Ok(());
        };
        if users_tag(&value) != Some(generation) {
            return Ok(()); // given back already, or never this generation's
        }
        match store.set(&key, b"", cas) {
            Ok(()) => {
                let entries = value.get(USERS_HEADER..).unwrap_or_default();
                // Best effort: a failure here leaves these users' counts high.
                let _ = slots::adjust_users(store, shard, entries, -1);
                return Ok(());
            }
            Err(StoreError::CasMismatch) => continue, // its owner wrote it, or a reaper won
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
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
    use super::*;
    use crate::shared_store::MemoryStore;
    use crate::websocket::slots::{
        ensure_keys, read_counts, try_acquire, user_count, user_shard, AdmissionRequest,
    };
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    fn store() -> MemoryStore {
        let s = MemoryStore::new();
        ensure_keys(&s, &["chat", "feed"]).unwrap();
        s
    }

    fn admit(s: &MemoryStore, route: &str, user: Option<&str>) -> Admission {
        try_acquire(
            s,
            &AdmissionRequest {
                route: crate::websocket::slots::tests::name(route),
                route_limit: None,
                instance_limit: Some(10_000),
                user,
                user_limit: Some(10),
            },
        )
        .unwrap()
    }

    fn instance(s: &MemoryStore) -> u32 {
        read_counts(s, &["chat"]).unwrap().instance
    }

    /// Instance, chat and feed counts, then each user's.
    fn counts(s: &MemoryStore, users: &[&str]) -> (u32, u32, u32, Vec<u32>) {
        let c = read_counts(s, &["chat", "feed"]).unwrap();
        let users = users.iter().map(|u| user_count(s, u).unwrap()).collect();
        (c.instance, c.routes[0].1, c.routes[1].1, users)
    }

    /// A user id other than `user` in the same user shard (and sub-ledger).
    fn shard_mate(user: &str) -> String {
        (0..)
            .map(|i| format!("mate{i}"))
            .find(|m| user_shard(m) == user_shard(user))
            .unwrap()
    }

    /// Makes every write to a key for which `fail` holds fail with a host error.
    fn fail_writes(s: &MemoryStore, fail: impl Fn(&str) -> bool + 'static) {
        s.set_before_set_hook(move |_, key| fail(key).then_some(StoreError::Host(1)));
    }

    fn is_sub_ledger(key: &str) -> bool {
        key.starts_with(LEDGER_KEY_PREFIX) && key.contains(".u")
    }

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

    #[test]
    fn route_counts_stay_sorted_unique_and_drop_at_zero() {
        let s = store();
        let mut h = Holdings::default();
        let feed = admit(&s, "feed", None);
        let chat = admit(&s, "chat", None);
        h.add(&feed);
        h.add(&chat);
        h.add(&feed);
        assert_eq!(h.routes, vec![("chat".into(), 1), ("feed".into(), 2)]);
        assert_eq!(
            (h.route("chat"), h.route("feed"), h.route("none")),
            (1, 2, 0)
        );
        h.remove(&chat);
        assert_eq!(
            h.routes,
            vec![("feed".into(), 2)],
            "a route at zero is dropped"
        );
        h.remove(&chat);
        assert_eq!(
            (h.instance, h.route("feed")),
            (1, 2),
            "nothing held on chat"
        );
        h.add_route("feed", 0);
        h.add_route("chat", 0);
        assert_eq!(
            h.routes,
            vec![("feed".into(), 2)],
            "adding nothing adds no entry"
        );
        h.add_route("feed", 3);
        assert_eq!(h.route("feed"), 5);
    }

    #[test]
    fn head_round_trips() {
        let mut holdings = Holdings::default();
        let s = store();
        holdings.add(&admit(&s, "chat", Some("ann")));
        holdings.add(&admit(&s, "chat", Some("bob")));
        holdings.add(&admit(&s, "feed", None));
        let head = Head {
            generation: 7,
            heartbeat_ms: 123_456,
            holdings,
        };
        let decoded = Head::decode(&head.encode()).unwrap();
        assert_eq!(decoded, head);
        assert_eq!(decoded.holdings.instance, 3);
        assert_eq!(decoded.holdings.route("chat"), 2);
        assert_eq!(decoded.holdings.route("feed"), 1);
    }

    #[test]
    fn garbage_free_retired_and_reaping_values_are_not_live_heads() {
        assert_eq!(Head::decode(b""), None);
        assert_eq!(Head::decode(RETIRED), None);
        assert_eq!(Head::decode(&[2, 2, 3]), None);
        let head = Head {
            generation: 1,
            heartbeat_ms: 1,
            holdings: Holdings::default(),
        };
        let mut bytes = head.encode();
        bytes.push(0);
        assert_eq!(Head::decode(&bytes), None, "trailing bytes");
        let mut reaping = head.encode();
        reaping[0] = REAPING;
        assert_eq!(Head::decode(&reaping), None);
        assert_eq!(decode_head(&reaping), Some((REAPING, head)));
        assert_eq!(live_generation(&reaping), None);
    }

    #[test]
    fn a_sub_ledger_is_edited_in_place_in_its_stored_form() {
        let mut users = Users::new();
        users.set_tag(9);
        users.add("ann");
        users.add("bob");
        users.add("ann");
        let mut expected = vec![USERS_VERSION];
        expected.extend_from_slice(&9u64.to_le_bytes());
        slots::push_entry(&mut expected, b"ann", 2).unwrap();
        slots::push_entry(&mut expected, b"bob", 1).unwrap();
        assert_eq!(users.0, expected);
        assert_eq!(users_tag(&users.0), Some(9));
        assert_eq!((users.count("ann"), users.count("bob")), (2, 1));
        assert!(users.remove("ann"));
        assert!(users.remove("bob"));
        assert_eq!(users.count("bob"), 0);
        assert!(!users.remove("bob"), "never below zero");
        assert!(users.remove("ann"));
        assert!(users.entries().is_empty());
        assert_eq!(users_tag(b""), None);
        assert_eq!(users_tag(&[USERS_VERSION, 1]), None);
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
    fn a_registration_writes_its_head_and_every_sub_ledger_with_its_tag() {
        let s = store();
        let o = Owner::register(&s, 5).unwrap();
        let head = Head::decode(&s.value(&ledger_key(0)).unwrap()).unwrap();
        assert_eq!((head.generation, head.heartbeat_ms), (o.generation(), 5));
        for shard in 0..slots::N_SHARDS {
            let users = s.value(&users_key(0, shard)).unwrap();
            assert_eq!(users_tag(&users), Some(o.generation()));
            assert_eq!(users.len(), USERS_HEADER);
        }
        assert_eq!(
            s.keys()
                .iter()
                .filter(|k| k.starts_with("eg.own.0"))
                .count(),
            1 + slots::N_SHARDS as usize,
            "bounded: one head and one sub-ledger per user shard per pool key"
        );
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
        assert_eq!(counts(&s, &["ann", "bob"]), (1, 0, 1, vec![1, 0]));
        assert_eq!(s.value(&dead.key).unwrap(), b"", "its key is free");
        for shard in 0..slots::N_SHARDS {
            assert_eq!(s.value(&users_key(dead.slot, shard)).unwrap(), b"");
        }

        // Reaped once only.
        assert_eq!(
            reap(&s, STALE_AFTER_MS * 2, Some(live.generation())).unwrap(),
            vec![]
        );
        assert_eq!(counts(&s, &["ann", "bob"]), (1, 0, 1, vec![1, 0]));
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
        assert_eq!(counts(&s, &["ann"]), (1, 1, 0, vec![1]));
        // And its release later balances exactly.
        slow.released(&s, &a, STALE_AFTER_MS + 1).unwrap();
        crate::websocket::slots::release(&s, a).unwrap();
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));
        assert!(slow.is_empty());
    }

    // ---- a slow owner and a reaper ----------------------------------------------

    #[test]
    fn a_slot_taken_after_the_reap_is_counted_once_when_the_owner_comes_back() {
        // The reaper gave the generation back; the owner then takes a slot (counts +1)
        // and finds its sub-ledger gone. The new slot was in no record the reaper
        // read: it must not be added back a second time.
        let s = store();
        let mut slow = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        slow.acquired(&s, &ann, 0).unwrap();
        reap(&s, STALE_AFTER_MS, None).unwrap();
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));

        let bob = admit(&s, "chat", Some("bob"));
        assert_eq!(
            slow.acquired(&s, &bob, STALE_AFTER_MS).unwrap(),
            Written::Reregistered
        );
        assert_eq!(counts(&s, &["ann", "bob"]), (2, 2, 0, vec![1, 1]));
        // Without a user, the head is where it finds out.
        reap(&s, STALE_AFTER_MS * 3, None).unwrap();
        let feed = admit(&s, "feed", None);
        assert_eq!(
            slow.acquired(&s, &feed, STALE_AFTER_MS * 3).unwrap(),
            Written::Reregistered
        );
        assert_eq!(counts(&s, &["ann", "bob"]), (3, 2, 1, vec![1, 1]));

        for a in [ann, bob, feed] {
            slow.released(&s, &a, STALE_AFTER_MS * 3).unwrap();
            slots::release(&s, a).unwrap();
        }
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 0]));
    }

    #[test]
    fn a_slot_given_back_after_the_reap_is_not_given_back_twice() {
        let s = store();
        let mut slow = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        let bob = admit(&s, "feed", Some("bob"));
        slow.acquired(&s, &ann, 0).unwrap();
        slow.acquired(&s, &bob, 0).unwrap();
        reap(&s, STALE_AFTER_MS, None).unwrap();
        // Ledger first, then the counts (the host layer's order).
        assert_eq!(
            slow.released(&s, &ann, STALE_AFTER_MS).unwrap(),
            Written::Reregistered
        );
        slots::release(&s, ann).unwrap();
        assert_eq!(counts(&s, &["ann", "bob"]), (1, 0, 1, vec![0, 1]));
        slow.released(&s, &bob, STALE_AFTER_MS).unwrap();
        slots::release(&s, bob).unwrap();
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 0]));
        assert!(slow.is_empty());
    }

    /// The reaper runs between the owner's sub-ledger write and its head write: the
    /// sub-ledger (with the new user) is given back, the head (without the new slot)
    /// too, and the owner puts back exactly that.
    fn reaped_between_sub_ledger_and_head(acquire: bool) {
        let s = store();
        let mut slow = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        slow.acquired(&s, &ann, 0).unwrap();
        let bob = admit(&s, "chat", Some("bob"));
        slow.acquired(&s, &bob, 0).unwrap();
        let head_key = slow.key.clone();
        let once = Rc::new(Cell::new(false));
        let flag = once.clone();
        s.set_before_set_hook(move |st, key| {
            if key == head_key && !flag.replace(true) {
                assert_eq!(reap(st, STALE_AFTER_MS, None).unwrap().len(), 1);
            }
            None
        });
        let written = if acquire {
            let carl = admit(&s, "chat", Some("carl"));
            let w = slow.acquired(&s, &carl, STALE_AFTER_MS).unwrap();
            s.clear_before_set_hook();
            assert_eq!(
                counts(&s, &["ann", "bob", "carl"]),
                (3, 3, 0, vec![1, 1, 1])
            );
            for a in [carl, bob] {
                slow.released(&s, &a, STALE_AFTER_MS).unwrap();
                slots::release(&s, a).unwrap();
            }
            w
        } else {
            let w = slow.released(&s, &bob, STALE_AFTER_MS).unwrap();
            s.clear_before_set_hook();
            slots::release(&s, bob).unwrap();
            w
        };
        assert!(once.get(), "the reaper ran");
        assert_eq!(written, Written::Reregistered);
        assert_eq!(
            counts(&s, &["ann", "bob", "carl"]),
            (1, 1, 0, vec![1, 0, 0])
        );
        slow.released(&s, &ann, STALE_AFTER_MS).unwrap();
        slots::release(&s, ann).unwrap();
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 0]));
        // Nothing of the first generation is left for a later reaper.
        assert_eq!(
            reap(&s, STALE_AFTER_MS * 10, Some(slow.generation())).unwrap(),
            vec![]
        );
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));
    }

    #[test]
    fn a_reap_between_an_acquires_two_writes_is_counted_exactly() {
        reaped_between_sub_ledger_and_head(true);
    }

    #[test]
    fn a_reap_between_a_releases_two_writes_is_counted_exactly() {
        reaped_between_sub_ledger_and_head(false);
    }

    #[test]
    fn an_owner_beating_between_the_reapers_read_and_its_cas_stays_alive() {
        let s = store();
        let owner = Rc::new(RefCell::new(Owner::register(&s, 0).unwrap()));
        let a = admit(&s, "chat", Some("ann"));
        owner.borrow_mut().acquired(&s, &a, 0).unwrap();
        let generation = owner.borrow().generation();
        let head_key = owner.borrow().key.clone();
        let o = owner.clone();
        s.set_before_set_hook(move |st, key| {
            if key == head_key {
                // The owner beats just before the reaper's CAS.
                assert_eq!(
                    o.borrow_mut().heartbeat(st, STALE_AFTER_MS).unwrap(),
                    Written::Written
                );
            }
            None
        });
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap(), vec![]);
        s.clear_before_set_hook();
        assert_eq!(owner.borrow().generation(), generation);
        assert_eq!(counts(&s, &["ann"]), (1, 1, 0, vec![1]));
        assert_eq!(
            reap(&s, STALE_AFTER_MS + 1, None).unwrap(),
            vec![],
            "it beat"
        );
    }

    #[test]
    fn an_owner_beating_while_it_is_being_reaped_is_counted_back_exactly() {
        let s = store();
        let mut slow = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        let bob = admit(&s, "chat", Some("bob"));
        slow.acquired(&s, &ann, 0).unwrap();
        slow.acquired(&s, &bob, 0).unwrap();
        // The reaper takes the head, then stops before giving back any sub-ledger.
        fail_writes(&s, is_sub_ledger);
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap().len(), 1);
        s.clear_before_set_hook();
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![1, 1]));
        assert_eq!(
            slow.heartbeat(&s, STALE_AFTER_MS).unwrap(),
            Written::Reregistered
        );
        assert_eq!(
            counts(&s, &["ann", "bob"]),
            (2, 2, 0, vec![2, 2]),
            "high meanwhile"
        );
        // Any reaper finishes the job, and reports no second failure.
        assert_eq!(
            reap(&s, STALE_AFTER_MS + 1, Some(slow.generation())).unwrap(),
            vec![]
        );
        assert_eq!(counts(&s, &["ann", "bob"]), (2, 2, 0, vec![1, 1]));
        for a in [ann, bob] {
            slow.released(&s, &a, STALE_AFTER_MS + 1).unwrap();
            slots::release(&s, a).unwrap();
        }
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 0]));
    }

    // ---- two reapers ------------------------------------------------------------

    #[test]
    fn two_reapers_racing_for_a_head_give_it_back_once() {
        let s = store();
        let mut dead = Owner::register(&s, 0).unwrap();
        let a = admit(&s, "chat", Some("ann"));
        dead.acquired(&s, &a, 0).unwrap();
        // The other reaper takes the head, and gives everything back, between our
        // read and our CAS.
        let key = dead.key.clone();
        let other = Rc::new(RefCell::new(Vec::new()));
        let report = other.clone();
        s.set_before_set_hook(move |st, k| {
            if k == key && report.borrow().is_empty() {
                *report.borrow_mut() = reap(st, STALE_AFTER_MS, None).unwrap();
            }
            None
        });
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap(), vec![]);
        s.clear_before_set_hook();
        assert_eq!(other.borrow().len(), 1, "the other reaper reports it");
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));
    }

    #[test]
    fn two_reapers_racing_for_a_sub_ledger_give_it_back_once() {
        let s = store();
        let mut dead = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        let mate = shard_mate("ann");
        let other = admit(&s, "chat", Some(mate.as_str()));
        dead.acquired(&s, &ann, 0).unwrap();
        dead.acquired(&s, &other, 0).unwrap();
        let shard_key = users_key(dead.slot, user_shard("ann"));
        let ran = Rc::new(Cell::new(false));
        let flag = ran.clone();
        s.set_before_set_hook(move |st, k| {
            if k == shard_key && !flag.replace(true) {
                // Our reaper took the head; the other one finishes everything first.
                assert_eq!(reap(st, STALE_AFTER_MS, None).unwrap(), vec![]);
            }
            None
        });
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap().len(), 1);
        s.clear_before_set_hook();
        assert!(ran.get());
        assert_eq!(counts(&s, &["ann", mate.as_str()]), (0, 0, 0, vec![0, 0]));
        assert_eq!(s.value(&dead.key).unwrap(), b"", "freed");
    }

    #[test]
    fn a_reap_left_midway_is_finished_by_the_next_pass() {
        let s = store();
        let mut dead = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        let bob = admit(&s, "feed", Some("bob"));
        dead.acquired(&s, &ann, 0).unwrap();
        dead.acquired(&s, &bob, 0).unwrap();
        assert_ne!(user_shard("ann"), user_shard("bob"));
        let bob_key = users_key(dead.slot, user_shard("bob"));
        fail_writes(&s, move |k| k == bob_key);
        let reaped = reap(&s, STALE_AFTER_MS, None).unwrap();
        s.clear_before_set_hook();
        assert_eq!(reaped.len(), 1, "reported by the reaper that took the head");
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 1]));
        assert_eq!(s.value(&dead.key).unwrap()[0], REAPING, "not reused yet");
        let next = Owner::register(&s, STALE_AFTER_MS).unwrap();
        assert_ne!(next.key, dead.key);

        assert_eq!(
            reap(&s, STALE_AFTER_MS + 1, Some(next.generation())).unwrap(),
            vec![]
        );
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 0]));
        assert_eq!(s.value(&dead.key).unwrap(), b"");
    }

    #[test]
    fn a_pass_that_only_fails_reports_its_error_and_leaves_the_head_reaping() {
        let s = store();
        let mut dead = Owner::register(&s, 0).unwrap();
        dead.acquired(&s, &admit(&s, "chat", Some("ann")), 0)
            .unwrap();
        fail_writes(&s, is_sub_ledger);
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap().len(), 1);
        assert_eq!(
            reap(&s, STALE_AFTER_MS, None).unwrap_err(),
            StoreError::Host(1)
        );
        s.clear_before_set_hook();
        assert_eq!(reap(&s, STALE_AFTER_MS, None).unwrap(), vec![]);
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));
    }

    // ---- a claimant and the previous generation -----------------------------------

    #[test]
    fn a_late_write_of_the_previous_generation_cannot_touch_the_claimants_records() {
        let s = Rc::new(store());
        let mut old = Owner::register(&*s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        old.acquired(&*s, &ann, 0).unwrap();
        let shard_key = users_key(old.slot, user_shard("bob"));
        let mate = shard_mate("bob");
        let claimant: Rc<RefCell<Option<(Owner, Admission)>>> = Rc::new(RefCell::new(None));
        let slot = claimant.clone();
        // Between the old owner's read of bob's sub-ledger and its write: it is
        // reaped, its pool key freed and claimed by a new generation holding `mate`.
        s.set_before_set_hook(move |st, k| {
            if k == shard_key && slot.borrow().is_none() {
                assert_eq!(reap(st, STALE_AFTER_MS, None).unwrap().len(), 1);
                let mut new = Owner::register(st, STALE_AFTER_MS).unwrap();
                let m = admit(st, "feed", Some(mate.as_str()));
                new.acquired(st, &m, STALE_AFTER_MS).unwrap();
                *slot.borrow_mut() = Some((new, m));
            }
            None
        });
        let bob = admit(&s, "chat", Some("bob"));
        assert_eq!(
            old.acquired(&*s, &bob, STALE_AFTER_MS).unwrap(),
            Written::Reregistered
        );
        s.clear_before_set_hook();
        // `new` dies below holding `_m`: only the reaper gives it back.
        let (new, _m) = claimant.borrow_mut().take().unwrap();
        let mate = shard_mate("bob");
        assert_eq!(new.key, ledger_key(0), "the claimant took the freed key");
        assert_ne!(old.key, new.key);
        let theirs = s.value(&users_key(0, user_shard("bob"))).unwrap();
        assert_eq!(users_tag(&theirs), Some(new.generation()));
        let mut expected = Users::new();
        expected.set_tag(new.generation());
        expected.add(&mate);
        assert_eq!(theirs, expected.0, "only the claimant's user");
        assert_eq!(
            counts(&s, &["ann", "bob", mate.as_str()]),
            (3, 2, 1, vec![1, 1, 1])
        );

        // The claimant dies: exactly its slot comes back.
        old.heartbeat(&*s, STALE_AFTER_MS * 3).unwrap();
        reap(&*s, STALE_AFTER_MS * 3, Some(old.generation())).unwrap();
        assert_eq!(
            counts(&s, &["ann", "bob", mate.as_str()]),
            (2, 2, 0, vec![1, 1, 0])
        );
        for a in [ann, bob] {
            old.released(&*s, &a, STALE_AFTER_MS * 3).unwrap();
            slots::release(&*s, a).unwrap();
        }
        assert_eq!(counts(&s, &["ann", "bob"]), (0, 0, 0, vec![0, 0]));
    }

    #[test]
    fn a_retired_generation_that_comes_back_leaves_its_successors_records_alone() {
        let s = store();
        let mut old = Owner::register(&s, 0).unwrap();
        old.retire(&s).unwrap();
        let mut new = Owner::register(&s, 1).unwrap();
        assert_eq!(new.key, old.key, "the retired key is reused");
        let mate = shard_mate("ann");
        let m = admit(&s, "feed", Some(mate.as_str()));
        new.acquired(&s, &m, 1).unwrap();
        let before = s.value(&users_key(0, user_shard("ann"))).unwrap();

        // The old VM takes a slot again (a policy change brought a plugin back).
        let ann = admit(&s, "chat", Some("ann"));
        assert_eq!(old.acquired(&s, &ann, 2).unwrap(), Written::Written);
        assert_ne!(old.key, new.key);
        assert_eq!(s.value(&users_key(0, user_shard("ann"))).unwrap(), before);
        assert_eq!(counts(&s, &["ann", mate.as_str()]), (2, 1, 1, vec![1, 1]));
        // Each is reaped for what it holds.
        new.heartbeat(&s, STALE_AFTER_MS + 2).unwrap();
        reap(&s, STALE_AFTER_MS + 2, Some(new.generation())).unwrap();
        assert_eq!(counts(&s, &["ann", mate.as_str()]), (1, 0, 1, vec![0, 1]));
    }

    #[test]
    fn a_registration_that_cannot_write_its_sub_ledgers_gives_its_key_back() {
        let s = store();
        fail_writes(&s, |k| k.ends_with(".u7"));
        assert_eq!(
            Owner::register(&s, 0).unwrap_err(),
            OwnershipError::Store(StoreError::Host(1))
        );
        s.clear_before_set_hook();
        assert_eq!(s.value(&ledger_key(0)).unwrap(), RETIRED);
        let o = Owner::register(&s, 0).unwrap();
        assert_eq!(o.key, ledger_key(0));
    }

    #[test]
    fn an_owner_whose_registration_failed_records_again_without_counting_twice() {
        let s = store();
        let mut slow = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        slow.acquired(&s, &ann, 0).unwrap();
        reap(&s, STALE_AFTER_MS, None).unwrap();
        // Re-registration puts the counts back, then cannot record them.
        fail_writes(&s, is_sub_ledger);
        assert!(slow.heartbeat(&s, STALE_AFTER_MS).is_err());
        s.clear_before_set_hook();
        assert_eq!(counts(&s, &["ann"]), (1, 1, 0, vec![1]));
        // The next beat records them, without adding them again.
        assert_eq!(
            slow.heartbeat(&s, STALE_AFTER_MS + HEARTBEAT_MS).unwrap(),
            Written::Written
        );
        assert_eq!(counts(&s, &["ann"]), (1, 1, 0, vec![1]));
        reap(&s, STALE_AFTER_MS * 5, None).unwrap();
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));
    }

    #[test]
    fn a_failed_sub_ledger_write_is_made_good_at_the_next_beat() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let ann = admit(&s, "chat", Some("ann"));
        let key = users_key(o.slot, user_shard("ann"));
        let failing = key.clone();
        fail_writes(&s, move |k| k == failing);
        assert_eq!(
            o.acquired(&s, &ann, 0).unwrap_err(),
            OwnershipError::Store(StoreError::Host(1))
        );
        s.clear_before_set_hook();
        assert_eq!(s.value(&key).unwrap().len(), USERS_HEADER);
        o.heartbeat(&s, HEARTBEAT_MS).unwrap();
        assert_eq!(
            s.value(&key).unwrap(),
            o.users[user_shard("ann") as usize].0
        );
        reap(&s, HEARTBEAT_MS + STALE_AFTER_MS, None).unwrap();
        assert_eq!(counts(&s, &["ann"]), (0, 0, 0, vec![0]));
    }

    /// Two users in two sub-ledgers (neither shard 0) whose writes failed.
    fn two_dirty_sub_ledgers(s: &MemoryStore, o: &mut Owner) -> (String, String) {
        let mut users = (0..200)
            .map(|i| format!("u{i}"))
            .filter(|u| user_shard(u) != 0);
        let first = users.next().unwrap();
        let second = users.find(|u| user_shard(u) != user_shard(&first)).unwrap();
        for user in [&first, &second] {
            let a = admit(s, "chat", Some(user));
            let failing = users_key(o.slot, user_shard(user));
            fail_writes(s, move |k| k == failing);
            assert!(o.acquired(s, &a, 0).is_err());
            s.clear_before_set_hook();
        }
        (first, second)
    }

    #[test]
    fn a_beat_rewrites_each_failed_sub_ledger_once_then_only_the_head() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let (first, second) = two_dirty_sub_ledgers(&s, &mut o);
        o.heartbeat(&s, HEARTBEAT_MS).unwrap();
        for user in [&first, &second] {
            let key = users_key(o.slot, user_shard(user));
            assert_eq!(s.value(&key).unwrap(), o.users[user_shard(user) as usize].0);
        }
        let writes = s.write_count();
        o.heartbeat(&s, 2 * HEARTBEAT_MS).unwrap();
        assert_eq!(
            s.write_count() - writes,
            1,
            "the next beat writes the head only"
        );
    }

    #[test]
    fn a_beat_that_fails_midway_keeps_the_sub_ledgers_it_did_not_rewrite() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let (first, second) = two_dirty_sub_ledgers(&s, &mut o);
        // The beat rewrites the lower shard first; the other one fails again.
        let (low, high) = if user_shard(&first) < user_shard(&second) {
            (first, second)
        } else {
            (second, first)
        };
        let failing = users_key(o.slot, user_shard(&high));
        fail_writes(&s, move |k| k == failing);
        assert!(o.heartbeat(&s, HEARTBEAT_MS).is_err());
        s.clear_before_set_hook();
        o.heartbeat(&s, 2 * HEARTBEAT_MS).unwrap();
        let high_key = users_key(o.slot, user_shard(&high));
        assert_eq!(
            s.value(&high_key).unwrap(),
            o.users[user_shard(&high) as usize].0,
            "the sub-ledger whose rewrite failed is rewritten at the next beat"
        );
        let low_key = users_key(o.slot, user_shard(&low));
        assert_eq!(
            s.value(&low_key).unwrap(),
            o.users[user_shard(&low) as usize].0
        );
        let writes = s.write_count();
        o.heartbeat(&s, 3 * HEARTBEAT_MS).unwrap();
        assert_eq!(
            s.write_count() - writes,
            1,
            "nothing left to rewrite but the head"
        );
    }

    #[test]
    fn finishing_a_reap_frees_only_the_reaping_head_of_that_generation() {
        let s = store();
        let mut old = Owner::register(&s, 0).unwrap();
        let slot = old.slot;
        let ann = admit(&s, "chat", Some("ann"));
        old.acquired(&s, &ann, 0).unwrap();
        // Another generation's reaping head sits in the key (the old one was
        // freed and the key reused meanwhile).
        let mut value = s.value(&old.key).unwrap();
        value[0] = REAPING;
        value[1..9].copy_from_slice(&(old.generation + 1).to_le_bytes());
        s.set(&old.key, &value, s.get(&old.key).unwrap().unwrap().1)
            .unwrap();
        finish_reaping(&s, slot, old.generation).unwrap();
        assert_eq!(
            s.value(&old.key).unwrap(),
            value,
            "not this generation's head: left for its own reaper"
        );
    }

    // ---- what moves ---------------------------------------------------------------

    #[test]
    fn an_acquire_rewrites_the_head_and_one_sub_ledger_and_a_beat_only_the_head() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let users: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let mut held = Vec::new();
        for user in &users {
            let a = admit(&s, "chat", Some(user));
            o.acquired(&s, &a, 0).unwrap();
            held.push(a);
        }
        let written = Rc::new(RefCell::new(Vec::new()));
        let log = written.clone();
        s.set_before_set_hook(move |_, k| {
            log.borrow_mut().push(k.to_owned());
            None
        });
        let a = admit(&s, "chat", Some("one-more"));
        let reads = s.read_count();
        o.acquired(&s, &a, 0).unwrap();
        assert_eq!(s.read_count() - reads, 2, "the sub-ledger and the head");
        let shard = user_shard("one-more");
        assert_eq!(
            written.borrow()[written.borrow().len() - 2..],
            [users_key(o.slot, shard), o.key.clone()]
        );
        let sub_ledger = s.value(&users_key(o.slot, shard)).unwrap().len();
        assert!(sub_ledger < 2_001 * 20 / 32, "about a 64th: {sub_ledger} B");
        assert!(s.value(&o.key).unwrap().len() < 64);
        written.borrow_mut().clear();
        o.heartbeat(&s, HEARTBEAT_MS).unwrap();
        assert_eq!(*written.borrow(), [o.key.clone()]);
        s.clear_before_set_hook();
        // In memory: the stored form, no more than a few bytes a user over the ids.
        let in_memory: usize = o.users.iter().map(|u| u.0.len()).sum();
        let ids: usize = users.iter().map(String::len).sum();
        assert!(in_memory <= ids + 2_001 * 6 + 64 * USERS_HEADER + 20);
        assert_eq!(o.user_count("user-7"), 1);
    }

    #[test]
    fn a_pass_with_nothing_stale_reads_only_the_heads_and_writes_nothing() {
        let s = store();
        let mut a = Owner::register(&s, 0).unwrap();
        let _b = Owner::register(&s, 0).unwrap();
        a.acquired(&s, &admit(&s, "chat", Some("ann")), 0).unwrap();
        let (reads, writes) = (s.read_count(), s.write_count());
        assert_eq!(reap(&s, STALE_AFTER_MS - 1, None).unwrap(), vec![]);
        assert_eq!(s.read_count() - reads, 3, "the pool size and two heads");
        assert_eq!(s.write_count(), writes);
    }

    #[test]
    fn heartbeat_writes_only_when_due() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let writes = s.write_count();
        assert_eq!(o.heartbeat(&s, HEARTBEAT_MS - 1).unwrap(), Written::NotDue);
        assert_eq!(s.write_count(), writes);
        assert_eq!(o.heartbeat(&s, HEARTBEAT_MS).unwrap(), Written::Written);
        assert_eq!(s.write_count(), writes + 1);
    }

    #[test]
    fn a_retired_generation_is_not_reaped_and_its_key_is_reused() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        o.retire(&s).unwrap();
        assert_eq!(o.heartbeat(&s, HEARTBEAT_MS * 10).unwrap(), Written::NotDue);
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
            h.routes.push(("chat".into(), 1));
        }));
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        assert!(o.is_empty());
        o.users[3].add("ann");
        assert!(!o.is_empty(), "a user alone");
    }

    #[test]
    fn an_owner_shows_what_it_holds() {
        let s = store();
        let mut o = Owner::register(&s, 0).unwrap();
        let a = admit(&s, "chat", Some("ann"));
        o.acquired(&s, &a, 0).unwrap();
        assert_eq!(o.holdings().instance, 1);
        assert_eq!(o.holdings().route("chat"), 1);
        assert_eq!(o.user_count("ann"), 1);
        assert_eq!(o.user_count("bob"), 0);
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
