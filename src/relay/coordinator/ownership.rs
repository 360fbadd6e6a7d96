//! What this replica may claim right now: its buckets and the lease that fences them. Pure
//! state; the coordinator publishes it, the pipeline and the batches read it.

use std::time::Instant;

/// What this replica may claim right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Owned buckets, sorted.
    pub buckets: Vec<i32>,
    /// Total number of buckets.
    pub count: i32,
    /// The lease: claims and new publish waves are allowed until then.
    pub valid_until: Instant,
}

impl Ownership {
    /// Nothing owned and no lease (before the first tick, or after losing the coordination
    /// connection).
    pub fn none(count: i32) -> Self {
        Self {
            buckets: Vec::new(),
            count,
            valid_until: Instant::now(),
        }
    }

    /// The lease is valid: batches already claimed may go on publishing.
    pub fn leased(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Claims are allowed now.
    pub fn usable(&self) -> bool {
        !self.buckets.is_empty() && self.leased()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn no_lease_no_claims() {
        assert!(!Ownership::none(4).usable());
        assert!(!Ownership::none(4).leased());
        let empty = Ownership {
            buckets: vec![],
            count: 4,
            valid_until: Instant::now() + Duration::from_secs(5),
        };
        assert!(empty.leased() && !empty.usable());
    }
}
