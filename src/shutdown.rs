//! Shutdown: the operating-system signals that end the daemon, and the token its tasks watch.
//!
//! Owns the rules "SIGTERM or SIGINT ends the daemon" and "SIGHUP asks for a reload" (the
//! reload itself is [`crate::reload`]), and a small broadcast token so that the tasks of one
//! daemon stop together without sharing anything with another daemon in the same process.

use tokio::sync::watch;

/// Fires the shutdown of one daemon.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Watches for the shutdown of one daemon; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, unfired shutdown token and its trigger.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every holder of the matching [`Shutdown`] to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once the shutdown has been fired (or its trigger dropped).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// Whether the shutdown has been fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Completes on SIGTERM or SIGINT and says which one arrived.
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// The stream of SIGHUPs (reload requests).
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn firing_reaches_every_clone() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        let mut b = shutdown;
        assert!(!a.is_fired());
        trigger.fire();
        a.wait().await;
        b.wait().await;
        assert!(b.is_fired());
    }

    #[tokio::test]
    async fn a_dropped_trigger_also_stops() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.wait().await;
    }
}
