//! The polling sessions of the whole instance, in shared data: which session (by its
//! `sid`) holds which slot, and until when it lives without a request.
//!
//! Owns: the keys `eg.eio.sessions.<0..N_SHARDS>` (shard = FNV-1a 32 of the sid mod
//! [`N_SHARDS`]), their format, and the CAS loops over them. Any worker may see any
//! request of a session, so the record is shared; every change is a CAS
//! read-modify-write, so of two workers removing the same session exactly one gets it
//! (and releases its slot).
//!
//! Must never: create a key outside [`ensure_keys`], keep a record after its session
//! ended (shared-data keys cannot be removed: records live inside fixed shard keys and
//! only while their session does), or loop without a bound.
//!
//! Format: version byte `1`, then per session `u8 sid length, sid, u8 route length,
//! route, u16 LE user length (0xFFFF = no counted user), user, u64 LE expiry (ms)`.

use crate::shared_store::{SharedStore, StoreError};

pub const KEY_PREFIX: &str = "eg.eio.sessions.";
/// Part of the shared-data format: never change it without changing [`KEY_PREFIX`].
pub const N_SHARDS: u32 = 16;
const FORMAT_VERSION: u8 = 1;
const NO_USER: u16 = u16::MAX;
/// CAS attempts per change; a release that gives up leaks a slot, so generous.
const ATTEMPTS: u32 = 1000;
/// A refresh writes only when it moves the expiry by more than this.
pub const REFRESH_GRANULARITY_MS: u64 = 1000;

/// One polling session and the slot it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    /// The route whose slot it holds.
    pub route: String,
    /// The user counted for it, if any.
    pub user: Option<String>,
    /// When it ends unless a request with its sid arrives first.
    pub expires_ms: u64,
}

pub fn shard_key(shard: u32) -> String {
    format!("{KEY_PREFIX}{shard}")
}

fn shard_of(sid: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in sid.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % N_SHARDS
}

/// Creates the shard keys (atomically; existing sessions are kept).
pub fn ensure_keys<S: SharedStore + ?Sized>(store: &S) -> Result<(), StoreError> {
    for shard in 0..N_SHARDS {
        store.create_if_absent(&shard_key(shard), &[FORMAT_VERSION])?;
    }
    Ok(())
}

fn decode(value: &[u8]) -> Result<Vec<Session>, StoreError> {
    let Some((&version, mut rest)) = value.split_first() else {
        return Ok(Vec::new());
    };
    if version != FORMAT_VERSION {
        return Err(StoreError::Corrupt);
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (sid, r) = take_u8_str(rest)?;
        let (route, r) = take_u8_str(r)?;
        let (len, r) = take(r, 2)?;
        let len = u16::from_le_bytes([len[0], len[1]]);
        let (user, r) = if len == NO_USER {
            (None, r)
        } else {
            let (user, r) = take(r, usize::from(len))?;
            (Some(String::from_utf8_lossy(user).into_owned()), r)
        };
        let (expiry, r) = take(r, 8)?;
        let mut e = [0u8; 8];
        e.copy_from_slice(expiry);
        out.push(Session {
            sid,
            route,
            user,
            expires_ms: u64::from_le_bytes(e),
        });
        rest = r;
    }
    Ok(out)
}

fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), StoreError> {
    if bytes.len() < n {
        return Err(StoreError::Corrupt);
    }
    Ok(bytes.split_at(n))
}

fn take_u8_str(bytes: &[u8]) -> Result<(String, &[u8]), StoreError> {
    let (len, rest) = take(bytes, 1)?;
    let (text, rest) = take(rest, usize::from(len[0]))?;
    Ok((String::from_utf8_lossy(text).into_owned(), rest))
}

