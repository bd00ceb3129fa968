//! The polling sessions of the whole instance, in shared data: which session (by its
//! `sid`) holds which slot, and until when it lives without a request.
//!
//! Owns: the keys `eg.eio.sess.<0..N_SHARDS>` (shard = FNV-1a 32 of the sid mod
//! [`N_SHARDS`]), their format, and the CAS loops over them. Any worker may see any
//! request of a session, so the record is shared; every change is a CAS
//! read-modify-write, so of two workers removing the same session exactly one gets it
//! (and releases its slot).
//!
//! Must never: create a key outside [`ensure_keys`], keep a record after its session
//! ended (shared-data keys cannot be removed: records live inside fixed shard keys and
//! only while their session does), or loop without a bound.
//!
//! A poll's refresh and the sweep scan a shard's bytes in place, decoding nothing
//! but the records they remove; 64 shards keep each value small (10,000 sessions:
//! ~7 KB a shard).
//!
//! Format: version byte `1`, then per session `u8 sid length, sid, u8 route length,
//! route, u16 LE user length (0xFFFF = no counted user), user, u64 LE expiry (ms)`.

use crate::shared_store::{SharedStore, StoreError};

pub const KEY_PREFIX: &str = "eg.eio.sess.";
/// Part of the shared-data format: never change it without changing [`KEY_PREFIX`].
pub const N_SHARDS: u32 = 64;
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

/// Where one record lies in a shard value, found without allocating: the hot
/// operations (a poll's refresh, the sweep) only scan.
#[derive(Debug, Clone, Copy)]
struct Record<'a> {
    start: usize,
    end: usize,
    sid: &'a [u8],
    expires_ms: u64,
}

/// The records of a shard value (`""` is an empty shard), in order.
fn records(value: &[u8]) -> Records<'_> {
    Records { value, pos: 0 }
}

struct Records<'a> {
    value: &'a [u8],
    /// 0 before the version byte is checked.
    pos: usize,
}

