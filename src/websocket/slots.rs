//! Exact WebSocket connection counting across workers: admission of an upgrade against
//! the instance, route and per-user limits, and its release.
//!
//! Owns: the shared-data keys under `eg.ws.` (their names, formats and creation), the
//! CAS loops that update them, and the [`Admission`] token that proves a slot is held.
//!
//! Must never: create a key outside [`ensure_keys`] (creating ignores CAS, so a create
//! racing with traffic could erase increments), loop without a bound, let a count go
//! below zero, or store anything per user that outlives that user's last open connection
//! (keys can never be removed, so the per-user data lives in a fixed set of shard keys
//! holding only users with open connections).
//!
//! Keys and formats (part of the shared-data contract: shared data outlives a VM reload,
//! so changing any of this needs a new key prefix):
//! - `eg.ws.instance`, `eg.ws.route.<route name>`: decimal ASCII count (`""` reads as 0);
//! - `eg.ws.users.<0..N_SHARDS>`: shard = FNV-1a 32 of the user id mod [`N_SHARDS`];
//!   value = version byte `1`, then entries `u16 LE id length, id bytes, u32 LE count`,
//!   only for users with count > 0 (`""` reads as the empty map).
//!
//! Order of acquisition: user → route → instance, the most selective limit first. A
//! request rejected by its own user limit then never touches (and never transiently
//! inflates) the route and instance counters that every other request competes for;
//! the rollback window in which an increment later undone can make another request see
//! "full" is confined to requests that passed the narrower limits.

use crate::shared_store::{SharedStore, StoreError};
use std::fmt;
use std::rc::Rc;

/// Key of the instance-wide count.
pub const INSTANCE_KEY: &str = "eg.ws.instance";
/// Prefix of the per-route count keys.
pub const ROUTE_KEY_PREFIX: &str = "eg.ws.route.";
/// Prefix of the per-user shard keys.
pub const USER_SHARD_KEY_PREFIX: &str = "eg.ws.users.";
/// Number of per-user shard keys. Part of the shared-data format: never change it
/// without changing [`USER_SHARD_KEY_PREFIX`].
pub const N_SHARDS: u32 = 64;
/// Longest accepted user id, in bytes (keeps shard values small and the length prefix
/// within u16).
pub const MAX_USER_ID_BYTES: usize = 256;
/// CAS attempts per counter on acquire before giving up with [`Rejection::Contention`].
pub const ACQUIRE_ATTEMPTS: u32 = 100;
/// CAS attempts per counter on release and rollback: higher, because giving up leaks a
/// slot until the process restarts.
pub const RELEASE_ATTEMPTS: u32 = 1000;

const SHARD_FORMAT_VERSION: u8 = 1;

/// One upgrade asking for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionRequest<'a> {
    /// Route name (the policy's: the admission shares it, no copy per
    /// connection); its key must have been created by [`ensure_keys`].
    pub route: &'a Rc<str>,
    pub route_limit: Option<u32>,
    pub instance_limit: Option<u32>,
    /// The identified user, if any. Counted per user only when `user_limit` is set too.
    pub user: Option<&'a str>,
    pub user_limit: Option<u32>,
}

/// Proof that one slot is held. Not `Clone`: [`release`] consumes it, so a slot can be
/// released at most once (keep it as `Option<Admission>` and `take()` it).
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    /// Shared with the policy: an open connection holds this for its whole life.
    route: Rc<str>,
    /// Set only when the user was counted (user and user limit both present).
    /// Exact-size, for the same reason.
    user: Option<Box<str>>,
}

impl Admission {
    /// The admission a slot holder recorded elsewhere (an Engine.IO session in
    /// shared data), for the one caller that took the record.
    pub fn restore(route: Rc<str>, user: Option<String>) -> Admission {
        Admission {
            route,
            user: user.map(String::into_boxed_str),
        }
    }

    pub fn route(&self) -> &str {
        &self.route
    }
    /// The user whose per-user count this admission holds, if it holds one.
    pub fn counted_user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// Why an upgrade was not admitted. Host mapping: `InstanceFull`/`RouteFull` → 503
/// `websocket_capacity`, `UserLimit` → 429 `websocket_user_limit`; the rest are
/// internal failures (fail closed: 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    InstanceFull,
    RouteFull,
    UserLimit,
    /// The user id is empty or longer than [`MAX_USER_ID_BYTES`].
    InvalidUser,
    /// Still losing CAS races after [`ACQUIRE_ATTEMPTS`].
    Contention,
    Store(StoreError),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InstanceFull => f.write_str("instance websocket limit reached"),
            Rejection::RouteFull => f.write_str("route websocket limit reached"),
            Rejection::UserLimit => f.write_str("user websocket limit reached"),
            Rejection::InvalidUser => f.write_str("user id empty or too long"),
            Rejection::Contention => f.write_str("shared data contention, gave up"),
            Rejection::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Rejection {}

/// Current counts, for the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsCounts {
    pub instance: u32,
    /// In the order of the route names asked for.
    pub routes: Vec<(String, u32)>,
}

/// Key of the count of `route`.
pub fn route_key(route: &str) -> String {
    format!("{ROUTE_KEY_PREFIX}{route}")
}

/// Shard index of `user`: FNV-1a 32 of its bytes mod [`N_SHARDS`]. Stable forever.
pub fn user_shard(user: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in user.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % N_SHARDS
}

/// Key of shard `shard`.
pub fn user_shard_key(shard: u32) -> String {
    format!("{USER_SHARD_KEY_PREFIX}{shard}")
}

