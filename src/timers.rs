//! The worker's timer heap: when each watched stream next needs the tick.
//!
//! Owns: the rule that a stream has **one live entry** in the heap. A stream
//! keeps the due time of its live entry ([`Armed`]); arming it for a later time
//! pushes nothing (the earlier entry fires first, and whoever handles it arms
//! the stream again from its state), arming it for an earlier time pushes a new
//! entry and makes the old one stale. Stale entries are skipped when they come
//! due, never acted on, and are dropped by [`TimerHeap::compact`].
//!
//! Must never: let a stream's timer be lost (an entry is pushed whenever the
//! stream's due time moves earlier), or act on a stale entry (a stream whose
//! timer fired twice would reschedule twice, and every later period would do
//! its work twice over, and hold two entries per connection).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A stream's live heap entry: when it is due, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed(u64);

impl Armed {
    /// No live entry.
    pub const NONE: Armed = Armed(u64::MAX);

    pub fn due_ms(self) -> Option<u64> {
        (self != Armed::NONE).then_some(self.0)
    }
}

/// One heap entry, ordered by due time then stream id: 12 bytes, where a
/// `(u64, u32)` takes 16 (an entry per open WebSocket, in a vector that
/// grows by doubling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    due_high: u32,
    due_low: u32,
    id: u32,
}

impl Entry {
    fn new(due_ms: u64, id: u32) -> Entry {
        Entry {
            due_high: (due_ms >> 32) as u32,
            due_low: due_ms as u32,
            id,
        }
    }

    fn due_ms(self) -> u64 {
        (u64::from(self.due_high) << 32) | u64::from(self.due_low)
    }
}

/// Min-heap of `(due_ms, stream id)`.
#[derive(Debug, Default)]
pub struct TimerHeap {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl TimerHeap {
    /// Makes sure stream `id` (whose live entry is `armed`) is looked at by
    /// `due_ms`: pushes an entry only if it has none as early.
    pub fn arm(&mut self, armed: &mut Armed, id: u32, due_ms: u64) {
        if due_ms < armed.0 {
            self.heap.push(Reverse(Entry::new(due_ms, id)));
            *armed = Armed(due_ms);
        }
    }

    /// The earliest entry due at `now_ms`, taken off the heap. The caller
    /// looks its stream up and asks [`fire`] whether the entry is live.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, u32)> {
        let Reverse(entry) = *self.heap.peek()?;
        let due = entry.due_ms();
        if due > now_ms {
            return None;
        }
        self.heap.pop();
        Some((due, entry.id))
    }

    /// Entries in the heap, live and stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops every entry `live` says no stream is waiting for (streams gone,
    /// entries made stale by an earlier one).
    pub fn compact(&mut self, mut live: impl FnMut(u32, u64) -> bool) {
        let kept: Vec<_> = self
            .heap
            .drain()
            .filter(|Reverse(entry)| live(entry.id, entry.due_ms()))
            .collect();
        self.heap.extend(kept);
    }
}

/// Whether the entry `due_ms` just popped is the stream's live one; if so the
/// stream has no entry left (arm it again if it still needs the tick).
pub fn fire(armed: &mut Armed, due_ms: u64) -> bool {
    if armed.0 != due_ms {
        return false;
    }
    *armed = Armed::NONE;
    true
}