impl<'a> Records<'a> {
    fn parse(&self) -> Result<Record<'a>, StoreError> {
        let value = self.value;
        let start = self.pos;
        let mut pos = start;
        let sid_len = usize::from(*value.get(pos).ok_or(StoreError::Corrupt)?);
        let sid = value
            .get(pos + 1..pos + 1 + sid_len)
            .ok_or(StoreError::Corrupt)?;
        pos += 1 + sid_len;
        let route_len = usize::from(*value.get(pos).ok_or(StoreError::Corrupt)?);
        pos += 1 + route_len;
        let user_len = value.get(pos..pos + 2).ok_or(StoreError::Corrupt)?;
        let user_len = u16::from_le_bytes([user_len[0], user_len[1]]);
        pos += 2;
        if user_len != NO_USER {
            pos += usize::from(user_len);
        }
        let expiry = value.get(pos..pos + 8).ok_or(StoreError::Corrupt)?;
        let mut e = [0u8; 8];
        e.copy_from_slice(expiry);
        Ok(Record {
            start,
            end: pos + 8,
            sid,
            expires_ms: u64::from_le_bytes(e),
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos == 0 {
            match self.value.first() {
                None => return None,
                Some(&FORMAT_VERSION) => self.pos = 1,
                Some(_) => {
                    self.pos = self.value.len();
                    return Some(Err(StoreError::Corrupt));
                }
            }
        }
        if self.pos >= self.value.len() {
            return None;
        }
        let record = self.parse();
        match &record {
            Ok(r) => self.pos = r.end,
            Err(_) => self.pos = self.value.len(),
        }
        Some(record)
    }
}

fn find<'a>(value: &'a [u8], sid: &str) -> Result<Option<Record<'a>>, StoreError> {
    for record in records(value) {
        let record = record?;
        if record.sid == sid.as_bytes() {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// The session stored in `bytes` (exactly one record).
fn decode_record(bytes: &[u8]) -> Result<Session, StoreError> {
    let (sid, rest) = take_u8_str(bytes)?;
    let (route, rest) = take_u8_str(rest)?;
    let (len, rest) = take(rest, 2)?;
    let len = u16::from_le_bytes([len[0], len[1]]);
    let (user, rest) = if len == NO_USER {
        (None, rest)
    } else {
        let (user, rest) = take(rest, usize::from(len))?;
        (Some(String::from_utf8_lossy(user).into_owned()), rest)
    };
    let (expiry, _) = take(rest, 8)?;
    let mut e = [0u8; 8];
    e.copy_from_slice(expiry);
    Ok(Session {
        sid,
        route,
        user,
        expires_ms: u64::from_le_bytes(e),
    })
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

/// Appends `s` as one record (fields already checked to fit).
fn encode_record(out: &mut Vec<u8>, s: &Session) {
    for text in [&s.sid, &s.route] {
        out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(text.as_bytes());
    }
    match &s.user {
        Some(user) => {
            let len = u16::try_from(user.len()).unwrap_or(NO_USER);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(user.as_bytes());
        }
        None => out.extend_from_slice(&NO_USER.to_le_bytes()),
    }
    out.extend_from_slice(&s.expires_ms.to_le_bytes());
}

/// What a change does to a shard value.
enum Change<T> {
    /// Nothing to write.
    Keep(T),
    /// Write this value.
    Write(Vec<u8>, T),
}

/// Read-modify-write of one shard under CAS.
fn update<S: SharedStore + ?Sized, T>(
    store: &S,
    shard: u32,
    mut change: impl FnMut(&[u8]) -> Result<Change<T>, StoreError>,
) -> Result<T, StoreError> {
    let key = shard_key(shard);
    for _ in 0..ATTEMPTS {
        let (value, cas) = store.get(&key)?.ok_or(StoreError::MissingKey)?;
        match change(&value)? {
            Change::Keep(result) => return Ok(result),
            Change::Write(new, result) => match store.set(&key, &new, cas) {
                Ok(()) => return Ok(result),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            },
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
    update(store, shard_of(&session.sid), |value| {
        if find(value, &session.sid)?.is_some() {
            return Ok(Change::Keep(false));
        }
        let mut new = if value.is_empty() {
            vec![FORMAT_VERSION]
        } else {
            value.to_vec()
        };
        encode_record(&mut new, session);
        Ok(Change::Write(new, true))
    })
}

/// A request of `sid` arrived: its session lives until `expires_ms` at least. False if
/// no such session is recorded (unknown or already ended).
pub fn refresh<S: SharedStore + ?Sized>(
    store: &S,
    sid: &str,
    expires_ms: u64,
) -> Result<bool, StoreError> {
    update(store, shard_of(sid), |value| {
        let Some(record) = find(value, sid)? else {
            return Ok(Change::Keep(false));
        };
        if expires_ms <= record.expires_ms.saturating_add(REFRESH_GRANULARITY_MS) {
            return Ok(Change::Keep(true));
        }
        let mut new = value.to_vec();
        if let Some(slot) = new.get_mut(record.end - 8..record.end) {
            slot.copy_from_slice(&expires_ms.to_le_bytes());
        }
        Ok(Change::Write(new, true))
    })
}

/// Ends session `sid` and hands back its record (its slot is the caller's to release
/// or keep); `None` if it is not recorded.
pub fn remove<S: SharedStore + ?Sized>(
    store: &S,
    sid: &str,
) -> Result<Option<Session>, StoreError> {
    update(store, shard_of(sid), |value| {
        let Some(record) = find(value, sid)? else {
            return Ok(Change::Keep(None));
        };
        let session = decode_record(value.get(record.start..record.end).unwrap_or_default())?;
        let mut new = value.get(..record.start).unwrap_or_default().to_vec();
        new.extend_from_slice(value.get(record.end..).unwrap_or_default());
        Ok(Change::Write(new, Some(session)))
    })
}

/// Ends every session expired at `now_ms` and hands their records back; each is
/// handed to exactly one caller, whichever worker asks. A shard with nothing expired
/// is only read.
pub fn take_expired<S: SharedStore + ?Sized>(
    store: &S,
    now_ms: u64,
) -> Result<Vec<Session>, StoreError> {
    let mut out = Vec::new();
    for shard in 0..N_SHARDS {
        let expired = update(store, shard, |value| {
            let mut any = false;
            for r in records(value) {
                any |= r?.expires_ms <= now_ms;
            }
            if !any {
                return Ok(Change::Keep(Vec::new()));
            }
            let mut new = vec![FORMAT_VERSION];
            let mut gone = Vec::new();
            for r in records(value) {
                let r = r?;
                let bytes = value.get(r.start..r.end).unwrap_or_default();
                if r.expires_ms <= now_ms {
                    gone.push(decode_record(bytes)?);
                } else {
                    new.extend_from_slice(bytes);
                }
            }
            Ok(Change::Write(new, gone))
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
            for record in records(&value) {
                record?;
                n += 1;
            }
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
        assert!(store.total_bytes() <= (N_SHARDS as usize) * (KEY_PREFIX.len() + 2 + 1));
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
        let store_keys = store.keys();
        assert!(store_keys.contains(&shard_key(shard_of("a"))));
        let key = shard_key(shard_of("a"));
        store.set_before_set_hook(move |s: &MemoryStore, k: &str| {
            if k == key && !injected.replace(true) {
                insert(s, &other_session).unwrap();
            }
            None
        });
        assert_eq!(take_expired(&store, 10).unwrap().len(), 1);
        store.clear_before_set_hook();
        assert_eq!(count(&store).unwrap(), 1);
        assert!(remove(&store, &other).unwrap().is_some());
    }

    #[test]
    fn a_corrupt_shard_is_an_error_not_a_guess() {
        let store = store();
        let key = shard_key(shard_of("abc"));
        store.set(&key, &[FORMAT_VERSION, 3, b'a'], 0).unwrap();
        assert_eq!(refresh(&store, "abc", 1), Err(StoreError::Corrupt));
        store.set(&key, &[9], 0).unwrap();
        assert_eq!(remove(&store, "abc"), Err(StoreError::Corrupt));
        // An empty value (never written) is an empty shard.
        store.set(&key, &[], 0).unwrap();
        assert!(insert(&store, &session("abc", None, 5)).unwrap());
        assert_eq!(count(&store).unwrap(), 1);
    }

    #[test]
    fn oversized_fields_are_not_recorded() {
        let store = store();
        let long = "x".repeat(300);
        assert!(!insert(&store, &session(&long, None, 1)).unwrap());
        assert!(!insert(&store, &session("", None, 1)).unwrap());
    }

    #[test]
    fn fields_of_exactly_255_bytes_are_recorded_and_read_back() {
        let store = store();
        let sid = "s".repeat(255);
        let mut s = session(&sid, Some("alice"), 7);
        s.route = "r".repeat(255);
        assert!(insert(&store, &s).unwrap());
        assert_eq!(remove(&store, &sid).unwrap(), Some(s));
        let mut too_long = session("abc", None, 7);
        too_long.route = "r".repeat(256);
        assert!(!insert(&store, &too_long).unwrap());
        // A user length of 0xFFFF would read back as "no user".
        let sentinel = "u".repeat(usize::from(NO_USER));
        assert!(!insert(&store, &session("abc", Some(&sentinel), 7)).unwrap());
        let longest = "u".repeat(usize::from(NO_USER) - 1);
        assert!(insert(&store, &session("abc", Some(&longest), 7)).unwrap());
        assert_eq!(
            remove(&store, "abc").unwrap().and_then(|s| s.user),
            Some(longest)
        );
        assert_eq!(count(&store).unwrap(), 0);
    }

    #[test]
    fn the_shard_is_fnv1a_32_of_the_sid_mod_64() {
        // Part of the shared-data format: two filter builds sharing a vm_id (an
        // update) must agree on where a session lives. FNV-1a 32 reference values:
        // "a" = 0xe40c292c, "foobar" = 0xbf9cf968.
        assert_eq!(shard_of(""), 0x811c_9dc5 % N_SHARDS);
        assert_eq!(shard_of("a"), 0xe40c_292c % N_SHARDS);
        assert_eq!(shard_of("foobar"), 0xbf9c_f968 % N_SHARDS);
        assert_eq!(shard_key(shard_of("a")), "eg.eio.sess.44");
    }
}