/// Creates every missing key with its zero value: the instance key, one per route, and
/// the [`N_SHARDS`] user shards. Call it in `on_configure` on every worker, before any
/// traffic. Existing counts (e.g. after a VM reload: shared data outlives it) are kept.
///
/// Creation is atomic ([`SharedStore::create_if_absent`]): a worker configuring late
/// can never reset a count another worker has already raised.
pub fn ensure_keys<S: SharedStore + ?Sized>(
    store: &S,
    route_names: &[&str],
) -> Result<(), StoreError> {
    ensure_key(store, INSTANCE_KEY, b"0")?;
    for route in route_names {
        ensure_key(store, &route_key(route), b"0")?;
    }
    for shard in 0..N_SHARDS {
        ensure_key(store, &user_shard_key(shard), &[SHARD_FORMAT_VERSION])?;
    }
    Ok(())
}

fn ensure_key<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    zero: &[u8],
) -> Result<(), StoreError> {
    store.create_if_absent(key, zero)?;
    Ok(())
}

/// Takes one slot for `request`, or says why not. Never exceeds a limit, even with
/// other workers acquiring concurrently: each counter is a CAS read-modify-write checked
/// against its limit, and a later rejection rolls back the earlier increments.
pub fn try_acquire<S: SharedStore + ?Sized>(
    store: &S,
    request: &AdmissionRequest<'_>,
) -> Result<Admission, Rejection> {
    let counted_user = match (request.user, request.user_limit) {
        (Some(user), Some(limit)) => {
            if user.is_empty() || user.len() > MAX_USER_ID_BYTES {
                return Err(Rejection::InvalidUser);
            }
            Some((user, limit))
        }
        _ => None,
    };

    if let Some((user, limit)) = counted_user {
        increment_user(store, user, limit)?;
    }

    let route_key = route_key(request.route);
    if let Err(rejection) =
        increment_counter(store, &route_key, request.route_limit, Rejection::RouteFull)
    {
        if let Some((user, _)) = counted_user {
            // Best effort: a failed rollback leaks one user slot; the rejection stands.
            let _ = decrement_user(store, user);
        }
        return Err(rejection);
    }

    if let Err(rejection) = increment_counter(
        store,
        INSTANCE_KEY,
        request.instance_limit,
        Rejection::InstanceFull,
    ) {
        let _ = decrement_counter(store, &route_key);
        if let Some((user, _)) = counted_user {
            let _ = decrement_user(store, user);
        }
        return Err(rejection);
    }

    Ok(Admission {
        route: Rc::clone(request.route),
        user: counted_user.map(|(user, _)| user.into()),
    })
}

/// Gives back the slot held by `admission`: decrements instance, route and user (never
/// below zero; the user's shard entry disappears at zero). Attempts all three even if
/// one fails and returns the first error (a failure leaks that count).
pub fn release<S: SharedStore + ?Sized>(store: &S, admission: Admission) -> Result<(), StoreError> {
    let instance = decrement_counter(store, INSTANCE_KEY);
    let route = decrement_counter(store, &route_key(&admission.route));
    let user = match &admission.user {
        Some(user) => decrement_user(store, user),
        None => Ok(()),
    };
    instance.and(route).and(user)
}

/// Instance and per-route counts for the status endpoint. Missing keys read as 0.
pub fn read_counts<S: SharedStore + ?Sized>(
    store: &S,
    route_names: &[&str],
) -> Result<WsCounts, StoreError> {
    let read = |key: &str| -> Result<u32, StoreError> {
        match store.get(key)? {
            Some((value, _)) => parse_count(&value),
            None => Ok(0),
        }
    };
    let instance = read(INSTANCE_KEY)?;
    let mut routes = Vec::with_capacity(route_names.len());
    for route in route_names {
        routes.push(((*route).to_owned(), read(&route_key(route))?));
    }
    Ok(WsCounts { instance, routes })
}

/// Total bytes of all user shard values: bounded by the open connections' user ids.
pub fn shard_bytes_total<S: SharedStore + ?Sized>(store: &S) -> Result<usize, StoreError> {
    let mut total = 0usize;
    for shard in 0..N_SHARDS {
        if let Some((value, _)) = store.get(&user_shard_key(shard))? {
            total = total.saturating_add(value.len());
        }
    }
    Ok(total)
}

/// The per-user count of `user` (0 if absent).
pub fn user_count<S: SharedStore + ?Sized>(store: &S, user: &str) -> Result<u32, StoreError> {
    match store.get(&user_shard_key(user_shard(user)))? {
        Some((value, _)) => shard_lookup(&value, user.as_bytes()),
        None => Ok(0),
    }
}

// ---- counters ----

fn parse_count(value: &[u8]) -> Result<u32, StoreError> {
    if value.is_empty() {
        return Ok(0); // what "removal" leaves behind
    }
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(StoreError::Corrupt);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or(StoreError::Corrupt)
}

fn increment_counter<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    limit: Option<u32>,
    full: Rejection,
) -> Result<(), Rejection> {
    for _ in 0..ACQUIRE_ATTEMPTS {
        let (value, cas) = store
            .get(key)
            .map_err(Rejection::Store)?
            .ok_or(Rejection::Store(StoreError::MissingKey))?;
        let count = parse_count(&value).map_err(Rejection::Store)?;
        if limit.is_some_and(|limit| count >= limit) {
            return Err(full);
        }
        let next = count.checked_add(1).ok_or(full)?;
        match store.set(key, next.to_string().as_bytes(), cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(Rejection::Store(e)),
        }
    }
    Err(Rejection::Contention)
}

