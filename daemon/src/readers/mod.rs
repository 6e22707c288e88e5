//! Readers: one task owns each reader and its card transport; API requests for a
//! reader queue to that task in arrival order and wait at most the configured limit for
//! their turn (then `READER_BUSY`).
//!
//! A job is a closure run with the reader's [`Card`], so card operations are plain
//! blocking functions. The reader task is a thread of its own (PC/SC calls block) that
//! runs one job at a time, so nothing interleaves with it. Once a job has started it
//! runs to the end, whatever happens to the caller (a client that disconnects mid-debit
//! does not cut the debit short).
//!
//! Each reader task keeps the presentation cache of its card ([`presentation`]): when a
//! card is inserted a background job reads it (policy records first, then INTERNAL
//! AUTHENTICATE, then the rest) and gives way, between those steps, to any job that is
//! waiting.
//!
//! Readers come and go at run time: a [`ReaderSource`] (PC/SC or simulated) runs on its
//! own thread and reports them; [`Readers`] keeps the list, the card presence and
//! broadcasts [`Event`]s.

pub mod pcsc;
pub mod presentation;
pub mod serial;
pub mod sim;
pub mod source;

use crate::error::{from_driver, ApiError, ErrorKind};
use crate::events::Event;
pub use presentation::{Card, Presentation};
use source::{Connector, LivePresence, ReaderSource, SourceEvent};
use sscard_driver::transport::{CardTransport, TransportError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;

type JobFn = Box<dyn FnOnce(Result<&mut Card<'_>, TransportError>) + Send>;

struct Job {
    state: Arc<AtomicU8>,
    run: JobFn,
    /// A background job (the read at insertion): it does not count as waiting work.
    background: bool,
}

/// What a reader's handles and its task share.
struct Shared {
    /// Card insertions and removals the source reported (a move means a new
    /// presentation).
    changes: AtomicU64,
    /// Jobs of callers queued and not yet started.
    waiting: AtomicUsize,
    /// The reader has a PIN pad: what the source said (a serial model's), or what the
    /// reader answered on the card's connection (PC/SC part 10 features, asked when a
    /// card is connected).
    pin_pad: AtomicBool,
}

/// Given to a background job: whether a caller's job is waiting for the reader, so
/// that the background work should stop at its next step.
#[derive(Clone)]
pub struct Waiting(Arc<Shared>);

impl Waiting {
    pub fn any(&self) -> bool {
        self.0.waiting.load(Ordering::SeqCst) > 0
    }
}

/// A reader as the rest of the daemon sees it (cheap to clone).
#[derive(Clone)]
pub struct ReaderHandle {
    pub name: String,
    pub backend: &'static str,
    /// The slot of a multi-slot (serial) reader.
    pub slot: Option<u8>,
    jobs: mpsc::UnboundedSender<Job>,
    tracked: Arc<Mutex<(bool, Vec<u8>)>>,
    live: Option<LivePresence>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReaderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderHandle")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl ReaderHandle {
    /// The reader has a PIN pad (api.md 1.1): a call without `pin` has the holder type
    /// on it. A PC/SC reader's pad is known once a card has been connected in it.
    pub fn pin_pad(&self) -> bool {
        self.shared.pin_pad.load(Ordering::SeqCst)
    }

    /// Whether a card is in the reader, and its ATR.
    pub fn presence(&self) -> (bool, Vec<u8>) {
        match &self.live {
            Some(f) => f(),
            None => self.tracked.lock().map(|g| g.clone()).unwrap_or_default(),
        }
    }

    /// Run `f` with this reader's card, after the jobs queued before it. If its turn
    /// has not come within `wait`, it is withdrawn and the answer is `READER_BUSY`; once
    /// started it runs to the end.
    pub async fn run<R: Send + 'static>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut Card<'_>) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let (otx, mut orx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let job = Job {
            state: state.clone(),
            run: Box::new(move |card| {
                let r = match card {
                    Ok(c) => f(c),
                    Err(e) => Err(from_driver(&e)),
                };
                let _ = otx.send(r);
            }),
            background: false,
        };
        let gone = || ApiError::kind(ErrorKind::NoReader, "the reader went away");
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(gone());
        }
        tokio::select! {
            r = &mut orx => return r.unwrap_or_else(|_| Err(gone())),
            _ = tokio::time::sleep(wait) => {}
        }
        if state
            .compare_exchange(WAITING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::kind(
                ErrorKind::ReaderBusy,
                format!(
                    "reader {} stayed busy for {} ms",
                    self.name,
                    wait.as_millis()
                ),
            ));
        }
        orx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Queue background work on this reader's card (the read at insertion): it runs
    /// after the jobs queued before it, nobody waits for it, and `f` is told through
    /// [`Waiting`] when a caller's job is queued behind it.
    pub fn background(&self, f: impl FnOnce(&mut Card<'_>, &Waiting) + Send + 'static) {
        let waiting = Waiting(self.shared.clone());
        let job = Job {
            state: Arc::new(AtomicU8::new(WAITING)),
            run: Box::new(move |card| {
                if let Ok(c) = card {
                    f(c, &waiting)
                }
            }),
            background: true,
        };
        let _ = self.jobs.send(job);
    }
}

/// The transport of one reader, (re)connected as needed, and its presentation cache.
struct Slot {
    connector: Box<dyn Connector>,
    transport: Option<Box<dyn CardTransport>>,
    cache: Option<Presentation>,
    /// [`Shared::changes`] when the cache was last known good.
    changes_seen: u64,
    shared: Arc<Shared>,
    /// The last job ended with a transport error (or none ran yet): look at the
    /// connection before the next one.
    suspect: bool,
}

impl Slot {
    /// The connected card. The cache is dropped when the source reported the card
    /// inserted or removed since the last job. After a job that ended well the
    /// connection is used as it is: a card removed or reset meanwhile shows at the next
    /// transaction, which takes it up again and drops the cache
    /// ([`Card::open`]). After a transport error the connection is looked at first: kept
    /// if its card is still there, else the card taken up again (`SCARD_W_REMOVED_CARD`
    /// / `SCARD_W_RESET_CARD`), else a new connection, the cache dropped in both.
    fn ensure(&mut self) -> Result<(), TransportError> {
        let changes = self.shared.changes.load(Ordering::SeqCst);
        if changes != self.changes_seen {
            self.cache = None;
            self.changes_seen = changes;
        }
        if self.transport.is_some() && !self.suspect {
            return Ok(());
        }
        let same = match self.transport.as_mut() {
            Some(t) => match t.status() {
                Ok(s) if s.present => true,
                Ok(_) => false,
                Err(_) => {
                    self.cache = None;
                    t.reattach().is_ok()
                }
            },
            None => false,
        };
        if !same {
            self.cache = None;
            self.transport = None;
            let t = self.connector.connect()?;
            if t.capabilities().pin_pad {
                self.shared.pin_pad.store(true, Ordering::SeqCst);
            }
            self.transport = Some(t);
        }
        self.suspect = false;
        Ok(())
    }

    /// Run one job on the card, then settle the cache: dropped after a transport error;
    /// after a command that wrote the card, dropped and the card reset, so that every
    /// program sharing the reader sees a new presentation.
    fn run(&mut self, job: JobFn) {
        if let Err(e) = self.ensure() {
            self.cache = None;
            job(Err(e));
            return;
        }
        let Slot {
            transport, cache, ..
        } = self;
        let Some(t) = transport.as_mut() else {
            *cache = None;
            job(Err(TransportError::NoCard));
            return;
        };
        let mut card = Card::new(t.as_mut(), cache);
        job(Ok(&mut card));
        let (failed, wrote) = (card.failed(), card.wrote());
        if failed || wrote {
            *cache = None;
        }
        self.suspect = failed;
        if wrote {
            if let Err(e) = t.reset() {
                tracing::debug!("reset after a card write: {e}");
            }
        }
    }
}

/// The reader's task: a thread of its own (from tokio's blocking pool, for as long as
/// the reader is there) that takes jobs in order and runs each on the card, so a job
/// starts with one wake-up and PC/SC calls block only this reader.
fn reader_task(
    name: String,
    connector: Box<dyn Connector>,
    shared: Arc<Shared>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut slot = Slot {
        connector,
        transport: None,
        cache: None,
        changes_seen: shared.changes.load(Ordering::SeqCst),
        shared: shared.clone(),
        suspect: true,
    };
    while let Some(job) = jobs.blocking_recv() {
        let started = job
            .state
            .compare_exchange(WAITING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if !started {
            continue; // its caller gave up waiting (and counted itself out)
        }
        if !job.background {
            shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        let run = job.run;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.run(run)));
        if outcome.is_err() {
            // the caller sees its answer channel dropped; start afresh
            tracing::error!(reader = %name, "a card job panicked");
            slot.transport = None;
            slot.cache = None;
        }
    }
    tracing::debug!(reader = %name, "reader task ends");
}

/// The readers there are now.
pub struct Readers {
    map: RwLock<BTreeMap<String, ReaderHandle>>,
    events: broadcast::Sender<Event>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl Readers {
    /// An empty list; `events` is where reader and card events are broadcast.
    pub fn new(events: broadcast::Sender<Event>) -> Arc<Readers> {
        Arc::new(Readers {
            map: RwLock::new(BTreeMap::new()),
            events,
            tasks: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Every reader, by name.
    pub fn list(&self) -> Vec<ReaderHandle> {
        self.map
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<ReaderHandle> {
        self.map.read().ok().and_then(|m| m.get(name).cloned())
    }

    /// The reader a call names, or else the only one holding a card.
    pub fn pick(&self, name: Option<&str>) -> Result<ReaderHandle, ApiError> {
        if let Some(n) = name {
            return self.get(n).ok_or_else(|| {
                ApiError::kind(ErrorKind::NoReader, format!("no reader named {n:?}"))
            });
        }
        let list = self.list();
        if list.is_empty() {
            return Err(ApiError::kind(
                ErrorKind::NoReader,
                "no reader is connected",
            ));
        }
        let mut with: Vec<ReaderHandle> = list.into_iter().filter(|r| r.presence().0).collect();
        match with.len() {
            0 => Err(ApiError::kind(ErrorKind::NoCard, "no reader holds a card")),
            1 => with
                .pop()
                .ok_or_else(|| ApiError::kind(ErrorKind::NoCard, "no reader holds a card")),
            n => Err(ApiError::kind(
                ErrorKind::AmbiguousReader,
                format!("{n} readers hold a card; name one with \"reader\""),
            )),
        }
    }

    fn apply(&self, e: SourceEvent) {
        let event = match e {
            SourceEvent::ReaderAdded {
                name,
                backend,
                connector,
                live,
                slot,
                pin_pad,
            } => {
                let (tx, rx) = mpsc::unbounded_channel();
                let shared = Arc::new(Shared {
                    changes: AtomicU64::new(0),
                    waiting: AtomicUsize::new(0),
                    pin_pad: AtomicBool::new(pin_pad),
                });
                let (n, sh) = (name.clone(), shared.clone());
                let task = tokio::task::spawn_blocking(move || reader_task(n, connector, sh, rx));
                if let Ok(mut t) = self.tasks.lock() {
                    t.retain(|h| !h.is_finished());
                    t.push(task);
                }
                let h = ReaderHandle {
                    name: name.clone(),
                    backend,
                    slot,
                    jobs: tx,
                    tracked: Arc::new(Mutex::new((false, Vec::new()))),
                    live,
                    shared,
                };
                if let Ok(mut m) = self.map.write() {
                    m.insert(name.clone(), h);
                }
                tracing::info!(reader = %name, backend, "reader added");
                Event::ReaderAdded {
                    reader: name,
                    backend: backend.to_string(),
                }
            }
            SourceEvent::ReaderRemoved(name) => {
                if let Ok(mut m) = self.map.write() {
                    m.remove(&name);
                }
                tracing::info!(reader = %name, "reader removed");
                Event::ReaderRemoved { reader: name }
            }
            SourceEvent::CardInserted { reader, atr } => {
                if let Some(h) = self.get(&reader) {
                    h.shared.changes.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut g) = h.tracked.lock() {
                        *g = (true, atr.clone());
                    }
                }
                Event::CardInserted { reader, atr }
            }
            SourceEvent::CardRemoved { reader } => {
                if let Some(h) = self.get(&reader) {
                    h.shared.changes.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut g) = h.tracked.lock() {
                        *g = (false, Vec::new());
                    }
                }
                Event::CardRemoved { reader }
            }
        };
        let _ = self.events.send(event);
    }

    /// Take readers from `source` (called once for each source: PC/SC or simulated, and
    /// the serial readers): its first report is applied before this returns (so the
    /// readers there are at start are known), the rest as they come.
    pub async fn start(self: &Arc<Self>, mut source: Box<dyn ReaderSource>) {
        let first = tokio::task::spawn_blocking(move || {
            let r = source.poll(Duration::ZERO);
            (source, r)
        })
        .await;
        let Ok((mut source, first)) = first else {
            tracing::error!("reader source panicked at start");
            return;
        };
        match first {
            Ok(ev) => ev.into_iter().for_each(|e| self.apply(e)),
            Err(e) => tracing::warn!("readers: {e}; retrying"),
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<SourceEvent>();
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("reader source".into())
            .spawn(move || {
                let mut last_error = String::new();
                while !stop.load(Ordering::Relaxed) {
                    match source.poll(Duration::from_millis(250)) {
                        Ok(ev) => {
                            last_error.clear();
                            for e in ev {
                                if tx.send(e).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let m = e.to_string();
                            if m != last_error {
                                tracing::warn!("readers: {m}; retrying");
                                last_error = m;
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the reader source thread: {e}");
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                match me.upgrade() {
                    Some(r) => r.apply(e),
                    None => break,
                }
            }
        });
    }

    /// Stop taking readers, let every queued job finish (at most `grace`), and end the
    /// reader tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut m) = self.map.write() {
            m.clear(); // drops the job senders: each task ends after its queue
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        let all = futures_join(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("a card operation did not finish within {grace:?} of shutdown");
        }
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sscard_emulator::card::EmulatedCard;

    async fn readers_with(sim: &sim::SimControl) -> Arc<Readers> {
        let (tx, _) = broadcast::channel(16);
        let r = Readers::new(tx);
        r.start(Box::new(sim.source())).await;
        r
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_queue_in_order_and_time_out_as_busy() {
        let sim = sim::SimControl::new();
        sim.add_reader_with_card("r", Box::new(EmulatedCard::default_test_card()));
        let readers = readers_with(&sim).await;
        let r = readers.pick(None).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let slow = {
            let (r, o) = (r.clone(), order.clone());
            tokio::spawn(async move {
                r.run(Duration::from_secs(5), move |_| {
                    std::thread::sleep(Duration::from_millis(300));
                    o.lock().unwrap().push(1);
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let o = order.clone();
        let busy = r
            .run(Duration::from_millis(50), move |_| {
                o.lock().unwrap().push(2);
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(busy.kind, Some(ErrorKind::ReaderBusy));
        let o = order.clone();
        r.run(Duration::from_secs(5), move |_| {
            o.lock().unwrap().push(3);
            Ok(())
        })
        .await
        .unwrap();
        slow.await.unwrap().unwrap();
        assert_eq!(
            *order.lock().unwrap(),
            [1, 3],
            "the withdrawn job never ran"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn picking_readers() {
        let sim = sim::SimControl::new();
        let readers = readers_with(&sim).await;
        assert_eq!(
            readers.pick(None).unwrap_err().kind,
            Some(ErrorKind::NoReader)
        );
        sim.add_reader("a");
        sim.add_reader("b");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            readers.pick(None).unwrap_err().kind,
            Some(ErrorKind::NoCard)
        );
        assert_eq!(
            readers.pick(Some("c")).unwrap_err().kind,
            Some(ErrorKind::NoReader)
        );
        sim.slot("a")
            .unwrap()
            .insert(Box::new(EmulatedCard::default_test_card()));
        assert_eq!(readers.pick(None).unwrap().name, "a");
        sim.slot("b")
            .unwrap()
            .insert(Box::new(EmulatedCard::default_test_card()));
        assert_eq!(
            readers.pick(None).unwrap_err().kind,
            Some(ErrorKind::AmbiguousReader)
        );
        // a named reader without a card: the job is told so
        sim.slot("b").unwrap().remove();
        let e = readers
            .pick(Some("b"))
            .unwrap()
            .run(Duration::from_secs(1), |c| {
                sscard_driver::Transaction::begin(c).map_err(|e| from_driver(&e))?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind, Some(ErrorKind::NoCard));
    }
}
