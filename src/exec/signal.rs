//! Stopping a run: the one cancellation handle the scheduler selects on, and the listener
//! that turns SIGINT/SIGTERM/SIGHUP into stop requests (the first stops the stack in order,
//! the second kills it at once). `razar down` from another terminal sends SIGTERM, so it
//! arrives here too.

use std::sync::Arc;

use tokio::sync::watch;

/// Why the run is being stopped.
///
/// The order matters: a request can only escalate (`Finished` < `Signal` < `SecondSignal`),
/// never step back, so a late "finished" cannot undo a Ctrl-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CancelReason {
    /// Nothing more to do (`--until-ready` reached its goal, nothing left to supervise):
    /// stop what runs, in order.
    Finished,
    /// SIGINT, SIGTERM, SIGHUP or `razar down`: stop in reverse dependency order.
    Signal,
    /// A second signal: SIGKILL every process group now.
    SecondSignal,
}

/// A cancellation handle shared by the signal listener and the scheduler.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<CancelReason>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Asks the run to stop for `reason`, unless a stronger reason was already given.
    pub fn request(&self, reason: CancelReason) {
        self.tx.send_if_modified(|current| {
            if current.is_none_or(|c| c < reason) {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// The strongest reason requested so far.
    pub fn reason(&self) -> Option<CancelReason> {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<CancelReason>> {
        self.tx.subscribe()
    }

    /// Resolves once a forced stop (a second signal) is requested.
    pub fn forced(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            // An error means every sender is gone: nobody can force any more.
            if rx
                .wait_for(|r| *r >= Some(CancelReason::SecondSignal))
                .await
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records one more termination signal: the first asks for an orderly stop, any later
    /// one forces.
    pub fn signal_received(&self) {
        let next = if self.reason() >= Some(CancelReason::Signal) {
            CancelReason::SecondSignal
        } else {
            CancelReason::Signal
        };
        self.request(next);
    }
}

/// The SIGINT, SIGTERM and SIGHUP handlers of a run.
pub struct Listener {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Listener {
    /// Installs the handlers now (inside a tokio runtime), so a signal that arrives before
    /// the run's first await is not lost to the default action (which would kill razar and
    /// leave its stack running).
    pub fn install() -> std::io::Result<Listener> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Listener {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Feeds every signal to `shutdown`, until the future is dropped.
    pub async fn listen(mut self, shutdown: Shutdown) -> std::convert::Infallible {
        loop {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
                _ = self.hup.recv() => {}
            }
            shutdown.signal_received();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_only_escalate() {
        let shutdown = Shutdown::new();
        assert_eq!(shutdown.reason(), None);
        shutdown.request(CancelReason::Signal);
        shutdown.request(CancelReason::Finished);
        assert_eq!(shutdown.reason(), Some(CancelReason::Signal));
    }

    #[test]
    fn the_second_signal_forces() {
        let shutdown = Shutdown::new();
        shutdown.request(CancelReason::Finished);
        shutdown.signal_received();
        assert_eq!(shutdown.reason(), Some(CancelReason::Signal));
        shutdown.signal_received();
        assert_eq!(shutdown.reason(), Some(CancelReason::SecondSignal));
    }

    #[tokio::test]
    async fn forced_resolves_only_on_a_second_signal() {
        let shutdown = Shutdown::new();
        let forced = shutdown.forced();
        tokio::pin!(forced);
        shutdown.signal_received();
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), &mut forced).await;
        assert!(early.is_err());
        shutdown.signal_received();
        tokio::time::timeout(std::time::Duration::from_secs(5), forced)
            .await
            .expect("forced after the second signal");
    }
}