fn decrement_counter<S: SharedStore + ?Sized>(store: &S, key: &str) -> Result<(), StoreError> {
    let mut last = StoreError::CasMismatch;
    for _ in 0..RELEASE_ATTEMPTS {
        let (value, cas) = store.get(key)?.ok_or(StoreError::MissingKey)?;
        let count = parse_count(&value)?;
        if count == 0 {
            return Ok(()); // never below zero
        }
        let next = count.saturating_sub(1);
        match store.set(key, next.to_string().as_bytes(), cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => last = StoreError::CasMismatch,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

// ---- user shards ----

/// Iterates the `(id, count)` entries of a shard value.
struct ShardEntries<'a> {
    rest: &'a [u8],
}

fn shard_entries(value: &[u8]) -> Result<ShardEntries<'_>, StoreError> {
    match value.split_first() {
        None => Ok(ShardEntries { rest: &[] }),
        Some((&SHARD_FORMAT_VERSION, rest)) => Ok(ShardEntries { rest }),
        Some(_) => Err(StoreError::Corrupt),
    }
}

impl<'a> Iterator for ShardEntries<'a> {
    type Item = Result<(&'a [u8], u32), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = parse_entry(self.rest);
        match parsed {
            Some((id, count, rest)) => {
                self.rest = rest;
                Some(Ok((id, count)))
            }
            None => {
                self.rest = &[];
                Some(Err(StoreError::Corrupt))
            }
        }
    }
}

/// The first entry of `bytes` (shard format, no version byte): its id, its count, and
/// what follows it.
pub fn parse_entry(bytes: &[u8]) -> Option<(&[u8], u32, &[u8])> {
    let (len, rest) = split_array::<2>(bytes)?;
    let len = usize::from(u16::from_le_bytes(len));
    let id = rest.get(..len)?;
    let rest = rest.get(len..)?;
    let (count, rest) = split_array::<4>(rest)?;
    Some((id, u32::from_le_bytes(count), rest))
}

fn split_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = bytes.get(..N)?;
    let head: [u8; N] = head.try_into().ok()?;
    Some((head, bytes.get(N..)?))
}

/// Appends one entry in the shard format: `u16 LE id length, id bytes, u32 LE count`.
pub fn push_entry(out: &mut Vec<u8>, id: &[u8], count: u32) -> Result<(), StoreError> {
    let len = u16::try_from(id.len()).map_err(|_| StoreError::Corrupt)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&count.to_le_bytes());
    Ok(())
}

fn shard_lookup(value: &[u8], user: &[u8]) -> Result<u32, StoreError> {
    list_lookup(shard_entries(value)?.rest, user)
}

/// Rewrites a shard with `user`'s count changed by `delta` (+1 or -1), dropping entries
/// that reach 0. Returns the user's previous count and the new value. A user listed
/// twice is corrupt.
fn shard_apply(value: &[u8], user: &[u8], increment: bool) -> Result<(u32, Vec<u8>), StoreError> {
    let mut out = Vec::with_capacity(value.len().saturating_add(user.len()).saturating_add(7));
    out.push(SHARD_FORMAT_VERSION);
    let mut previous: Option<u32> = None;
    for entry in shard_entries(value)? {
        let (id, count) = entry?;
        if id == user {
            if previous.is_some() {
                return Err(StoreError::Corrupt);
            }
            previous = Some(count);
            let next = if increment {
                count.checked_add(1).ok_or(StoreError::Corrupt)?
            } else {
                count.saturating_sub(1)
            };
            if next > 0 {
                push_entry(&mut out, id, next)?;
            }
        } else if count > 0 {
            push_entry(&mut out, id, count)?;
        }
    }
    if previous.is_none() && increment {
        push_entry(&mut out, user, 1)?;
    }
    Ok((previous.unwrap_or(0), out))
}

fn increment_user<S: SharedStore + ?Sized>(
    store: &S,
    user: &str,
    limit: u32,
) -> Result<(), Rejection> {
    let key = user_shard_key(user_shard(user));
    for _ in 0..ACQUIRE_ATTEMPTS {
        let (value, cas) = store
            .get(&key)
            .map_err(Rejection::Store)?
            .ok_or(Rejection::Store(StoreError::MissingKey))?;
        let (previous, next) =
            shard_apply(&value, user.as_bytes(), true).map_err(Rejection::Store)?;
        if previous >= limit {
            return Err(Rejection::UserLimit);
        }
        match store.set(&key, &next, cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(Rejection::Store(e)),
        }
    }
    Err(Rejection::Contention)
}

