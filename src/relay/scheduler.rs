//! Per-aggregate ordering in memory. The pipeline reads pending events in `seq` order and
//! hands them here; the scheduler says which events may be published now: at most one event
//! per aggregate is in flight, an aggregate's next event becomes ready the moment its
//! predecessor is confirmed or went dead, and a failed event parks its aggregate (and only
//! it) until its retry is due. No I/O: the pipeline owns the database and the broker.
//!
//! Every event held here (queued, in flight, or published and waiting for its outcome to be
//! saved) is *known*: a later read that returns it again is ignored, so an event is never
//! held twice.
//!
//! **A parked aggregate costs one slot.** While an aggregate's head is retrying (waiting out
//! a backoff, or published again and not yet confirmed), the aggregate holds at most
//! [`HELD_PER_PARKED_AGGREGATE`] events: the rest of its tail is dropped from memory (or not
//! added when a read returns it) and stays pending in the table, nothing counted. When the
//! head is confirmed or goes dead, [`Scheduler::take_reread`] tells the pipeline from which
//! `seq` to read that tail again; until then reads skip it without calling it a gap. So a
//! poisoned head with a tail of any length cannot fill `relay.max_pending_in_memory`.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::event::OutboxEvent;

/// Events an aggregate holds at most while its head is retrying: the head itself. The rest
/// of its tail waits in the table and is read again once the head is confirmed or dead.
pub const HELD_PER_PARKED_AGGREGATE: usize = 1;

/// What [`Scheduler::add`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Held: it is scheduled.
    Held,
    /// Already held; nothing changed.
    Known,
    /// Its aggregate is parked and holds its share: the event stays in the table, to be read
    /// again when the aggregate unparks.
    LeftInTable,
}

/// One queued event and when it may be published (a retry waits out its backoff).
#[derive(Debug)]
struct Queued {
    event: OutboxEvent,
    due: Instant,
}

#[derive(Debug, Default)]
struct Aggregate {
    /// Events not yet published, in `seq` order.
    queue: VecDeque<Queued>,
    /// Its head is at the broker.
    busy: bool,
    /// Listed in `ready` (to list it once).
    listed: bool,
    /// Listed in `parked` with this due time (to list it once per due time).
    parked_until: Option<Instant>,
    bucket: i32,
    /// Its head is retrying: it failed (or was read with a backoff still pending) and has
    /// been neither confirmed nor dead since. While set, the aggregate holds at most
    /// [`HELD_PER_PARKED_AGGREGATE`] events.
    retrying: bool,
    /// Events of it with a `seq` above this were left in the table while it was retrying
    /// (the lowest such bound): read them again from here once it unparks.
    left_after: Option<i64>,
}

impl Aggregate {
    /// Events of it held now (queued, plus the one at the broker).
    fn holding(&self) -> usize {
        self.queue.len() + usize::from(self.busy)
    }
}

/// The in-memory schedule of one relay.
#[derive(Debug, Default)]
pub struct Scheduler {
    aggregates: HashMap<String, Aggregate>,
    /// Aggregates whose head may go now, in the order they became ready.
    ready: VecDeque<String>,
    /// Aggregates whose head waits out a backoff, by due time.
    parked: BinaryHeap<Reverse<(Instant, String)>>,
    /// Every event held (id -> bucket and seq), until its outcome is saved or it is dropped.
    known: HashMap<Uuid, (i32, i64)>,
    /// The `seq` of every event held.
    seqs: HashSet<i64>,
    /// Aggregates unparked since the last [`Scheduler::take_reread`] left events in the table
    /// after this `seq` (the lowest of them): a read from here finds them again.
    reread_after: Option<i64>,
    queued: usize,
    in_flight: usize,
}

impl Scheduler {
    /// An empty schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events held in memory (queued, in flight, or waiting for their outcome to be saved).
    pub fn held(&self) -> usize {
        self.known.len()
    }

    /// Events published and not yet confirmed or failed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events read and not yet published.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Aggregates ready to publish their head now (an upper bound: some may have become
    /// ineligible since they were listed).
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether `id` is held.
    pub fn knows(&self, id: &Uuid) -> bool {
        self.known.contains_key(id)
    }

