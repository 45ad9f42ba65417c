//! Stopping a run: an interrupt (Ctrl-C, SIGTERM) or the run's own abort (a full disk, a
//! stall) ends listing and fetching; what was fetched is still written or cleanly dropped.

/// Asks a running copy to stop: listing and fetching end, files already fetched are still
/// written (or fail cleanly), and the summary says the run was interrupted.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: tokio::sync::watch::Receiver<bool>,
    /// The run's own stop (a full disk: [`crate::report::Report::abort`]).
    abort: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Stop {
    /// A stop and the handle that triggers it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stop { rx, abort: None })
    }

    /// Also stops when `abort` turns true (the run's own stop: [`crate::report::Report::abort`]).
    pub fn abort_with(&mut self, abort: tokio::sync::watch::Receiver<bool>) {
        self.abort = Some(abort);
    }

    /// A stop nobody can request (a run to the end).
    pub fn never() -> Stop {
        Stop::new().1
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        *self.rx.borrow() || self.abort.as_ref().is_some_and(|a| *a.borrow())
    }

    /// Resolves once a stop is requested (never, if the triggers are dropped unused).
    pub async fn requested_wait(&mut self) {
        async fn wait(rx: &mut tokio::sync::watch::Receiver<bool>) {
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        match &mut self.abort {
            None => wait(&mut self.rx).await,
            Some(abort) => tokio::select! {
                () = wait(&mut self.rx) => {}
                () = wait(abort) => {}
            },
        }
    }
}