fn decrement_user<S: SharedStore + ?Sized>(store: &S, user: &str) -> Result<(), StoreError> {
    let key = user_shard_key(user_shard(user));
    let mut last = StoreError::CasMismatch;
    for _ in 0..RELEASE_ATTEMPTS {
        let (value, cas) = store.get(&key)?.ok_or(StoreError::MissingKey)?;
        let (previous, next) = shard_apply(&value, user.as_bytes(), false)?;
        if previous == 0 {
            return Ok(()); // never below zero
        }
        match store.set(&key, &next, cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => last = StoreError::CasMismatch,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

// ---- bulk changes, for slots whose holder is gone (see `ownership`) ----

/// Changes the count at `key` (the instance key or a route key) by `delta`, never below
/// zero; bounded by [`RELEASE_ATTEMPTS`].
pub fn adjust_count<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let mut last = StoreError::CasMismatch;
    for _ in 0..RELEASE_ATTEMPTS {
        let (value, cas) = store.get(key)?.ok_or(StoreError::MissingKey)?;
        let count = i64::from(parse_count(&value)?);
        let next = u32::try_from(count.saturating_add(delta).max(0)).unwrap_or(u32::MAX);
        if i64::from(next) == count {
            return Ok(());
        }
        match store.set(key, next.to_string().as_bytes(), cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => last = StoreError::CasMismatch,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Changes `user`'s count by `delta`, never below zero (the entry disappears at zero);
/// bounded by [`RELEASE_ATTEMPTS`].
pub fn adjust_user<S: SharedStore + ?Sized>(
    store: &S,
    user: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let mut list = Vec::with_capacity(user.len().saturating_add(6));
    let magnitude = u32::try_from(delta.unsigned_abs()).unwrap_or(u32::MAX);
    push_entry(&mut list, user.as_bytes(), magnitude)?;
    adjust_users(store, user_shard(user), &list, delta.signum())
}

/// Changes the count of every user in `list` by `sign` (1 or -1) times the count listed
/// for it, never below zero, in one CAS loop on shard `shard` (bounded by
/// [`RELEASE_ATTEMPTS`]). `list` holds entries in the shard format without the version
/// byte (see [`push_entry`]), for users of that shard only.
pub fn adjust_users<S: SharedStore + ?Sized>(
    store: &S,
    shard: u32,
    list: &[u8],
    sign: i64,
) -> Result<(), StoreError> {
    let key = user_shard_key(shard);
    let mut last = StoreError::CasMismatch;
    for _ in 0..RELEASE_ATTEMPTS {
        let (value, cas) = store.get(&key)?.ok_or(StoreError::MissingKey)?;
        let mut out = Vec::with_capacity(value.len().saturating_add(list.len()).saturating_add(1));
        out.push(SHARD_FORMAT_VERSION);
        let mut changed = false;
        for entry in shard_entries(&value)? {
            let (id, count) = entry?;
            let listed = i64::from(list_lookup(list, id)?);
            let next = u32::try_from(
                i64::from(count)
                    .saturating_add(sign.saturating_mul(listed))
                    .max(0),
            )
            .unwrap_or(u32::MAX);
            changed |= next != count;
            if next > 0 {
                push_entry(&mut out, id, next)?;
            }
        }
        if sign > 0 {
            for entry in (ShardEntries { rest: list }) {
                let (id, count) = entry?;
                if count > 0 && shard_lookup(&value, id)? == 0 {
                    push_entry(&mut out, id, count)?;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(());
        }
        match store.set(&key, &out, cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => last = StoreError::CasMismatch,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The count `list` (entries without the version byte) gives `user` (0 if absent).
fn list_lookup(list: &[u8], user: &[u8]) -> Result<u32, StoreError> {
    for entry in (ShardEntries { rest: list }) {
        let (id, count) = entry?;
        if id == user {
            return Ok(count);
        }
    }
    Ok(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shared_store::MemoryStore;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    const ROUTES: &[&str] = &["chat", "feed"];

    fn store() -> MemoryStore {
        let s = MemoryStore::new();
        ensure_keys(&s, ROUTES).unwrap();
        s
    }

    /// A route name as the policy holds it, made once per name and thread
    /// and kept for the test run.
    pub(crate) fn name(route: &str) -> &'static Rc<str> {
        thread_local! {
            static NAMES: RefCell<Vec<&'static Rc<str>>> = const { RefCell::new(Vec::new()) };
        }
        NAMES.with(|names| {
            let mut names = names.borrow_mut();
            if let Some(known) = names.iter().find(|n| n.as_ref() == route) {
                return *known;
            }
            let made: &'static Rc<str> = Box::leak(Box::new(Rc::from(route)));
            names.push(made);
            made
        })
    }

    fn req<'a>(route: &str, user: Option<&'a str>) -> AdmissionRequest<'a> {
        AdmissionRequest {
            route: name(route),
            route_limit: None,
            instance_limit: None,
            user,
            user_limit: None,
        }
    }

    fn counts(s: &MemoryStore) -> (u32, u32, u32) {
        let c = read_counts(s, ROUTES).unwrap();
        (c.instance, c.routes[0].1, c.routes[1].1)
    }

    #[test]
    fn ensure_keys_creates_all_keys_with_zero_values() {
        let s = store();
        assert_eq!(s.value(INSTANCE_KEY).unwrap(), b"0");
        assert_eq!(s.value("eg.ws.route.chat").unwrap(), b"0");
        assert_eq!(
            s.value("eg.ws.users.0").unwrap(),
            vec![SHARD_FORMAT_VERSION]
        );
        assert_eq!(s.keys().len(), 1 + ROUTES.len() + N_SHARDS as usize);
    }

    #[test]
    fn ensure_keys_keeps_existing_counts() {
        let s = store();
        let a = try_acquire(&s, &req("chat", None)).unwrap();
        let writes = s.write_count();
        ensure_keys(&s, &["chat", "feed", "new"]).unwrap();
        assert_eq!(s.write_count(), writes + 1); // only the new route
        assert_eq!(counts(&s), (1, 1, 0));
        release(&s, a).unwrap();
    }

    #[test]
    fn acquire_without_limits_counts_instance_and_route() {
        let s = store();
        let a = try_acquire(&s, &req("chat", Some("alice"))).unwrap();
        assert_eq!(counts(&s), (1, 1, 0));
        assert_eq!(a.route(), "chat");
        assert_eq!(a.counted_user(), None); // no user limit: not counted per user
        assert_eq!(shard_bytes_total(&s).unwrap(), N_SHARDS as usize);
        release(&s, a).unwrap();
        assert_eq!(counts(&s), (0, 0, 0));
    }

    #[test]
    fn instance_limit_is_exact() {
        let s = store();
        let r = AdmissionRequest {
            instance_limit: Some(3),
            ..req("chat", None)
        };
        let held: Vec<_> = (0..3).map(|_| try_acquire(&s, &r).unwrap()).collect();
        assert_eq!(try_acquire(&s, &r), Err(Rejection::InstanceFull));
        let r2 = AdmissionRequest {
            instance_limit: Some(3),
            ..req("feed", None)
        };
        assert_eq!(try_acquire(&s, &r2), Err(Rejection::InstanceFull));
        assert_eq!(counts(&s), (3, 3, 0));
        for a in held {
            release(&s, a).unwrap();
        }
        assert!(try_acquire(&s, &r).is_ok());
    }

    #[test]
    fn route_limit_is_exact_and_per_route() {
        let s = store();
        let chat = AdmissionRequest {
            route_limit: Some(2),
            ..req("chat", None)
        };
        let feed = AdmissionRequest {
            route_limit: Some(2),
            ..req("feed", None)
        };
        let _a = try_acquire(&s, &chat).unwrap();
        let _b = try_acquire(&s, &chat).unwrap();
        assert_eq!(try_acquire(&s, &chat), Err(Rejection::RouteFull));
        let _c = try_acquire(&s, &feed).unwrap();
        assert_eq!(counts(&s), (3, 2, 1));
    }

    #[test]
    fn user_limit_is_exact_and_per_user() {
        let s = store();
        let alice = AdmissionRequest {
            user_limit: Some(2),
            ..req("chat", Some("alice"))
        };
        let bob = AdmissionRequest {
            user_limit: Some(2),
            ..req("chat", Some("bob"))
        };
        let a1 = try_acquire(&s, &alice).unwrap();
        let _a2 = try_acquire(&s, &alice).unwrap();
        assert_eq!(try_acquire(&s, &alice), Err(Rejection::UserLimit));
        let _b1 = try_acquire(&s, &bob).unwrap();
        assert_eq!(user_count(&s, "alice").unwrap(), 2);
        assert_eq!(user_count(&s, "bob").unwrap(), 1);
        release(&s, a1).unwrap();
        assert_eq!(user_count(&s, "alice").unwrap(), 1);
        assert!(try_acquire(&s, &alice).is_ok());
    }

    #[test]
    fn user_limit_zero_rejects_everyone() {
        let s = store();
        let r = AdmissionRequest {
            user_limit: Some(0),
            ..req("chat", Some("alice"))
        };
        assert_eq!(try_acquire(&s, &r), Err(Rejection::UserLimit));
        assert_eq!(counts(&s), (0, 0, 0));
    }

    #[test]
    fn user_rejection_touches_no_other_counter() {
        let s = store();
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some("alice"))
        };
        let _a = try_acquire(&s, &r).unwrap();
        let writes = s.write_count();
        assert_eq!(try_acquire(&s, &r), Err(Rejection::UserLimit));
        assert_eq!(s.write_count(), writes);
    }

    #[test]
    fn route_rejection_rolls_back_user() {
        let s = store();
        let r = AdmissionRequest {
            route_limit: Some(1),
            user_limit: Some(5),
            ..req("chat", Some("alice"))
        };
        let _a = try_acquire(&s, &r).unwrap();
        let before = (counts(&s), user_count(&s, "alice").unwrap());
        assert_eq!(try_acquire(&s, &r), Err(Rejection::RouteFull));
        assert_eq!((counts(&s), user_count(&s, "alice").unwrap()), before);
    }

    #[test]
    fn instance_rejection_rolls_back_route_and_user() {
        let s = store();
        let r = AdmissionRequest {
            instance_limit: Some(1),
            route_limit: Some(5),
            user_limit: Some(5),
            ..req("chat", Some("alice"))
        };
        let _a = try_acquire(&s, &r).unwrap();
        let shard_bytes = shard_bytes_total(&s).unwrap();
        let r2 = AdmissionRequest {
            user: Some("bob"),
            ..r
        };
        assert_eq!(try_acquire(&s, &r2), Err(Rejection::InstanceFull));
        assert_eq!(counts(&s), (1, 1, 0));
        assert_eq!(user_count(&s, "bob").unwrap(), 0);
        assert_eq!(shard_bytes_total(&s).unwrap(), shard_bytes);
    }

    #[test]
    fn missing_route_key_is_a_store_rejection_not_a_create() {
        let s = store();
        let keys = s.keys().len();
        assert_eq!(
            try_acquire(&s, &req("unknown", None)),
            Err(Rejection::Store(StoreError::MissingKey))
        );
        assert_eq!(s.keys().len(), keys);
        assert_eq!(counts(&s), (0, 0, 0));
    }

    #[test]
    fn missing_instance_key_is_a_store_rejection() {
        let s = MemoryStore::new();
        s.set(&route_key("chat"), b"0", 0).unwrap();
        assert_eq!(
            try_acquire(&s, &req("chat", None)),
            Err(Rejection::Store(StoreError::MissingKey))
        );
        assert_eq!(s.value(&route_key("chat")).unwrap(), b"0"); // rolled back
    }

    #[test]
    fn corrupt_counter_is_a_store_rejection() {
        let s = store();
        s.set(INSTANCE_KEY, b"12x", 0).unwrap();
        assert_eq!(
            try_acquire(&s, &req("chat", None)),
            Err(Rejection::Store(StoreError::Corrupt))
        );
        assert_eq!(counts_route(&s, "chat"), 0);
    }

    fn counts_route(s: &MemoryStore, route: &str) -> u32 {
        parse_count(&s.value(&route_key(route)).unwrap()).unwrap()
    }

    #[test]
    fn empty_values_left_by_removal_read_as_zero() {
        let s = store();
        s.set(INSTANCE_KEY, b"", 0).unwrap();
        s.set(&user_shard_key(user_shard("alice")), b"", 0).unwrap();
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some("alice"))
        };
        let a = try_acquire(&s, &r).unwrap();
        assert_eq!(counts(&s), (1, 1, 0));
        release(&s, a).unwrap();
        assert_eq!(counts(&s), (0, 0, 0));
    }

    #[test]
    fn invalid_user_ids_are_rejected() {
        let s = store();
        let empty = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some(""))
        };
        assert_eq!(try_acquire(&s, &empty), Err(Rejection::InvalidUser));
        let long = "x".repeat(MAX_USER_ID_BYTES + 1);
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some(&long))
        };
        assert_eq!(try_acquire(&s, &r), Err(Rejection::InvalidUser));
        let max = "x".repeat(MAX_USER_ID_BYTES);
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some(&max))
        };
        assert!(try_acquire(&s, &r).is_ok());
        assert_eq!(counts(&s), (1, 1, 0));
    }

    #[test]
    fn odd_user_ids_round_trip_and_stay_distinct() {
        let s = store();
        let ids = [
            "a",
            "ünïcødé 用户 🦀",
            "with\0nul",
            "\u{1}\u{0}\u{0}\u{0}",
            "eg.ws.users.1",
            "comma,equals=;semicolon|pipe\n",
            " ",
            "aa",
            "a\u{0}",
        ];
        let mut held = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let r = AdmissionRequest {
                user_limit: Some(10),
                ..req("chat", Some(id))
            };
            for _ in 0..=i {
                held.push(try_acquire(&s, &r).unwrap());
            }
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(user_count(&s, id).unwrap(), i as u32 + 1, "{id:?}");
        }
        for a in held {
            release(&s, a).unwrap();
        }
        for id in ids {
            assert_eq!(user_count(&s, id).unwrap(), 0);
        }
        assert_eq!(shard_bytes_total(&s).unwrap(), N_SHARDS as usize);
    }

    #[test]
    fn shard_encoding_is_length_prefixed() {
        let (prev, v) = shard_apply(&[SHARD_FORMAT_VERSION], "ab".as_bytes(), true).unwrap();
        assert_eq!(prev, 0);
        assert_eq!(v, vec![1, 2, 0, b'a', b'b', 1, 0, 0, 0]);
        let (prev, v) = shard_apply(&v, "ab".as_bytes(), true).unwrap();
        assert_eq!(prev, 1);
        assert_eq!(v, vec![1, 2, 0, b'a', b'b', 2, 0, 0, 0]);
        let (_, v) = shard_apply(&v, "ab".as_bytes(), false).unwrap();
        let (prev, v) = shard_apply(&v, "ab".as_bytes(), false).unwrap();
        assert_eq!(prev, 1);
        assert_eq!(v, vec![SHARD_FORMAT_VERSION]);
    }

    #[test]
    fn corrupt_shards_are_detected() {
        // unknown version, truncated length, truncated id, truncated count, duplicate user
        let bad: [&[u8]; 5] = [
            &[2],
            &[1, 2],
            &[1, 5, 0, b'a'],
            &[1, 1, 0, b'a', 1, 0],
            &[1, 1, 0, b'a', 1, 0, 0, 0, 1, 0, b'a', 1, 0, 0, 0],
        ];
        for value in bad {
            assert_eq!(
                shard_apply(value, b"a", true),
                Err(StoreError::Corrupt),
                "{value:?}"
            );
        }
    }

    #[test]
    fn shard_of_user_is_stable() {
        // FNV-1a 32 reference values: "" = 0x811c9dc5, "a" = 0xe40c292c.
        assert_eq!(user_shard(""), 0x811c_9dc5 % N_SHARDS);
        assert_eq!(user_shard("a"), 0xe40c_292c % N_SHARDS);
    }

    #[test]
    fn many_distinct_users_leave_shards_empty_again() {
        let s = store();
        let empty_total = shard_bytes_total(&s).unwrap();
        let mut held = Vec::new();
        for i in 0..2000 {
            let user = format!("user-{i}");
            let r = AdmissionRequest {
                user_limit: Some(3),
                ..req("feed", Some(&user))
            };
            held.push(try_acquire(&s, &r).unwrap());
        }
        assert!(shard_bytes_total(&s).unwrap() > empty_total + 2000 * 6);
        for a in held {
            release(&s, a).unwrap();
        }
        assert_eq!(shard_bytes_total(&s).unwrap(), empty_total);
        assert_eq!(counts(&s), (0, 0, 0));
        // The map itself did not grow with the number of users ever seen.
        assert_eq!(s.keys().len(), 1 + ROUTES.len() + N_SHARDS as usize);
    }

    #[test]
    fn release_of_unknown_admission_never_underflows() {
        let s = store();
        let ghost = Admission {
            route: "chat".into(),
            user: Some("nobody".into()),
        };
        release(&s, ghost).unwrap();
        assert_eq!(counts(&s), (0, 0, 0));
        assert_eq!(user_count(&s, "nobody").unwrap(), 0);
        let real = try_acquire(&s, &req("feed", None)).unwrap();
        let ghost = Admission {
            route: "feed".into(),
            user: None,
        };
        release(&s, ghost).unwrap();
        release(&s, real).unwrap();
        assert_eq!(counts(&s), (0, 0, 0));
    }

    #[test]
    fn release_reports_missing_route_key_but_still_releases_the_rest() {
        let s = store();
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some("alice"))
        };
        let _a = try_acquire(&s, &r).unwrap();
        let ghost = Admission {
            route: "gone".into(),
            user: Some("alice".into()),
        };
        assert_eq!(release(&s, ghost), Err(StoreError::MissingKey));
        assert_eq!(counts(&s).0, 0);
        assert_eq!(user_count(&s, "alice").unwrap(), 0);
    }

    #[test]
    fn cas_mismatch_between_get_and_set_is_retried() {
        let s = store();
        let bumps = Rc::new(Cell::new(0));
        let b = bumps.clone();
        s.set_before_set_hook(move |s, key| {
            if b.get() < 5 {
                b.set(b.get() + 1);
                s.bump(key);
            }
            None
        });
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some("alice"))
        };
        let a = try_acquire(&s, &r).unwrap();
        assert_eq!(bumps.get(), 5);
        s.clear_before_set_hook();
        assert_eq!(counts(&s), (1, 1, 0));
        assert_eq!(user_count(&s, "alice").unwrap(), 1);
        release(&s, a).unwrap();
    }

    #[test]
    fn concurrent_acquire_between_get_and_set_never_exceeds_limit() {
        // Worker B takes the last slot of one counter between worker A's get and set on
        // that counter: A's set must fail, A must re-read, see "full" and roll back.
        let base = req("chat", Some("alice"));
        let cases = [
            (
                INSTANCE_KEY.to_owned(),
                AdmissionRequest {
                    instance_limit: Some(1),
                    ..base
                },
                Rejection::InstanceFull,
            ),
            (
                route_key("chat"),
                AdmissionRequest {
                    route_limit: Some(1),
                    ..base
                },
                Rejection::RouteFull,
            ),
            (
                user_shard_key(user_shard("alice")),
                AdmissionRequest {
                    user_limit: Some(1),
                    ..base
                },
                Rejection::UserLimit,
            ),
        ];
        for (key_under_race, r, expected) in cases {
            let s = store();
            let other: Rc<RefCell<Option<Result<Admission, Rejection>>>> =
                Rc::new(RefCell::new(None));
            let o = other.clone();
            let target = key_under_race.clone();
            s.set_before_set_hook(move |s, key| {
                if key == target && o.borrow().is_none() {
                    let result = try_acquire(s, &r);
                    *o.borrow_mut() = Some(result);
                }
                None
            });
            let mine = try_acquire(&s, &r);
            s.clear_before_set_hook();
            let theirs = other.borrow_mut().take().unwrap();
            assert!(theirs.is_ok(), "{key_under_race}");
            assert_eq!(mine, Err(expected), "{key_under_race}");
            assert_eq!(counts(&s), (1, 1, 0), "{key_under_race}");
            let user_counted = u32::from(r.user_limit.is_some());
            assert_eq!(user_count(&s, "alice").unwrap(), user_counted);
        }
    }

    #[test]
    fn endless_contention_gives_up_and_rolls_back() {
        let s = store();
        s.set_before_set_hook(|s, key| {
            if key == INSTANCE_KEY {
                s.bump(key);
            }
            None
        });
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some("alice"))
        };
        assert_eq!(try_acquire(&s, &r), Err(Rejection::Contention));
        s.clear_before_set_hook();
        assert_eq!(counts(&s), (0, 0, 0));
        assert_eq!(user_count(&s, "alice").unwrap(), 0);
    }

    #[test]
    fn host_error_on_set_rolls_back_earlier_increments() {
        let s = store();
        s.set_before_set_hook(|_, key| (key == INSTANCE_KEY).then_some(StoreError::Host(9)));
        let r = AdmissionRequest {
            user_limit: Some(1),
            ..req("chat", Some("alice"))
        };
        assert_eq!(
            try_acquire(&s, &r),
            Err(Rejection::Store(StoreError::Host(9)))
        );
        s.clear_before_set_hook();
        assert_eq!(counts(&s), (0, 0, 0));
        assert_eq!(user_count(&s, "alice").unwrap(), 0);
    }

    #[test]
    fn release_retries_cas_mismatch() {
        let s = store();
        let r = AdmissionRequest {
            user_limit: Some(2),
            ..req("chat", Some("alice"))
        };
        let a = try_acquire(&s, &r).unwrap();
        let n = Rc::new(Cell::new(0));
        let n2 = n.clone();
        s.set_before_set_hook(move |s, key| {
            n2.set(n2.get() + 1);
            if n2.get() % 2 == 1 {
                s.bump(key);
            }
            None
        });
        release(&s, a).unwrap();
        s.clear_before_set_hook();
        assert_eq!(n.get(), 6); // three keys, each failed once
        assert_eq!(counts(&s), (0, 0, 0));
        assert_eq!(user_count(&s, "alice").unwrap(), 0);
    }

    /// Deterministic xorshift for the interleaving fuzz below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_interleavings_of_two_workers_stay_exact() {
        const INSTANCE_LIMIT: u32 = 5;
        const ROUTE_LIMIT: u32 = 4;
        const USER_LIMIT: u32 = 2;
        let users = ["alice", "bob", "carol"];
        for seed in 1..40u64 {
            let s = store();
            let rng = Rc::new(RefCell::new(Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
            // Admissions held by "worker B", which runs inside A's get/set windows.
            let b_held: Rc<RefCell<Vec<Admission>>> = Rc::new(RefCell::new(Vec::new()));
            let request = |route: &'static str, user: &'static str| AdmissionRequest {
                route: name(route),
                route_limit: Some(ROUTE_LIMIT),
                instance_limit: Some(INSTANCE_LIMIT),
                user: Some(user),
                user_limit: Some(USER_LIMIT),
            };
            let check = |s: &MemoryStore| {
                let (i, chat, feed) = counts(s);
                assert!(i <= INSTANCE_LIMIT && chat <= ROUTE_LIMIT && feed <= ROUTE_LIMIT);
                for u in users {
                    assert!(user_count(s, u).unwrap() <= USER_LIMIT);
                }
            };
            {
                let rng = rng.clone();
                let b_held = b_held.clone();
                s.set_before_set_hook(move |s, _key| {
                    let roll = rng.borrow_mut().next();
                    if roll % 3 == 0 {
                        let route = ROUTES[(roll >> 8) as usize % 2];
                        let user = users[(roll >> 16) as usize % 3];
                        let mut held = b_held.borrow_mut();
                        if roll % 2 == 0 || held.is_empty() {
                            if let Ok(a) = try_acquire(s, &request(route, user)) {
                                held.push(a);
                            }
                        } else {
                            let i = (roll >> 24) as usize % held.len();
                            release(s, held.swap_remove(i)).unwrap();
                        }
                    }
                    None
                });
            }
            let mut a_held: Vec<Admission> = Vec::new();
            for _ in 0..300 {
                let roll = rng.borrow_mut().next();
                if roll % 2 == 0 || a_held.is_empty() {
                    let route = ROUTES[(roll >> 8) as usize % 2];
                    let user = users[(roll >> 16) as usize % 3];
                    match try_acquire(&s, &request(route, user)) {
                        Ok(a) => a_held.push(a),
                        Err(
                            Rejection::Contention | Rejection::Store(_) | Rejection::InvalidUser,
                        ) => {
                            panic!("unexpected rejection")
                        }
                        Err(_) => {}
                    }
                } else {
                    let i = (roll >> 24) as usize % a_held.len();
                    release(&s, a_held.swap_remove(i)).unwrap();
                }
                check(&s);
                // Counts equal what the two workers hold.
                let held = a_held.len() + b_held.borrow().len();
                assert_eq!(counts(&s).0 as usize, held);
            }
            s.clear_before_set_hook();
            for a in a_held.drain(..).chain(b_held.borrow_mut().drain(..)) {
                release(&s, a).unwrap();
            }
            assert_eq!(counts(&s), (0, 0, 0));
            assert_eq!(shard_bytes_total(&s).unwrap(), N_SHARDS as usize);
        }
    }

    #[test]
    fn read_counts_treats_missing_keys_as_zero() {
        let s = MemoryStore::new();
        let c = read_counts(&s, &["x"]).unwrap();
        assert_eq!(
            c,
            WsCounts {
                instance: 0,
                routes: vec![("x".into(), 0)]
            }
        );
    }

    #[test]
    fn a_zero_entry_in_a_shard_is_dropped_at_its_next_write() {
        let s = store();
        let key = user_shard_key(user_shard("bob"));
        let mut left_over = vec![SHARD_FORMAT_VERSION];
        push_entry(&mut left_over, b"ghost", 0).unwrap();
        s.set(&key, &left_over, 0).unwrap();
        let mut r = req("chat", Some("bob"));
        r.user_limit = Some(5);
        let a = try_acquire(&s, &r).unwrap();
        let mut only_bob = vec![SHARD_FORMAT_VERSION];
        push_entry(&mut only_bob, b"bob", 1).unwrap();
        assert_eq!(s.value(&key).unwrap(), only_bob);
        release(&s, a).unwrap();
        assert_eq!(s.value(&key).unwrap(), vec![SHARD_FORMAT_VERSION]);

        s.set(&key, &left_over, 0).unwrap();
        adjust_user(&s, "bob", 1).unwrap();
        assert_eq!(s.value(&key).unwrap(), only_bob);
    }

    #[test]
    fn bulk_user_changes_leave_no_zero_entry() {
        let s = store();
        adjust_user(&s, "bob", 2).unwrap();
        assert_eq!(user_count(&s, "bob").unwrap(), 2);
        adjust_user(&s, "bob", -5).unwrap();
        assert_eq!(user_count(&s, "bob").unwrap(), 0);
        assert_eq!(shard_bytes_total(&s).unwrap(), N_SHARDS as usize);
        adjust_user(&s, "ann", -1).unwrap();
        assert_eq!(shard_bytes_total(&s).unwrap(), N_SHARDS as usize);
    }

    /// Another user id in `user`'s shard.
    fn shard_mate(user: &str) -> String {
        (0..)
            .map(|i| format!("mate{i}"))
            .find(|m| user_shard(m) == user_shard(user))
            .unwrap()
    }

    #[test]
    fn a_list_of_users_changes_their_shard_in_one_write() {
        let s = store();
        let shard = user_shard("bob");
        let mate = shard_mate("bob");
        adjust_user(&s, "bob", 1).unwrap();
        let mut list = Vec::new();
        push_entry(&mut list, b"bob", 2).unwrap();
        push_entry(&mut list, mate.as_bytes(), 3).unwrap();
        let writes = s.write_count();
        adjust_users(&s, shard, &list, 1).unwrap();
        assert_eq!(s.write_count(), writes + 1);
        assert_eq!(user_count(&s, "bob").unwrap(), 3);
        assert_eq!(user_count(&s, &mate).unwrap(), 3);
        adjust_users(&s, shard, &list, -1).unwrap();
        assert_eq!(user_count(&s, "bob").unwrap(), 1);
        assert_eq!(user_count(&s, &mate).unwrap(), 0, "its entry is gone");
        adjust_users(&s, shard, &list, -1).unwrap();
        assert_eq!(user_count(&s, "bob").unwrap(), 0, "never below zero");
        let writes = s.write_count();
        adjust_users(&s, shard, &list, -1).unwrap();
        assert_eq!(
            s.write_count(),
            writes,
            "nothing to change, nothing written"
        );
        assert_eq!(shard_bytes_total(&s).unwrap(), N_SHARDS as usize);
    }

    #[test]
    fn a_list_adds_a_user_once_never_a_zero_entry_and_nothing_with_sign_zero() {
        let s = store();
        let shard = user_shard("bob");
        let mate = shard_mate("bob");
        adjust_user(&s, "bob", 1).unwrap();
        let key = user_shard_key(shard);
        let one_entry = s.value(&key).unwrap();
        // A listed user already in the shard is changed in place, not added again.
        let mut list = Vec::new();
        push_entry(&mut list, b"bob", 2).unwrap();
        adjust_users(&s, shard, &list, 1).unwrap();
        assert_eq!(user_count(&s, "bob").unwrap(), 3);
        assert_eq!(
            s.value(&key).unwrap().len(),
            one_entry.len(),
            "one entry for bob"
        );
        // A listed count of zero adds no entry (and writes nothing).
        let mut zero = Vec::new();
        push_entry(&mut zero, mate.as_bytes(), 0).unwrap();
        let (before, writes) = (s.value(&key).unwrap(), s.write_count());
        adjust_users(&s, shard, &zero, 1).unwrap();
        assert_eq!(
            (s.value(&key).unwrap(), s.write_count()),
            (before.clone(), writes)
        );
        // Sign zero changes nobody, present or not.
        let mut both = Vec::new();
        push_entry(&mut both, b"bob", 5).unwrap();
        push_entry(&mut both, mate.as_bytes(), 5).unwrap();
        adjust_users(&s, shard, &both, 0).unwrap();
        assert_eq!(s.value(&key).unwrap(), before);
        assert_eq!(user_count(&s, &mate).unwrap(), 0);
    }

    #[test]
    fn rejection_display_is_readable() {
        assert_eq!(
            Rejection::UserLimit.to_string(),
            "user websocket limit reached"
        );
        assert_eq!(
            Rejection::Store(StoreError::MissingKey).to_string(),
            "shared data key missing (not created up front)"
        );
    }
}
