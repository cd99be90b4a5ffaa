//! The stock worker's fault flag, switched while the shop runs (docs/faults.md): a slowed
//! worker waits before each claim of its inbox, outside any transaction, so its throughput
//! falls and its backlog grows where the dashboards and alerts see it.

use conveyor_platform::faults::{Faults, Flag};
use conveyor_queue::Consumer;

/// The stock service's fault flags; 0 (off) unless an operator sets them.
pub static FLAGS: [Flag; 1] = [Flag {
    name: "slowdown_ms",
    description: "The stock worker pauses this many milliseconds (0 to 60000) before each claim of its inbox, holding no transaction: its throughput falls and its inbox backlog grows.",
    min: 0.0,
    max: 60_000.0,
    integer: true,
}];

/// `consumer`, pausing before each claim as long as `slowdown_ms` says (one atomic read per
/// claim while the flag is off).
pub fn slowed(consumer: Consumer, faults: Faults) -> Consumer {
    consumer.pause_before_claim(move || faults.millis("slowdown_ms"))
}
