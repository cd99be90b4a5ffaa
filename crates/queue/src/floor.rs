//! Claim floors: where a claim's index scan may start, so that it does not walk the entries
//! of messages already handled.
//!
//! A claim reads its index in order (`visible_at` for the inbox, the UUID v7 id for the
//! outbox) from the start. Handled rows leave dead index entries behind until vacuum removes
//! them; normally the first scan that meets one marks it dead and later scans skip it, but
//! while any transaction holds the xmin horizon back (a long report, a REPEATABLE READ
//! backup, a replica's feedback) nothing can be marked, vacuum removes nothing, and every
//! claim walks every entry of every message handled since: the claim's cost grows with the
//! hold, which is how SKIP LOCKED queues lose a third of their throughput (PgQue's
//! benchmark; River #59, que #244).
//!
//! So a claimer remembers how far it has got: the floor is the newest position it has
//! claimed, less a margin for rows whose inserting transaction committed late, and its
//! claims start there. A row behind the floor can only be one a crashed claimer handed back
//! (rolled back) or one committed more than the margin after its position was stamped;
//! every `sweep` interval one claim starts from the beginning instead and finds those.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far behind the newest claimed position a claim starts. Positions are stamped when
/// the inserting transaction starts (`now()`, or the id minted before the publishing
/// transaction), so a row can commit behind positions claimed already; the relay's inserts
/// take milliseconds, and anything later is found by the next sweep.
pub const MARGIN: Duration = Duration::from_millis(250);

/// How often a claimer reads its claim index from the start: every five poll intervals
/// (5 s by default), the longest a row handed back by a crashed claimer of another process
/// waits (a restarted claimer sweeps at once).
pub(crate) fn sweep_interval(poll: Duration) -> Duration {
    poll.saturating_mul(5)
}

/// The floor of one claimer (shared by its loops), as microseconds since the Unix epoch.
pub(crate) struct Floor {
    state: Mutex<State>,
    sweep: Duration,
}

struct State {
    /// Newest claimed position less the margin; `None` until something is claimed.
    at_micros: Option<i64>,
    last_sweep: Option<Instant>,
}

impl Floor {
    pub fn new(sweep: Duration) -> Self {
        Floor { state: Mutex::new(State { at_micros: None, last_sweep: None }), sweep }
    }

    /// Where the next claim starts: `None` (from the beginning) when a sweep is due, which
    /// only one caller per interval gets.
    pub fn start(&self) -> Option<i64> {
        let mut s = self.state.lock().expect("floor lock");
        if s.last_sweep.is_none_or(|t| t.elapsed() >= self.sweep) {
            s.last_sweep = Some(Instant::now());
            return None;
        }
        s.at_micros
    }

    /// Records the newest position a claim took (microseconds since the epoch).
    pub fn claimed(&self, newest_micros: i64) {
        let candidate = newest_micros - MARGIN.as_micros() as i64;
        let mut s = self.state.lock().expect("floor lock");
        s.at_micros = Some(s.at_micros.map_or(candidate, |f| f.max(candidate)));
    }
}

/// The smallest UUID v7 of an instant given in microseconds since the epoch.
pub(crate) fn v7_of_micros(micros: i64) -> uuid::Uuid {
    crate::prune::v7_floor(std::time::UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64))
}

/// The instant a UUID v7 was minted, in microseconds since the epoch (`None` for another
/// kind of UUID).
pub(crate) fn micros_of_v7(id: uuid::Uuid) -> Option<i64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs as i64 * 1_000_000 + i64::from(nanos / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_trails_the_newest_claim_and_sweeps_once_per_interval() {
        let f = Floor::new(Duration::from_secs(3600));
        assert_eq!(f.start(), None, "the first claim sweeps");
        assert_eq!(f.start(), None, "nothing claimed yet: from the beginning");
        f.claimed(10_000_000);
        f.claimed(9_000_000);
        assert_eq!(f.start(), Some(10_000_000 - 250_000), "never moves back");
        let sweeping = Floor::new(Duration::ZERO);
        sweeping.claimed(10_000_000);
        assert_eq!(sweeping.start(), None, "a due sweep starts from the beginning");
    }
}
