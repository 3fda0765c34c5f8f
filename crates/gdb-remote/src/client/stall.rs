//! What the client does when the stub is late with a reply it owes.

use super::*;

/// What a client does when the stub is late with a reply it owes (to a
/// request, an interrupt or a single step): see [`Client::set_stall_policy`].
pub struct StallPolicy {
    /// How long a reply is awaited in all, from when it was asked for (in
    /// place of the reply timeout).
    pub limit: Duration,
    /// How late a reply is when [`Stall::Silent`] is reported (at most
    /// `limit`).
    pub notice: Duration,
    /// Told of a stall as it goes: once a reply is `notice` late, when it
    /// comes after that, and when the wait gives up at `limit`.
    pub report: Box<dyn FnMut(Stall) + Send>,
    /// Looked at, at least every 50 ms, once a reply is a second late:
    /// true ends the wait with [`Error::Aborted`] (a signal, a deadline).
    pub abort: Option<AbortCheck>,
}

/// A stall, as reported to a [`StallPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// No reply for `waited` (the policy's notice); the wait goes on up
    /// to `limit`.
    Silent { waited: Duration, limit: Duration },
    /// The reply came, `after` it was asked for.
    Answered { after: Duration },
    /// No reply for `waited` (the policy's limit): the request fails with
    /// [`Error::Stalled`].
    GaveUp { waited: Duration },
}

/// A reply the stub owes: when it was asked for, and whether its lateness
/// was reported.
pub(super) struct Owed {
    pub(super) asked: Instant,
    pub(super) reported: bool,
}

impl Owed {
    pub(super) fn now() -> Owed {
        Owed {
            asked: Instant::now(),
            reported: false,
        }
    }
}
