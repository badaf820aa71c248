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
        let next = match self.reason() {
            None | Some(CancelReason::Finished) if !self.signalled() => CancelReason::Signal,
            _ => CancelReason::SecondSignal,
        };
        self.request(next);
    }

    fn signalled(&self) -> bool {
        self.reason() >= Some(CancelReason::Signal)
    }
}

/// Listens for SIGINT, SIGTERM and SIGHUP until the future is dropped, feeding `shutdown`.
/// Fails only if the handlers cannot be installed.
pub async fn listen(shutdown: Shutdown) -> std::io::Result<std::convert::Infallible> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        shutdown.signal_received();
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
