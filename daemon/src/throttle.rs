//! The failed-login throttle (issue: 3,000 wrong tokens on one connection took 2.2 s
//! and each added an audit row).
//!
//! Keyed by the peer: the Unix socket's peer uid (`SO_PEERCRED`), the TCP peer
//! address. A correct token is never delayed; each failure is answered after a delay
//! that doubles with the peer's recent failures, from [`BASE_DELAY`] up to
//! [`MAX_DELAY`], and a connection is closed after
//! [`MAX_FAILURES_PER_CONNECTION`] failures. A peer's count is forgotten after
//! [`QUIET`] without failures. Audit: the first failure of a burst gets its own entry,
//! the rest are counted and written as one entry with the count (when the connection
//! that failed closes or logs in, or when the burst ends).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BASE_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(3);
pub const QUIET: Duration = Duration::from_secs(60);
pub const MAX_FAILURES_PER_CONNECTION: u32 = 5;
/// Peers remembered before quiet ones are dropped.
const MAX_PEERS: usize = 4096;

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A Unix socket client, by its uid.
    Uid(u32),
    /// A loopback TCP client, by its address.
    Ip(IpAddr),
    /// A stream whose peer cannot be told (in-process tests).
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Uid(u) => write!(f, "uid {u}"),
            Peer::Ip(a) => write!(f, "{a}"),
            Peer::Unknown => f.write_str("an unknown peer"),
        }
    }
}

#[derive(Debug)]
struct PeerState {
    failures: u32,
    last: Instant,
    /// A burst is open: its first failure was audited.
    open: bool,
    /// Failures of the open burst not yet audited.
    unrecorded: u32,
}

impl PeerState {
    /// A peer with no recent failures.
    fn quiet(now: Instant) -> PeerState {
        PeerState {
            failures: 0,
            last: now,
            open: false,
            unrecorded: 0,
        }
    }
}

/// What to do about one failed login.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Audit this failure on its own (the first of a burst).
    pub record: bool,
    /// Failures of a burst that ended before this one and were not audited yet.
    pub ended: u32,
}

/// The per-peer failure counts.
#[derive(Debug, Default)]
pub struct Throttle {
    peers: Mutex<HashMap<Peer, PeerState>>,
}

impl Throttle {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Peer, PeerState>) -> R) -> R {
        match self.peers.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Count a failed login of `peer` at `now`.
    pub fn failed(&self, peer: &Peer, now: Instant) -> Failure {
        self.with(|m| {
            if m.len() >= MAX_PEERS {
                m.retain(|_, s| now.duration_since(s.last) < QUIET);
            }
            let s = m
                .entry(peer.clone())
                .or_insert_with(|| PeerState::quiet(now));
            let mut ended = 0;
            if now.duration_since(s.last) >= QUIET {
                ended = s.unrecorded;
                *s = PeerState::quiet(now);
            }
            s.failures = s.failures.saturating_add(1);
            s.last = now;
            let record = !s.open;
            if s.open {
                s.unrecorded = s.unrecorded.saturating_add(1);
            }
            s.open = true;
            let shift = (s.failures - 1).min(16);
            let delay = BASE_DELAY.saturating_mul(1 << shift).min(MAX_DELAY);
            Failure {
                delay,
                record,
                ended,
            }
        })
    }

    /// The failures of `peer` counted but not audited yet (reset to none).
    pub fn take_unrecorded(&self, peer: &Peer) -> u32 {
        self.with(|m| match m.get_mut(peer) {
            Some(s) => std::mem::take(&mut s.unrecorded),
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap_and_bursts_are_counted() {
        let t = Throttle::default();
        let p = Peer::Uid(1000);
        let t0 = Instant::now();
        let f1 = t.failed(&p, t0);
        assert_eq!((f1.delay, f1.record, f1.ended), (BASE_DELAY, true, 0));
        let f2 = t.failed(&p, t0);
        assert_eq!((f2.delay, f2.record), (BASE_DELAY * 2, false));
        let mut last = f2.delay;
        for _ in 0..40 {
            let f = t.failed(&p, t0);
            assert!(f.delay >= last && f.delay <= MAX_DELAY);
            assert!(!f.record);
            last = f.delay;
        }
        assert_eq!(last, MAX_DELAY);
        assert_eq!(t.take_unrecorded(&p), 41);
        assert_eq!(t.take_unrecorded(&p), 0);
        // another peer is not slowed by this one
        assert_eq!(t.failed(&Peer::Uid(1001), t0).delay, BASE_DELAY);
        // after a quiet spell the count starts again, and the old burst's rest is told
        t.failed(&p, t0);
        let f = t.failed(&p, t0 + QUIET);
        assert_eq!((f.delay, f.record, f.ended), (BASE_DELAY, true, 1));
    }
}
