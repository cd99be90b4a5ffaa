//! The notification worker's fault flag, switched while the shop runs (docs/faults.md):
//! with `receiver_down` on, every webhook delivery fails as a refused connection does,
//! before any HTTP call, so the circuit breaker opens and notifications wait in the inbox
//! (snoozed, not dead) until the flag is off and the breaker's probe succeeds.

use conveyor_platform::faults::Flag;

/// The notification service's fault flags; 0 (off) unless an operator sets them.
pub static FLAGS: [Flag; 1] = [Flag {
    name: "receiver_down",
    description: "1: the worker treats the webhook receiver as down (each delivery fails as a refused connection would), so the circuit breaker opens and notifications wait; 0: delivered again.",
    min: 0.0,
    max: 1.0,
    integer: true,
}];

/// What a delivery fails with while `receiver_down` is on.
pub const REFUSED: &str = "connection refused (simulated: the fault flag receiver_down is on)";