fn encode(sessions: &[Session]) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    for s in sessions {
        for text in [&s.sid, &s.route] {
            out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(text.as_bytes().get(..255).unwrap_or(text.as_bytes()));
        }
        match &s.user {
            Some(user) => {
                let len = u16::try_from(user.len())
                    .unwrap_or(NO_USER - 1)
                    .min(NO_USER - 1);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(user.as_bytes().get(..usize::from(len)).unwrap_or_default());
            }
            None => out.extend_from_slice(&NO_USER.to_le_bytes()),
        }
        out.extend_from_slice(&s.expires_ms.to_le_bytes());
    }
    out
}

/// Read-modify-write of one shard under CAS; `change` returns its result and whether
/// the shard must be written.
fn update<S: SharedStore + ?Sized, T>(
    store: &S,
    shard: u32,
    mut change: impl FnMut(&mut Vec<Session>) -> (T, bool),
) -> Result<T, StoreError> {
    let key = shard_key(shard);
    for _ in 0..ATTEMPTS {
        let (value, cas) = store.get(&key)?.ok_or(StoreError::MissingKey)?;
        let mut sessions = decode(&value)?;
        let (result, write) = change(&mut sessions);
        if !write {
            return Ok(result);
        }
        match store.set(&key, &encode(&sessions), cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

/// Records a new session; false (nothing written) if its sid is already recorded or
/// a field is too long to store.
pub fn insert<S: SharedStore + ?Sized>(store: &S, session: &Session) -> Result<bool, StoreError> {
    if session.sid.is_empty()
        || session.sid.len() > usize::from(u8::MAX)
        || session.route.len() > usize::from(u8::MAX)
        || session
            .user
            .as_ref()
            .is_some_and(|u| u.len() >= usize::from(NO_USER))
    {
        return Ok(false);
    }
    update(store, shard_of(&session.sid), |sessions| {
        if sessions.iter().any(|s| s.sid == session.sid) {
            (false, false)
        } else {
            sessions.push(session.clone());
            (true, true)
        }
    })
}

/// A request of `sid` arrived: its session lives until `expires_ms` at least. False if
/// no such session is recorded (unknown or already ended).
pub fn refresh<S: SharedStore + ?Sized>(
    store: &S,
    sid: &str,
    expires_ms: u64,
) -> Result<bool, StoreError> {
    update(store, shard_of(sid), |sessions| {
        match sessions.iter_mut().find(|s| s.sid == sid) {
            None => (false, false),
            Some(s) => {
                let write = expires_ms > s.expires_ms.saturating_add(REFRESH_GRANULARITY_MS);
                if write {
                    s.expires_ms = expires_ms;
                }
                (true, write)
            }
        }
    })
}

/// Ends session `sid` and hands back its record (its slot is the caller's to release
/// or keep); `None` if it is not recorded.
pub fn remove<S: SharedStore + ?Sized>(
    store: &S,
    sid: &str,
) -> Result<Option<Session>, StoreError> {
    update(store, shard_of(sid), |sessions| {
        match sessions.iter().position(|s| s.sid == sid) {
            None => (None, false),
            Some(i) => (Some(sessions.swap_remove(i)), true),
        }
    })
}

/// Ends every session expired at `now_ms` and hands their records back; each is
/// handed to exactly one caller, whichever worker asks.
pub fn take_expired<S: SharedStore + ?Sized>(
    store: &S,
    now_ms: u64,
) -> Result<Vec<Session>, StoreError> {
    let mut out = Vec::new();
    for shard in 0..N_SHARDS {
        let expired = update(store, shard, |sessions| {
            let (gone, kept): (Vec<Session>, Vec<Session>) = std::mem::take(sessions)
                .into_iter()
                .partition(|s| s.expires_ms <= now_ms);
            *sessions = kept;
            let write = !gone.is_empty();
            (gone, write)
        })?;
        out.extend(expired);
    }
    Ok(out)
}

/// Sessions recorded now (for the status endpoint and tests).
pub fn count<S: SharedStore + ?Sized>(store: &S) -> Result<usize, StoreError> {
    let mut n = 0;
    for shard in 0..N_SHARDS {
        if let Some((value, _)) = store.get(&shard_key(shard))? {
            n += decode(&value)?.len();
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_store::MemoryStore;

    fn session(sid: &str, user: Option<&str>, expires_ms: u64) -> Session {
        Session {
            sid: sid.into(),
            route: "events".into(),
            user: user.map(str::to_string),
            expires_ms,
        }
    }

    fn store() -> MemoryStore {
        let store = MemoryStore::new();
        ensure_keys(&store).unwrap();
        store
    }

    #[test]
    fn insert_refresh_remove_round_trip() {
        let store = store();
        let s = session("abc", Some("alice"), 45_000);
        assert!(insert(&store, &s).unwrap());
        assert!(!insert(&store, &s).unwrap(), "a sid is recorded once");
        assert!(insert(&store, &session("def", None, 45_000)).unwrap());
        assert_eq!(count(&store).unwrap(), 2);
        assert!(refresh(&store, "abc", 60_000).unwrap());
        assert!(!refresh(&store, "nope", 60_000).unwrap());
        assert_eq!(
            remove(&store, "abc").unwrap(),
            Some(session("abc", Some("alice"), 60_000))
        );
        assert_eq!(remove(&store, "abc").unwrap(), None);
        assert_eq!(
            remove(&store, "def").unwrap(),
            Some(session("def", None, 45_000))
        );
        assert_eq!(count(&store).unwrap(), 0);
        // Nothing stays behind in the shard keys.
        assert!(store.total_bytes() <= (N_SHARDS as usize) * (KEY_PREFIX.len() + 3 + 1));
    }

    #[test]
    fn refresh_writes_only_when_the_expiry_moves_a_second() {
        let store = store();
        insert(&store, &session("abc", None, 45_000)).unwrap();
        let writes = store.write_count();
        assert!(refresh(&store, "abc", 45_500).unwrap());
        assert!(refresh(&store, "abc", 44_000).unwrap());
        assert_eq!(store.write_count(), writes);
        assert!(refresh(&store, "abc", 46_001).unwrap());
        assert_eq!(store.write_count(), writes + 1);
    }

    #[test]
    fn expired_sessions_are_taken_once() {
        let store = store();
        for (sid, exp) in [("a", 10), ("b", 20), ("c", 30)] {
            insert(&store, &session(sid, Some("u"), exp)).unwrap();
        }
        let mut gone: Vec<String> = take_expired(&store, 20)
            .unwrap()
            .into_iter()
            .map(|s| s.sid)
            .collect();
        gone.sort();
        assert_eq!(gone, ["a", "b"]);
        assert!(take_expired(&store, 20).unwrap().is_empty());
        assert_eq!(count(&store).unwrap(), 1);
    }

    #[test]
    fn a_concurrent_change_is_retried_not_lost() {
        let store = store();
        insert(&store, &session("a", None, 10)).unwrap();
        // Another worker records a session in the same shard between our get and set.
        let other = (0..1000)
            .map(|i| format!("s{i}"))
            .find(|sid| shard_of(sid) == shard_of("a"))
            .unwrap();
        let injected = std::cell::Cell::new(false);
        let other_session = session(&other, None, 99);
        let key = shard_key(shard_of("a"));
        store.set_before_set_hook(move |s: &MemoryStore, k: &str| {
            if k == key && !injected.replace(true) {
                let (value, _) = s.get(k).unwrap().unwrap();
                let mut sessions = decode(&value).unwrap();
                sessions.push(other_session.clone());
                s.set(k, &encode(&sessions), 0).unwrap();
            }
            None
        });
        assert_eq!(take_expired(&store, 10).unwrap().len(), 1);
        store.clear_before_set_hook();
        assert_eq!(count(&store).unwrap(), 1);
        assert!(remove(&store, &other).unwrap().is_some());
    }

    #[test]
    fn oversized_fields_are_not_recorded() {
        let store = store();
        let long = "x".repeat(300);
        assert!(!insert(&store, &session(&long, None, 1)).unwrap());
        assert!(!insert(&store, &session("", None, 1)).unwrap());
    }
}