    /// Adds an event read from the table; `due_in` is how long its retry still waits (zero for
    /// most). An event already held is [`Added::Known`]; one that would queue behind the head
    /// of a parked aggregate that holds its share is [`Added::LeftInTable`] (nothing held).
    pub fn add(&mut self, event: OutboxEvent, due_in: Duration, now: Instant) -> Added {
        if self.known.contains_key(&event.id) {
            return Added::Known;
        }
        if let Some(aggregate) = self.aggregates.get_mut(&event.aggregate_id)
            && aggregate.retrying
            && aggregate.holding() >= HELD_PER_PARKED_AGGREGATE
            // An earlier event (a replay, a late commit) still goes in front of the head.
            && aggregate.queue.front().is_none_or(|q| q.event.seq < event.seq)
        {
            let after = event.seq - 1;
            aggregate.left_after = Some(aggregate.left_after.map_or(after, |a| a.min(after)));
            return Added::LeftInTable;
        }
        self.known.insert(event.id, (event.bucket, event.seq));
        self.seqs.insert(event.seq);
        self.queued += 1;
        let key = event.aggregate_id.clone();
        let aggregate = self.aggregates.entry(key.clone()).or_default();
        aggregate.bucket = event.bucket;
        let queued = Queued {
            due: now + due_in,
            event,
        };
        // Reads come in seq order, so this is almost always a push at the back; a rescan can
        // find an earlier event (a replay, a late commit) that goes in its place.
        let at = aggregate
            .queue
            .iter()
            .rposition(|q| q.event.seq < queued.event.seq)
            .map_or(0, |i| i + 1);
        aggregate.queue.insert(at, queued);
        self.refresh(&key, now);
        Added::Held
    }

    /// A read found an event of `aggregate_id` whose predecessor (`seq` `prev`) is pending but
    /// not held. If the aggregate is parked, that is its tail left in the table: noted (it is
    /// read again from there when the aggregate unparks) and true. Otherwise false: a gap.
    pub fn leaves_in_table(&mut self, aggregate_id: &str, prev: i64) -> bool {
        match self.aggregates.get_mut(aggregate_id) {
            Some(aggregate) if aggregate.retrying => {
                let after = prev - 1;
                aggregate.left_after = Some(aggregate.left_after.map_or(after, |a| a.min(after)));
                true
            }
            _ => false,
        }
    }

    /// Whether the aggregate's head is retrying (it holds one slot, its tail waits in the
    /// table).
    pub fn is_parked(&self, aggregate_id: &str) -> bool {
        self.aggregates
            .get(aggregate_id)
            .is_some_and(|a| a.retrying)
    }

    /// The `seq` after which events left in the table by aggregates unparked since the last
    /// call are to be read again (the lowest), if any.
    pub fn take_reread(&mut self) -> Option<i64> {
        self.reread_after.take()
    }

