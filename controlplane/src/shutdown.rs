//! Stopping the control plane: the one stop signal every long-lived task receives, and the
//! background tasks that are joined, within a deadline, when it is given.
//!
//! The signal is [`App::stopping`](crate::app::App::stopping), a `watch<bool>` set once: the
//! API's graceful shutdown, the configuration streams and the background sweeps all wait on it,
//! so one `send_replace(true)` stops everything, and a task started after the stop sees it at
//! once. A task must return promptly when it fires and must never wait on anything unbounded
//! in between; a task still running at the deadline is aborted and named in the log.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The receiving end of the stop signal.
#[derive(Debug, Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    pub fn new(receiver: watch::Receiver<bool>) -> Self {
        Stopping(receiver)
    }

    /// Returns once the control plane stops, at once when it has already. A dropped sender
    /// counts as a stop: nothing could give the signal any more.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// The background tasks of a running control plane (sweeps, purges, the snapshot writer),
/// each with a name for the log.
#[derive(Default)]
pub struct BackgroundTasks {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// How the background tasks ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Joined {
    /// Tasks that returned (or failed) before the deadline.
    pub ended: Vec<&'static str>,
    /// Tasks still running at the deadline, aborted.
    pub cut_off: Vec<&'static str>,
}

impl BackgroundTasks {
    /// Spawns `task` on the current runtime. It must return once the stop signal fires.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Waits for every task to end, until `deadline`; the ones still running then are aborted.
    pub async fn join_until(self, deadline: Instant) -> Joined {
        let mut joined = Joined::default();
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => joined.ended.push(name),
                Ok(Err(e)) => {
                    tracing::error!(task = name, error = %e, "a control-plane task failed");
                    joined.ended.push(name);
                }
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        "a control-plane task did not stop in time; aborting it"
                    );
                    handle.abort();
                    joined.cut_off.push(name);
                }
            }
        }
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn tasks_that_heed_the_signal_end_and_others_are_cut_off() {
        let signal = watch::Sender::new(false);
        let mut tasks = BackgroundTasks::default();
        let mut stopping = Stopping::new(signal.subscribe());
        tasks.spawn("heeds", async move { stopping.wait().await });
        tasks.spawn("ignores", std::future::pending());
        signal.send_replace(true);
        let started = Instant::now();
        let joined = tasks
            .join_until(Instant::now() + Duration::from_millis(200))
            .await;
        assert_eq!(
            joined,
            Joined {
                ended: vec!["heeds"],
                cut_off: vec!["ignores"],
            }
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_task_started_after_the_stop_sees_it_at_once() {
        let signal = watch::Sender::new(false);
        signal.send_replace(true);
        let mut stopping = Stopping::new(signal.subscribe());
        tokio::time::timeout(Duration::from_secs(1), stopping.wait())
            .await
            .expect("returns at once");
    }
}