/// Whether `due_ms` is the stream's live entry (for [`TimerHeap::compact`]).
pub fn is_live(armed: Armed, due_ms: u64) -> bool {
    armed.0 == due_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_due(heap: &mut TimerHeap, now: u64) -> Vec<(u64, u32)> {
        std::iter::from_fn(|| heap.pop_due(now)).collect()
    }

    #[test]
    fn a_later_time_pushes_nothing_an_earlier_one_supersedes() {
        let mut heap = TimerHeap::default();
        let mut armed = Armed::NONE;
        heap.arm(&mut armed, 7, 100);
        heap.arm(&mut armed, 7, 300);
        assert_eq!(heap.len(), 1);
        assert_eq!(armed.due_ms(), Some(100));
        heap.arm(&mut armed, 7, 50);
        assert_eq!(heap.len(), 2);
        assert_eq!(armed.due_ms(), Some(50));
        // Equal to the live entry: nothing new.
        heap.arm(&mut armed, 7, 50);
        assert_eq!(heap.len(), 2);
    }

    #[test]
    fn only_the_live_entry_fires_and_a_stale_one_is_skipped() {
        let mut heap = TimerHeap::default();
        let mut armed = Armed::NONE;
        heap.arm(&mut armed, 1, 100);
        heap.arm(&mut armed, 1, 40);
        assert_eq!(heap.pop_due(39), None);
        assert_eq!(heap.pop_due(40), Some((40, 1)));
        assert!(fire(&mut armed, 40));
        assert_eq!(armed, Armed::NONE);
        // Re-armed for later than the stale entry: the stale one is skipped.
        heap.arm(&mut armed, 1, 200);
        assert_eq!(heap.pop_due(150), Some((100, 1)));
        assert!(!fire(&mut armed, 100));
        assert_eq!(armed.due_ms(), Some(200));
        assert_eq!(drain_due(&mut heap, 199), vec![]);
        assert_eq!(drain_due(&mut heap, 200), vec![(200, 1)]);
        assert!(fire(&mut armed, 200));
    }

    #[test]
    fn a_stream_rearmed_each_period_keeps_one_entry() {
        // The upgrade deadline is armed first, then the idle timer at the 101
        // (later: nothing pushed); each period re-arms from the state.
        let mut heap = TimerHeap::default();
        let mut armed = Armed::NONE;
        heap.arm(&mut armed, 3, 10_000);
        heap.arm(&mut armed, 3, 60_000);
        assert_eq!(heap.len(), 1);
        let mut now = 10_000;
        for _ in 0..5 {
            let fired: Vec<_> = drain_due(&mut heap, now)
                .into_iter()
                .filter(|(due, _)| fire(&mut armed, *due))
                .collect();
            assert_eq!(fired.len(), 1);
            now += 60_000;
            heap.arm(&mut armed, 3, now);
            assert_eq!(heap.len(), 1);
        }
    }

    #[test]
    fn pop_due_takes_entries_in_time_order_and_leaves_the_rest() {
        let mut heap = TimerHeap::default();
        let (mut a, mut b, mut c) = (Armed::NONE, Armed::NONE, Armed::NONE);
        heap.arm(&mut a, 1, 30);
        heap.arm(&mut b, 2, 10);
        heap.arm(&mut c, 3, 20);
        assert_eq!(drain_due(&mut heap, 25), vec![(10, 2), (20, 3)]);
        assert_eq!(heap.len(), 1);
        assert!(!heap.is_empty());
        assert_eq!(drain_due(&mut heap, 30), vec![(30, 1)]);
        assert!(heap.is_empty());
    }

    #[test]
    fn compact_keeps_exactly_the_live_entries() {
        let mut heap = TimerHeap::default();
        let mut armed = [Armed::NONE; 4];
        for (id, a) in armed.iter_mut().enumerate() {
            heap.arm(a, id as u32, 100);
            heap.arm(a, id as u32, 50);
        }
        assert_eq!(heap.len(), 8);
        // Stream 3 is gone.
        heap.compact(|id, due| id != 3 && is_live(armed[id as usize], due));
        assert_eq!(heap.len(), 3);
        assert_eq!(drain_due(&mut heap, 1_000), vec![(50, 0), (50, 1), (50, 2)]);
    }

    #[test]
    fn entries_order_by_the_whole_due_time_then_the_id() {
        let mut heap = TimerHeap::default();
        let mut armed = [Armed::NONE; 4];
        // Due times that differ only in the high or only in the low half.
        heap.arm(&mut armed[0], 9, (1 << 32) + 5);
        heap.arm(&mut armed[1], 1, (1 << 32) + 5);
        heap.arm(&mut armed[2], 2, 7);
        heap.arm(&mut armed[3], 3, (2 << 32) + 1);
        assert_eq!(
            drain_due(&mut heap, u64::MAX),
            vec![
                (7, 2),
                ((1 << 32) + 5, 1),
                ((1 << 32) + 5, 9),
                ((2 << 32) + 1, 3)
            ]
        );
        assert_eq!(std::mem::size_of::<Entry>(), 12);
    }

    #[test]
    fn none_has_no_due_time() {
        assert_eq!(Armed::NONE.due_ms(), None);
        let mut armed = Armed::NONE;
        TimerHeap::default().arm(&mut armed, 0, 0);
        assert_eq!(armed.due_ms(), Some(0));
        assert!(is_live(armed, 0));
        assert!(!is_live(armed, 1));
    }
}
