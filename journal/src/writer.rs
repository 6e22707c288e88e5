//! The one thread that owns the journal. Everyone else holds a [`JournalHandle`] and
//! sends it closures; async code awaits the answer ([`JournalHandle::call`]), reader
//! jobs (blocking threads) wait for it ([`JournalHandle::call_blocking`]).
//!
//! SQLite calls block and must not interleave on one connection, so a thread, not a
//! task. After [`JournalHandle::close`] the thread checkpoints the WAL, closes the
//! database and every later call fails with [`JournalError::Closed`].

use super::{JResult, Journal};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Why a journal call failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal is closed")]
    Closed,
    #[error("{0}")]
    Db(#[from] rusqlite::Error),
}

type Work = Box<dyn FnOnce(&mut Journal) + Send>;

enum Request {
    Run(Work),
    Close(mpsc::Sender<()>),
}

/// A handle to the journal thread (cheap to clone).
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Request>,
}

impl JournalHandle {
    /// Start the thread owning `journal`.
    pub fn spawn(journal: Journal) -> std::io::Result<(JournalHandle, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let mut j = journal;
                for req in rx {
                    match req {
                        Request::Run(work) => work(&mut j),
                        Request::Close(done) => {
                            if let Err(e) = j.checkpoint() {
                                tracing::warn!("journal checkpoint at close: {e}");
                            }
                            drop(j);
                            let _ = done.send(());
                            // the receiver goes with this thread: later calls fail
                            return;
                        }
                    }
                }
            })?;
        Ok((JournalHandle { tx }, thread))
    }

    /// Run `f` on the journal thread and await its answer.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> JResult<R> + Send + 'static,
    ) -> Result<R, JournalError> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |j| {
            let _ = otx.send(f(j));
        });
        self.tx
            .send(Request::Run(work))
            .map_err(|_| JournalError::Closed)?;
        match orx.await {
            Ok(r) => r.map_err(JournalError::Db),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Run `f` on the journal thread and wait for its answer (from blocking code only:
    /// reader jobs, key providers).
    pub fn call_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> JResult<R> + Send + 'static,
    ) -> Result<R, JournalError> {
        let (otx, orx) = mpsc::sync_channel(1);
        let work: Work = Box::new(move |j| {
            let _ = otx.send(f(j));
        });
        self.tx
            .send(Request::Run(work))
            .map_err(|_| JournalError::Closed)?;
        match orx.recv() {
            Ok(r) => r.map_err(JournalError::Db),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Finish the calls already queued, checkpoint and close. Later calls fail.
    pub async fn close(&self) {
        let (dtx, drx) = mpsc::channel();
        if self.tx.send(Request::Close(dtx)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || drx.recv()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_and_fail_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let (h, thread) =
            JournalHandle::spawn(Journal::open(&dir.path().join("j.db")).unwrap()).unwrap();
        assert_eq!(h.call(|j| j.next_seq()).await.unwrap(), 1);
        let h2 = h.clone();
        let n = tokio::task::spawn_blocking(move || h2.call_blocking(|j| j.next_seq()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 2);
        // the pre-call check the dispatcher runs
        h.call(|j| j.probe_write()).await.unwrap();
        h.close().await;
        assert!(matches!(
            h.call(|j| j.next_seq()).await,
            Err(JournalError::Closed)
        ));
        drop(h);
        thread.join().unwrap();
        // the WAL was folded back: the file alone holds the data
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.check().unwrap();
    }
}
