//! The control plane's background tasks (sweeps, purges, the snapshot writer), joined within
//! the shutdown deadline.
//!
//! Every long-lived task of the control plane waits on the process's one shutdown signal
//! ([`sluice_storage::shutdown::Shutdown`], from [`App::stop_signal`](crate::app::App::stop_signal)):
//! the API's graceful shutdown, the configuration streams and these tasks. A task must return
//! promptly when it fires and must never wait on anything unbounded in between; a task still
//! running at the deadline is aborted and named in the log.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    use sluice_storage::shutdown::ShutdownTrigger;
    use std::time::Duration;

    #[tokio::test]
    async fn tasks_that_heed_the_signal_end_and_others_are_cut_off() {
        let trigger = ShutdownTrigger::new();
        let mut tasks = BackgroundTasks::default();
        let mut stopping = trigger.signal();
        tasks.spawn("heeds", async move {
            stopping.requested().await;
        });
        tasks.spawn("ignores", std::future::pending());
        trigger.trigger(std::time::Instant::now());
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
}
