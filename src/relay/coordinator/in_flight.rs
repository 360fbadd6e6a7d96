//! The hand-over bookkeeping between the pipeline and the coordinator: which buckets a running
//! claim covers and how many claimed events of each bucket are not settled yet, so a released
//! bucket is unlocked only when nothing of it is in flight. Pure state, no I/O.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::watch;

use super::Ownership;

/// What the pipeline has in flight, per bucket: read by the coordinator before it unlocks a
/// released bucket.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<InFlightState>>);

#[derive(Debug, Default)]
struct InFlightState {
    /// Claimed, not yet settled events per bucket.
    events: HashMap<i32, usize>,
    /// The buckets of the claim query running now (empty when none).
    claiming: Vec<i32>,
}

impl InFlight {
    fn state(&self) -> MutexGuard<'_, InFlightState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the current ownership and, in the same step, records a claim over its buckets
    /// as running. The coordinator publishes a new ownership *before* it checks
    /// [`InFlight::busy`], so it either sees this claim or the claim sees the new ownership.
    /// Finish the claim with [`Claim::claimed`] (dropping the guard records nothing claimed).
    pub fn begin_claim(&self, ownership: &mut watch::Receiver<Ownership>) -> (Ownership, Claim) {
        let mut state = self.state();
        let current = ownership.borrow_and_update().clone();
        state.claiming = current.buckets.clone();
        (current, Claim(Some(self.clone())))
    }

    /// Records events of `buckets` (one entry per event) as settled.
    pub fn settled(&self, buckets: &[i32]) {
        let mut state = self.state();
        for b in buckets {
            if let Some(n) = state.events.get_mut(b) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.events.remove(b);
                }
            }
        }
    }

    /// Whether a running claim covers `bucket` or an event of it is in flight.
    pub fn busy(&self, bucket: i32) -> bool {
        let state = self.state();
        state.claiming.contains(&bucket) || state.events.contains_key(&bucket)
    }

    /// Events in flight (all buckets).
    pub fn events(&self) -> usize {
        self.state().events.values().sum()
    }
}

/// A claim in progress (see [`InFlight::begin_claim`]).
#[derive(Debug)]
pub struct Claim(Option<InFlight>);

impl Claim {
    /// The claim returned events of these buckets (one entry per event): they are in flight
    /// until [`InFlight::settled`].
    pub fn claimed(mut self, buckets: impl IntoIterator<Item = i32>) {
        if let Some(in_flight) = self.0.take() {
            let mut state = in_flight.state();
            for b in buckets {
                *state.events.entry(b).or_insert(0) += 1;
            }
            state.claiming.clear();
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(in_flight) = self.0.take() {
            in_flight.state().claiming.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn owning(buckets: Vec<i32>) -> watch::Sender<Ownership> {
        watch::Sender::new(Ownership {
            buckets,
            count: 8,
            valid_until: Instant::now() + Duration::from_secs(60),
        })
    }

    #[test]
    fn a_running_claim_keeps_its_buckets_busy_until_its_events_settle() {
        let in_flight = InFlight::default();
        let tx = owning(vec![1, 2]);
        let mut rx = tx.subscribe();

        let (ownership, claim) = in_flight.begin_claim(&mut rx);
        assert_eq!(ownership.buckets, vec![1, 2]);
        assert!(in_flight.busy(1) && in_flight.busy(2) && !in_flight.busy(3));

        claim.claimed([2, 2]);
        assert!(!in_flight.busy(1), "no event of bucket 1 was claimed");
        assert!(in_flight.busy(2));
        in_flight.settled(&[2]);
        assert!(
            in_flight.busy(2),
            "one event of bucket 2 is still in flight"
        );
        in_flight.settled(&[2]);
        assert!(!in_flight.busy(2));
        assert_eq!(in_flight.events(), 0);
    }

    #[test]
    fn an_abandoned_claim_holds_nothing() {
        let in_flight = InFlight::default();
        let tx = owning(vec![5]);
        let mut rx = tx.subscribe();
        let (_, claim) = in_flight.begin_claim(&mut rx);
        assert!(in_flight.busy(5));
        drop(claim);
        assert!(!in_flight.busy(5));
    }

    #[test]
    fn a_claim_begun_after_a_release_sees_the_new_ownership() {
        let in_flight = InFlight::default();
        let tx = owning(vec![1, 2]);
        let mut rx = tx.subscribe();
        // The coordinator releases bucket 2 (publishes first) ...
        tx.send_modify(|o| o.buckets = vec![1]);
        // ... and a claim that starts now cannot cover it.
        let (ownership, _claim) = in_flight.begin_claim(&mut rx);
        assert_eq!(ownership.buckets, vec![1]);
        assert!(!in_flight.busy(2));
    }
}
