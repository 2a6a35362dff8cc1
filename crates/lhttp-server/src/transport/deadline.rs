//! [`Deadline`]: the clock of a message a client has begun and not finished
//! (`limits.message_timeout_ms`), kept by every transport that reads a byte stream.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// The deadline of a message the client has begun and not finished, on a clock of its own: a
/// client that stops in the middle of a frame sends nothing that would wake the connection
/// otherwise.
///
/// Cheap on the normal path: looked at only when a read finds the socket empty (once per
/// wake-up, not per message). The clock is read when a new message is found unfinished then;
/// the timer is created if there is none, and left running when the message completes; when
/// it fires it is reset for the message unfinished then, if any, or dropped. So a connection
/// whose messages span reads all the time resets its timer at most once per timeout, and one
/// with nothing unfinished holds none. Boxed, and kept in the transport rather than in the
/// session: the session's future is every connection's largest allocation, and 72 bytes more
/// there had taken an idle connection from 3.69 to 4.30 KiB (tokio and the allocator round a
/// task up).
#[derive(Debug, Default)]
pub(crate) struct Deadline {
    /// `None` while there is no message to watch.
    overdue: Option<Box<Overdue>>,
}

#[derive(Debug)]
struct Overdue {
    /// When the message unfinished now was first seen so, and the count of completed items
    /// then (another count means another message); `None` once it completed.
    since: Option<(Instant, u32)>,
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    /// Called when a read found the socket empty: `unfinished` says whether part of a message
    /// is held, `completed` counts the messages completed so far (wrapping; while it does not
    /// move, the unfinished message is the same one). Completes once that message is past
    /// `timeout`; never with no timeout.
    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        unfinished: bool,
        completed: u32,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let Some(timeout) = timeout else {
            return Poll::Pending;
        };
        if unfinished {
            match &mut self.overdue {
                None => {
                    let now = Instant::now();
                    self.overdue = Some(Box::new(Overdue {
                        since: Some((now, completed)),
                        timer: Box::pin(tokio::time::sleep_until(later(now, timeout))),
                    }));
                }
                Some(overdue) if overdue.since.map(|(_, m)| m) != Some(completed) => {
                    overdue.since = Some((Instant::now(), completed));
                }
                Some(_) => {}
            }
        } else if let Some(overdue) = &mut self.overdue {
            overdue.since = None;
        }
        loop {
            let Some(overdue) = &mut self.overdue else {
                return Poll::Pending;
            };
            ready!(overdue.timer.as_mut().poll(cx));
            let Some((since, _)) = overdue.since else {
                self.overdue = None;
                return Poll::Pending;
            };
            let due = later(since, timeout);
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            // Set for a message that has since completed: again, for the one unfinished now
            // (polled once more to be woken).
            overdue.timer.as_mut().reset(due);
        }
    }
}

/// `by` after `at`; a duration too long for the clock (a timeout configured in centuries) is
/// a century, never an overflow.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}
