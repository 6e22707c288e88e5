//! The one thread that owns the journal. Everyone else holds a [`JournalHandle`] and
//! sends it closures; async code awaits the answer ([`JournalHandle::call`]), reader
//! jobs (blocking threads) wait for it ([`JournalHandle::call_blocking`]).
//!
//! SQLite calls block and must not interleave on one connection, so a thread, not a
//! task. After [`JournalHandle::close`] the thread checkpoints the WAL, closes the
//! database and every later call fails with [`JournalError::Closed`].

use super::{JResult, Journal};
use std::sync::{mpsc, Arc, Mutex};
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
    /// The next terminal sequence number to hand out ([`JournalHandle::reserve_seq`]).
    seq: Arc<Mutex<i64>>,
}

impl JournalHandle {
    /// Start the thread owning `journal`.
    pub fn spawn(journal: Journal) -> std::io::Result<(JournalHandle, JoinHandle<()>)> {
        let next = journal.stored_next_seq().map_err(std::io::Error::other)?;
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
        Ok((
            JournalHandle {
                tx,
                seq: Arc::new(Mutex::new(next)),
            },
            thread,
        ))
    }

    /// Reserve a terminal sequence number, in memory (no commit, no wait for the
    /// journal thread): it becomes durable with the payment row that carries it
    /// ([`Journal::insert`]), and that row is durable before any command carrying the
    /// number goes to a card (DEBIT). A number reserved and never followed by its row
    /// never left the terminal, so after a crash it may come again.
    pub fn reserve_seq(&self) -> Result<u32, JournalError> {
        let mut g = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let n = *g;
        let seq = u32::try_from(n)
            .map_err(|_| JournalError::Db(rusqlite::Error::IntegralValueOutOfRange(0, n)))?;
        *g = n + 1;
        Ok(seq)
    }

    /// Run `f` on the journal thread and await its answer.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> JResult<R> + Send + 'static,
    ) -> Result<R, JournalError> {
        self.submit(f).await.unwrap_or(Err(JournalError::Closed))
    }

    /// Queue `f` on the journal thread and return at once: its answer comes on the
    /// receiver, which async code awaits and blocking code waits on
    /// (`blocking_recv`). Calls run in the order they were queued.
    pub fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> JResult<R> + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<Result<R, JournalError>> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |j| {
            let _ = otx.send(f(j).map_err(JournalError::Db));
        });
        // if the thread is gone the work is dropped with its sender, and the receiver
        // reads that as closed
        let _ = self.tx.send(Request::Run(work));
        orx
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
        // each call appends an entry and answers the chain's head: in the order sent
        let append = |j: &mut Journal| {
            j.audit("t", "li", "m", "r", "c", "ok")?;
            Ok(j.audit_head()?.map(|h| h.seq))
        };
        assert_eq!(h.call(append).await.unwrap(), Some(2));
        let h2 = h.clone();
        let n = tokio::task::spawn_blocking(move || h2.call_blocking(append))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, Some(3));
        // the pre-call check the dispatcher runs
        h.call(|j| j.probe_write()).await.unwrap();
        h.close().await;
        assert!(matches!(h.call(append).await, Err(JournalError::Closed)));
        drop(h);
        thread.join().unwrap();
        // the WAL was folded back: the file alone holds the data
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.check().unwrap();
    }

    #[tokio::test]
    async fn reserved_sequences_are_durable_only_with_their_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let start = |path: &std::path::Path| JournalHandle::spawn(Journal::open(path).unwrap());
        let (h, thread) = start(&path).unwrap();
        let c0 = h.call(|j| Ok(j.durable_commits())).await.unwrap();
        assert_eq!((h.reserve_seq().unwrap(), h.reserve_seq().unwrap()), (1, 2));
        let c1 = h.call(|j| Ok(j.durable_commits())).await.unwrap();
        assert_eq!(c1, c0, "a reservation commits nothing");
        h.close().await;
        drop(h);
        thread.join().unwrap();
        // a crash before any row: the numbers never left the terminal and come again
        let (h, thread) = start(&path).unwrap();
        let n = h.reserve_seq().unwrap();
        assert_eq!(n, 1);
        let p = crate::Payment {
            order_id: "A".into(),
            txn_id: format!("650200000001-{n:08}"),
            kind: crate::PaymentKind::Debit,
            status: crate::PaymentStatus::Pending,
            card_id: "C".into(),
            card_number: "A1".into(),
            amount_fen: 1,
            balance_before_fen: 2,
            balance_after_fen: 1,
            counter: 0,
            terminal_id: "650200000001".into(),
            terminal_seq: i64::from(n),
            time: "2026-11-23T10:00:00+08:00".into(),
            tac: String::new(),
            operator: "li".into(),
        };
        let row = p.clone();
        h.call(move |j| j.insert(&row)).await.unwrap();
        h.close().await;
        drop(h);
        thread.join().unwrap();
        let (h, _thread) = start(&path).unwrap();
        assert_eq!(h.reserve_seq().unwrap(), 2, "never again after its row");
        h.close().await;
    }
}