    /// Takes the next event that may be published now (its aggregate is then busy).
    pub fn next(&mut self, now: Instant, allowed: impl Fn(i32) -> bool) -> Option<OutboxEvent> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(key) = self.ready.pop_front() {
            let Some(aggregate) = self.aggregates.get_mut(&key) else {
                continue;
            };
            aggregate.listed = false;
            let eligible = !aggregate.busy && aggregate.queue.front().is_some_and(|q| q.due <= now);
            if !eligible {
                continue;
            }
            if !allowed(aggregate.bucket) {
                aggregate.listed = true;
                skipped.push(key);
                continue;
            }
            if let Some(queued) = aggregate.queue.pop_front() {
                aggregate.busy = true;
                self.queued -= 1;
                self.in_flight += 1;
                found = Some(queued.event);
                break;
            }
        }
        for key in skipped.into_iter().rev() {
            self.ready.push_front(key);
        }
        found
    }

    /// The broker confirmed `event`: its aggregate's next event may go. The event stays known
    /// until [`Scheduler::forget`] (its outcome is saved).
    pub fn confirmed(&mut self, event: &OutboxEvent, now: Instant) {
        self.unpark(&event.aggregate_id);
        self.release(&event.aggregate_id, now);
    }

    /// The event in flight for `aggregate_id` went dead and that is saved: the aggregate
    /// continues with its next event. (Call it only once the dead state is saved, so a
    /// crash cannot retry the dead event after its successors.)
    pub fn dead(&mut self, aggregate_id: &str, now: Instant) {
        self.unpark(aggregate_id);
        self.release(aggregate_id, now);
    }

    /// The aggregate's head has its outcome: unless its next event waits out a backoff too,
    /// it is no longer parked ([`Scheduler::refresh`] then asks for its tail to be read again).
    fn unpark(&mut self, aggregate_id: &str) {
        if let Some(aggregate) = self.aggregates.get_mut(aggregate_id) {
            aggregate.retrying = false;
        }
    }

    /// A read found `id` again, already held, and says its retry is due in `due_in`: if it
    /// waits at the head of its aggregate for longer than that (someone shortened its backoff
    /// in the table), it becomes due sooner.
    pub fn update_due(&mut self, aggregate_id: &str, id: Uuid, due_in: Duration, now: Instant) {
        let Some(aggregate) = self.aggregates.get_mut(aggregate_id) else {
            return;
        };
        let due = now + due_in;
        match aggregate.queue.iter_mut().find(|q| q.event.id == id) {
            Some(queued) if due < queued.due => queued.due = due,
            _ => return,
        }
        self.refresh(aggregate_id, now);
    }

    /// `event` failed and is retried after `delay`: it goes back to the head of its
    /// aggregate, which waits (only it) and keeps at most [`HELD_PER_PARKED_AGGREGATE`]
    /// events: the rest of its queue leaves memory (it stays pending in the table). Returns
    /// the buckets of the events dropped (one entry per event).
    pub fn retry(&mut self, mut event: OutboxEvent, delay: Duration, now: Instant) -> Vec<i32> {
        event.attempts += 1;
        let key = event.aggregate_id.clone();
        self.requeue(event, now + delay, now);
        let Some(aggregate) = self.aggregates.get_mut(&key) else {
            return Vec::new();
        };
        aggregate.retrying = true;
        if aggregate.queue.len() <= HELD_PER_PARKED_AGGREGATE {
            return Vec::new();
        }
        let dropped: Vec<Uuid> = aggregate
            .queue
            .drain(HELD_PER_PARKED_AGGREGATE..)
            .map(|q| q.event.id)
            .collect();
        if let Some(first) = dropped.first().and_then(|id| self.known.get(id)) {
            let after = first.1 - 1;
            aggregate.left_after = Some(aggregate.left_after.map_or(after, |a| a.min(after)));
        }
        self.queued -= dropped.len();
        self.forget(&dropped)
    }

    /// `event` was not published (broker down, lease lost, shutdown): it goes back to the
    /// head of its aggregate, due now, no attempt counted.
    pub fn unpublished(&mut self, event: OutboxEvent, now: Instant) {
        self.requeue(event, now, now);
    }

    fn requeue(&mut self, event: OutboxEvent, due: Instant, now: Instant) {
        let key = event.aggregate_id.clone();
        self.in_flight = self.in_flight.saturating_sub(1);
        self.queued += 1;
        let aggregate = self.aggregates.entry(key.clone()).or_default();
        aggregate.busy = false;
        aggregate.bucket = event.bucket;
        aggregate.queue.push_front(Queued { event, due });
        self.refresh(&key, now);
    }

    /// The event in flight for `aggregate_id` leaves without an outcome (its call failed, or
    /// its bucket is no longer owned): the aggregate is free again.
    pub fn abandon(&mut self, aggregate_id: &str, now: Instant) {
        self.release(aggregate_id, now);
    }

    fn release(&mut self, aggregate_id: &str, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(aggregate) = self.aggregates.get_mut(aggregate_id) {
            aggregate.busy = false;
        }
        self.refresh(aggregate_id, now);
    }

    /// Whether the event with this `seq` is held.
    pub fn holds_seq(&self, seq: i64) -> bool {
        self.seqs.contains(&seq)
    }

    /// The outcomes of these events are saved: they leave memory. Returns their buckets.
    pub fn forget(&mut self, ids: &[Uuid]) -> Vec<i32> {
        ids.iter()
            .filter_map(|id| self.known.remove(id))
            .map(|(bucket, seq)| {
                self.seqs.remove(&seq);
                bucket
            })
            .collect()
    }

    /// The `seq`s of these held events (for events about to be forgotten).
    pub fn seqs_of(&self, ids: &[Uuid]) -> Vec<i64> {
        ids.iter()
            .filter_map(|id| self.known.get(id).map(|(_, seq)| *seq))
            .collect()
    }

    /// Lists the aggregate as ready, parks it, or drops its empty entry.
    fn refresh(&mut self, key: &str, now: Instant) {
        let Some(aggregate) = self.aggregates.get_mut(key) else {
            return;
        };
        if aggregate.busy {
            return;
        }
        match aggregate.queue.front() {
            None => {
                // Whatever it left in the table is read again (its head was confirmed, went
                // dead, or left without an outcome).
                if let Some(after) = aggregate.left_after {
                    self.reread_after = Some(self.reread_after.map_or(after, |a| a.min(after)));
                }
                self.aggregates.remove(key);
            }
            Some(head) if head.due > now => {
                // Read with a backoff still pending after a failure (after a restart, a
                // takeover, or behind an earlier event that went first): retrying until its
                // outcome. A fresh event can be read a millisecond "early" (its producer's
                // transaction started after the read's): not a retry.
                if head.event.attempts > 0 {
                    aggregate.retrying = true;
                }
                if aggregate.parked_until != Some(head.due) {
                    aggregate.parked_until = Some(head.due);
                    self.parked.push(Reverse((head.due, key.to_owned())));
                }
            }
            Some(_) => {
                if !aggregate.retrying
                    && let Some(after) = aggregate.left_after.take()
                {
                    self.reread_after = Some(self.reread_after.map_or(after, |a| a.min(after)));
                }
                if !aggregate.listed {
                    aggregate.listed = true;
                    self.ready.push_back(key.to_owned());
                }
            }
        }
    }

    /// When the next parked aggregate comes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.parked.peek().map(|Reverse((at, _))| *at)
    }

    /// Lists parked aggregates whose retry is due.
    pub fn wake_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.parked.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, key))) = self.parked.pop() {
                self.refresh(&key, now);
            }
        }
    }

    /// Drops the queued (unpublished) events of buckets no longer owned; events in flight
    /// finish. Returns the buckets of the dropped events (one entry per event).
    pub fn drop_unowned(&mut self, owned: impl Fn(i32) -> bool) -> Vec<i32> {
        let mut dropped = Vec::new();
        self.aggregates.retain(|_, aggregate| {
            if owned(aggregate.bucket) {
                return true;
            }
            for queued in aggregate.queue.drain(..) {
                dropped.push(queued.event.id);
            }
            aggregate.busy
        });
        self.queued -= dropped.len();
        self.forget(&dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, aggregate: &str) -> OutboxEvent {
        OutboxEvent {
            id: Uuid::new_v4(),
            seq,
            aggregate_id: aggregate.into(),
            bucket: i32::from(aggregate.as_bytes()[0] % 4),
            ..OutboxEvent::fixture()
        }
    }

    fn drain(s: &mut Scheduler, now: Instant) -> Vec<i64> {
        std::iter::from_fn(|| s.next(now, |_| true))
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn one_event_per_aggregate_in_flight_and_the_next_goes_when_it_is_confirmed() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        for (seq, agg) in [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "c"), (6, "b")] {
            assert_eq!(s.add(ev(seq, agg), Duration::ZERO, now), Added::Held);
        }
        let first: Vec<OutboxEvent> = std::iter::from_fn(|| s.next(now, |_| true)).collect();
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 5]);
        assert_eq!(s.in_flight(), 3);
        s.confirmed(&first[0], now); // a:1
        assert_eq!(drain(&mut s, now), [3]);
        s.confirmed(&first[1], now); // b:2
        assert_eq!(drain(&mut s, now), [6]);
        assert_eq!(s.held(), 6, "confirmed events stay known until forgotten");
        assert_eq!(s.forget(&[first[0].id]).len(), 1);
        assert_eq!(s.held(), 5);
    }

    #[test]
    fn a_failed_event_parks_only_its_aggregate_and_keeps_its_place() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        for (seq, agg) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
            s.add(ev(seq, agg), Duration::ZERO, now);
        }
        let a1 = s.next(now, |_| true).unwrap();
        let b3 = s.next(now, |_| true).unwrap();
        s.retry(a1, Duration::from_secs(5), now);
        s.confirmed(&b3, now);
        assert_eq!(drain(&mut s, now), [4], "b flows, a waits");
        assert_eq!(s.next_due(), Some(now + Duration::from_secs(5)));
        let later = now + Duration::from_secs(5);
        s.wake_due(later);
        let retried = s.next(later, |_| true).unwrap();
        assert_eq!((retried.seq, retried.attempts), (1, 1), "a:1 before a:2");
        s.confirmed(&retried, later);
        // a:2 left memory while a:1 waited; read again from a:1, it goes next.
        assert_eq!(s.take_reread(), Some(1));
        s.add(ev(2, "a"), Duration::ZERO, later);
        assert_eq!(drain(&mut s, later), [2]);
    }

    #[test]
    fn an_event_read_with_a_pending_backoff_parks_its_aggregate() {
        // After a restart the table is the only memory of a retry in progress.
        let now = Instant::now();
        let mut s = Scheduler::new();
        s.add(ev(1, "a"), Duration::from_secs(30), now);
        s.add(ev(2, "a"), Duration::ZERO, now);
        s.add(ev(3, "b"), Duration::ZERO, now);
        assert_eq!(drain(&mut s, now), [3]);
        s.wake_due(now + Duration::from_secs(30));
        assert_eq!(drain(&mut s, now + Duration::from_secs(30)), [1]);
    }

    #[test]
    fn a_backoff_shortened_in_the_table_is_noticed_by_the_next_read() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        let head = ev(1, "a");
        let id = head.id;
        s.add(head, Duration::from_secs(3600), now);
        assert_eq!(drain(&mut s, now), Vec::<i64>::new());
        s.update_due("a", id, Duration::from_secs(7200), now);
        assert_eq!(
            s.next_due(),
            Some(now + Duration::from_secs(3600)),
            "never later"
        );
        s.update_due("a", id, Duration::ZERO, now);
        assert_eq!(drain(&mut s, now), [1]);
    }

    #[test]
    fn a_rescan_puts_an_earlier_event_before_later_queued_ones_and_duplicates_are_ignored() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        let late = ev(2, "a");
        s.add(ev(5, "a"), Duration::ZERO, now);
        s.add(late.clone(), Duration::ZERO, now);
        assert_eq!(
            s.add(late, Duration::ZERO, now),
            Added::Known,
            "already held"
        );
        assert_eq!(drain(&mut s, now), [2]);
    }

    #[test]
    fn lost_buckets_are_dropped_and_their_events_in_flight_finish() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        let a = ev(1, "a"); // bucket 'a' % 4 = 1
        let b = ev(2, "b"); // bucket 2
        let (ba, bb) = (a.bucket, b.bucket);
        s.add(a, Duration::ZERO, now);
        s.add(b, Duration::ZERO, now);
        s.add(ev(3, "a"), Duration::ZERO, now);
        let a1 = s.next(now, |bucket| bucket == ba).unwrap();
        assert_eq!(a1.seq, 1);
        s.update_due("a", Uuid::new_v4(), Duration::ZERO, now); // unknown: no effect
        // Bucket of "a" is lost: its queued event (3) is dropped, the one in flight finishes.
        let dropped = s.drop_unowned(|bucket| bucket == bb);
        assert_eq!(dropped, [ba]);
        assert_eq!(s.queued(), 1);
        s.confirmed(&a1, now);
        assert_eq!(drain(&mut s, now), [2]);
    }

    #[test]
    fn a_failed_head_keeps_one_slot_and_its_tail_leaves_memory_until_it_is_confirmed() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        for seq in 1..=5 {
            s.add(ev(seq, "a"), Duration::ZERO, now);
        }
        s.add(ev(6, "b"), Duration::ZERO, now);
        let head = s.next(now, |_| true).unwrap();
        assert_eq!(drain(&mut s, now), [6]);
        // The head fails: a:2..a:5 leave memory (one bucket entry each), the head stays.
        let dropped = s.retry(head, Duration::from_secs(5), now);
        assert_eq!(dropped.len(), 4);
        assert_eq!(
            (s.held(), s.queued()),
            (2, 1),
            "a's head and b's event in flight"
        );
        assert!(s.is_parked("a") && !s.holds_seq(2));
        // Reads return the tail again: it stays in the table, and a later event whose
        // predecessor is not held is the parked tail, not a gap.
        assert_eq!(s.add(ev(2, "a"), Duration::ZERO, now), Added::LeftInTable);
        assert!(s.leaves_in_table("a", 4));
        assert!(!s.leaves_in_table("b", 4), "b is not parked: a gap");
        assert_eq!(s.take_reread(), None, "still parked");
        // The retry goes out, still parked while at the broker, and is confirmed.
        let later = now + Duration::from_secs(5);
        s.wake_due(later);
        let retried = s.next(later, |_| true).unwrap();
        assert_eq!(retried.seq, 1);
        assert_eq!(s.add(ev(7, "a"), Duration::ZERO, later), Added::LeftInTable);
        s.confirmed(&retried, later);
        assert!(!s.is_parked("a"));
        assert_eq!(
            s.take_reread(),
            Some(1),
            "read a's tail again after its head"
        );
        assert_eq!(s.take_reread(), None, "once");
        // Read again in order, the tail flows.
        for seq in [2, 3] {
            assert_eq!(s.add(ev(seq, "a"), Duration::ZERO, later), Added::Held);
        }
        assert_eq!(drain(&mut s, later), [2]);
    }

    #[test]
    fn an_event_read_in_backoff_parks_its_aggregate_and_a_dead_head_unparks_it() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        let failed_before = OutboxEvent {
            attempts: 1,
            ..ev(10, "a")
        };
        assert_eq!(
            s.add(failed_before, Duration::from_secs(30), now),
            Added::Held
        );
        assert_eq!(s.add(ev(11, "a"), Duration::ZERO, now), Added::LeftInTable);
        assert_eq!(s.add(ev(12, "a"), Duration::ZERO, now), Added::LeftInTable);
        // An earlier event (a replay) still goes in front of the head.
        assert_eq!(s.add(ev(4, "a"), Duration::ZERO, now), Added::Held);
        let replayed = s.next(now, |_| true).unwrap();
        assert_eq!(replayed.seq, 4);
        s.confirmed(&replayed, now);
        assert_eq!(
            s.take_reread(),
            None,
            "its next event still waits out a backoff"
        );
        let later = now + Duration::from_secs(30);
        s.wake_due(later);
        let head = s.next(later, |_| true).unwrap();
        assert_eq!(head.seq, 10);
        assert!(s.is_parked("a"), "the head is a retry until its outcome");
        s.dead("a", later);
        assert_eq!(s.take_reread(), Some(10));
        assert_eq!(s.add(ev(11, "a"), Duration::ZERO, later), Added::Held);
    }

    #[test]
    fn a_fresh_event_read_a_moment_early_does_not_park_its_aggregate() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        assert_eq!(
            s.add(ev(1, "a"), Duration::from_millis(1), now),
            Added::Held
        );
        assert_eq!(s.add(ev(2, "a"), Duration::ZERO, now), Added::Held);
        assert!(!s.is_parked("a"));
    }

    #[test]
    fn an_abandoned_parked_head_still_asks_for_its_tail_to_be_read_again() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        s.add(ev(1, "a"), Duration::ZERO, now);
        s.add(ev(2, "a"), Duration::ZERO, now);
        let head = s.next(now, |_| true).unwrap();
        s.retry(head, Duration::ZERO, now);
        let head = s.next(now, |_| true).unwrap();
        s.abandon(&head.aggregate_id, now);
        s.forget(&[head.id]);
        assert_eq!(s.take_reread(), Some(1));
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn events_of_buckets_not_allowed_stay_ready_for_later() {
        let now = Instant::now();
        let mut s = Scheduler::new();
        let a = ev(1, "a");
        let bucket = a.bucket;
        s.add(a, Duration::ZERO, now);
        assert!(s.next(now, |b| b != bucket).is_none());
        assert_eq!(s.next(now, |_| true).map(|e| e.seq), Some(1));
    }
}
