//! One shutdown signal for a whole process: every thread and task of both planes holds a
//! [`Shutdown`] and stops when the process's [`ShutdownTrigger`] fires, by the deadline it
//! carries. Whoever started a thread or task joins it on exit.
//!
//! The deadline travels with the signal, so each part spends the same grace period its own
//! way: the front ends stop taking requests and let those in flight finish, the shipper
//! uploads what the WAL holds, the configuration streams and sweeps just end. Order between
//! them comes from the data, not from the order of the calls: the shipper keeps going until
//! the WAL's writer has closed (every front end is done appending) and everything is
//! uploaded, or the deadline passes.
//!
//! The signal is a `tokio::sync::watch`, which wakes any executor (tokio-uring, tokio)
//! and can be polled from a plain thread.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

/// Fires the process's shutdown. Dropping it without firing also stops every holder of a
/// [`Shutdown`], at once (a deadline of "now"), so that a failed start never leaves threads
/// behind.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<Option<Instant>>,
}

/// What every thread and task holds: whether to stop, and by when.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<Option<Instant>>,
    /// The sender of a signal that never fires, kept alive with it: a dropped sender would
    /// read as "stop now".
    _never: Option<Arc<watch::Sender<Option<Instant>>>>,
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownTrigger {
    pub fn new() -> Self {
        ShutdownTrigger {
            sender: watch::Sender::new(None),
        }
    }

    /// A signal for one more thread or task.
    pub fn signal(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
            _never: None,
        }
    }

    /// Asks everything to stop by `deadline`. Only the first call counts: a second Ctrl-C does
    /// not move the deadline.
    pub fn trigger(&self, deadline: Instant) {
        self.sender.send_if_modified(|held| {
            if held.is_some() {
                return false;
            }
            *held = Some(deadline);
            true
        });
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.trigger(Instant::now());
    }
}

impl Shutdown {
    /// A signal that never fires, for parts run on their own (unit tests, benchmarks).
    pub fn never() -> Shutdown {
        let (sender, receiver) = watch::channel(None);
        Shutdown {
            receiver,
            _never: Some(Arc::new(sender)),
        }
    }

    /// The deadline, once shutdown has been asked for.
    pub fn deadline(&self) -> Option<Instant> {
        *self.receiver.borrow()
    }

    /// Whether shutdown has been asked for.
    pub fn is_requested(&self) -> bool {
        self.deadline().is_some()
    }

    /// Waits until shutdown is asked for and returns its deadline (now, if the trigger is
    /// gone without firing).
    pub async fn requested(&mut self) -> Instant {
        match self.receiver.wait_for(Option::is_some).await {
            Ok(deadline) => deadline.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_signal_sees_the_first_deadline_only() {
        let trigger = ShutdownTrigger::new();
        let early = trigger.signal();
        assert!(!early.is_requested());
        let deadline = Instant::now() + Duration::from_secs(5);
        trigger.trigger(deadline);
        trigger.trigger(deadline + Duration::from_secs(60));
        let late = trigger.signal();
        assert_eq!(early.deadline(), Some(deadline));
        assert_eq!(late.deadline(), Some(deadline));
    }

    #[test]
    fn a_waiting_task_wakes_and_a_dropped_trigger_stops_everyone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let trigger = ShutdownTrigger::new();
        let mut signal = trigger.signal();
        let waiter = std::thread::spawn(move || runtime.block_on(signal.requested()));
        let deadline = Instant::now() + Duration::from_secs(5);
        trigger.trigger(deadline);
        assert_eq!(waiter.join().expect("join"), deadline);

        let trigger = ShutdownTrigger::new();
        let signal = trigger.signal();
        drop(trigger);
        assert!(
            signal.is_requested(),
            "a failed start stops what it started"
        );
    }

    #[test]
    fn a_never_signal_stays_quiet() {
        assert!(!Shutdown::never().is_requested());
    }
}
