//! Per-peer rate limits for the unauthenticated calls (`Challenge`, `Release`, `Receipt`): one token bucket per
//! peer IP address, refilled continuously, so one peer's flood is refused early and cheaply while other peers
//! are served as usual. Time comes from the broker's injected clock.
//!
//! The table of peers is bounded: when it is full, buckets that have refilled completely (peers that have been
//! quiet) are dropped first; if none can be dropped a new peer is refused ("busy") rather than letting the table
//! grow without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained calls per second.
    pub per_second: u32,
    /// Calls allowed in one burst.
    pub burst: u32,
}

impl RateLimit {
    /// The default for `Challenge`: an agent needs one or two per boot.
    pub const CHALLENGE: Self = Self { per_second: 20, burst: 40 };
    /// The default for `Release` and `Receipt`: each costs an appraisal and an audit record.
    pub const RELEASE: Self = Self { per_second: 10, burst: 20 };
}

/// Most peers tracked at once.
pub const MAX_PEERS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in thousandths.
    milli_tokens: u64,
    last_ms: u64,
}

/// Why a call was limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// This peer exceeded its rate; retry after the given time.
    Rate {
        /// Milliseconds until one call is allowed again.
        retry_after_ms: u64,
    },
    /// Too many peers are being tracked.
    Busy,
}

/// Token buckets keyed by peer address.
#[derive(Debug)]
pub struct PeerLimiter {
    limit: RateLimit,
    max_peers: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PeerLimiter {
    /// A limiter applying `limit` to each peer.
    #[must_use]
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, max_peers: MAX_PEERS, buckets: Mutex::new(HashMap::new()) }
    }

    /// Sets the most peers tracked at once.
    #[must_use]
    pub fn with_max_peers(mut self, max_peers: usize) -> Self {
        self.max_peers = max_peers;
        self
    }

    fn capacity(&self) -> u64 {
        u64::from(self.limit.burst.max(1)) * 1000
    }

    fn refill(&self, b: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(b.last_ms);
        let add = elapsed.saturating_mul(u64::from(self.limit.per_second));
        b.milli_tokens = b.milli_tokens.saturating_add(add).min(self.capacity());
        b.last_ms = b.last_ms.max(now_ms);
    }

    /// Takes one call from `peer`'s bucket at `now_ms`.
    ///
    /// # Errors
    /// [`Limited`] when the peer must wait (or the table of peers is full).
    pub fn check(&self, peer: IpAddr, now_ms: u64) -> Result<(), Limited> {
        let mut buckets = self.buckets.lock().map_err(|_| Limited::Busy)?;
        if !buckets.contains_key(&peer) && buckets.len() >= self.max_peers {
            let cap = self.capacity();
            buckets.retain(|_, b| {
                self.refill(b, now_ms);
                b.milli_tokens < cap
            });
            if buckets.len() >= self.max_peers {
                return Err(Limited::Busy);
            }
        }
        let cap = self.capacity();
        let b = buckets.entry(peer).or_insert(Bucket { milli_tokens: cap, last_ms: now_ms });
        self.refill(b, now_ms);
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            return Ok(());
        }
        let missing = 1000 - b.milli_tokens;
        let per_ms = u64::from(self.limit.per_second.max(1));
        Err(Limited::Rate { retry_after_ms: missing.div_ceil(per_ms) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_is_limited_others_are_not() {
        let l = PeerLimiter::new(RateLimit { per_second: 10, burst: 3 });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.check(a, 0).unwrap();
        }
        assert_eq!(l.check(a, 0), Err(Limited::Rate { retry_after_ms: 100 }));
        l.check(b, 0).unwrap();
        // 100 ms later one token is back, not more.
        l.check(a, 100).unwrap();
        assert!(l.check(a, 100).is_err());
    }

    #[test]
    fn the_peer_table_is_bounded_and_quiet_peers_make_room() {
        let l = PeerLimiter::new(RateLimit { per_second: 1, burst: 1 }).with_max_peers(2);
        let p = |i: u8| IpAddr::from([10, 0, 0, i]);
        l.check(p(1), 0).unwrap();
        l.check(p(2), 0).unwrap();
        assert_eq!(l.check(p(3), 0), Err(Limited::Busy));
        // After a second both buckets are full again: forgotten, room for the new peer.
        l.check(p(3), 1_000).unwrap();
    }
}
