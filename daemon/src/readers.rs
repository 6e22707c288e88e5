//! One thread per reader owns that reader's card connection; API requests for a reader
//! queue to it in arrival order (a channel) and wait at most the configured limit for
//! their turn (then `READER_BUSY`). PC/SC calls block, so readers are threads, not
//! async tasks; the connection tasks await their answers.

use crate::error::ApiError;
use sscard_driver::transport::pcsc::{PcscCard, PcscContext, ShareMode};
use sscard_driver::transport::{CardTransport, TransportError};
use sscard_firmware_tests::sim::SimReader;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a reader thread runs: a closure with the card, or a refusal when it waited too
/// long for its turn.
type Job = Box<dyn FnOnce(Option<&mut dyn CardTransport>) + Send>;

/// The card side of one reader: in-process (simulation) or PC/SC.
pub enum Backend {
    Sim(SimReader),
    Pcsc {
        ctx: PcscContext,
        name: String,
        card: Option<PcscCard>,
    },
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Sim(_) => "sim",
            Backend::Pcsc { .. } => "pcsc",
        }
    }

    /// The connected card, (re)connecting a PC/SC reader when needed.
    fn card(&mut self) -> Result<&mut dyn CardTransport, TransportError> {
        match self {
            Backend::Sim(r) => Ok(r),
            Backend::Pcsc { ctx, name, card } => {
                let alive = match card.as_mut() {
                    Some(c) => c.status().map(|s| s.present).unwrap_or(false),
                    None => false,
                };
                if !alive {
                    *card = None;
                    *card = Some(ctx.connect(name, ShareMode::Shared, None)?);
                }
                card.as_mut()
                    .map(|c| c as &mut dyn CardTransport)
                    .ok_or(TransportError::NoCard)
            }
        }
    }
}

/// A reader as the server sees it.
#[derive(Clone)]
pub struct Reader {
    pub name: String,
    pub backend: &'static str,
    tx: mpsc::Sender<(Instant, Job)>,
    presence: Arc<Mutex<(bool, Vec<u8>)>>,
    sim: Option<sscard_firmware_tests::sim::SimSlot>,
}

impl Reader {
    /// Start the reader's thread.
    pub fn spawn(name: String, mut backend: Backend) -> Reader {
        let (tx, rx) = mpsc::channel::<(Instant, Job)>();
        let kind = backend.kind();
        let sim = match &backend {
            Backend::Sim(r) => Some(r.slot().clone()),
            _ => None,
        };
        let presence = Arc::new(Mutex::new((false, Vec::new())));
        let thread_name = format!("reader {name}");
        let _ = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                for (deadline, job) in rx {
                    if Instant::now() > deadline {
                        job(None);
                        continue;
                    }
                    match backend.card() {
                        Ok(c) => job(Some(c)),
                        Err(e) => {
                            tracing::debug!("reader: {e}");
                            job(None)
                        }
                    }
                }
            });
        Reader {
            name,
            backend: kind,
            tx,
            presence,
            sim,
        }
    }

    /// Card presence and ATR (PC/SC: from the monitor; simulation: the slot).
    pub fn presence(&self) -> (bool, Vec<u8>) {
        if let Some(s) = &self.sim {
            return (s.is_present(), s.with_card(|c| c.atr()).unwrap_or_default());
        }
        self.presence.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn set_presence(&self, present: bool, atr: Vec<u8>) {
        if let Ok(mut g) = self.presence.lock() {
            *g = (present, atr);
        }
    }

    /// The simulated slot, for tests and `--simulate`.
    pub fn sim_slot(&self) -> Option<&sscard_firmware_tests::sim::SimSlot> {
        self.sim.as_ref()
    }

    /// Run `f` on this reader's thread with its card, waiting at most `wait` for the turn.
    pub async fn run<R: Send + 'static>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut dyn CardTransport) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |card| {
            let r = match card {
                Some(c) => f(c),
                None => Err(ApiError::kind(
                    "NO_CARD",
                    "no card in the reader (or its turn did not come)",
                )),
            };
            let _ = otx.send(r);
        });
        let deadline = Instant::now() + wait;
        self.tx
            .send((deadline, job))
            .map_err(|_| ApiError::kind("NO_READER", "reader thread stopped"))?;
        match orx.await {
            Ok(Err(e)) if e.kind == Some("NO_CARD") && Instant::now() > deadline => Err(
                ApiError::kind("READER_BUSY", "the reader stayed busy past the wait limit"),
            ),
            Ok(r) => r,
            Err(_) => Err(ApiError::kind("NO_READER", "reader thread stopped")),
        }
    }
}

/// Start a thread watching PC/SC readers; it keeps `readers` current (new readers get a
/// thread) and their presence.
pub fn watch_pcsc(
    ctx: PcscContext,
    readers: Arc<Mutex<Vec<Reader>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let _ = std::thread::Builder::new()
        .name("pcsc monitor".into())
        .spawn(move || {
            let mut mon = match ctx.monitor() {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("pcsc monitor: {e}");
                    return;
                }
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let events = match mon.wait(Duration::from_millis(500)) {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!("pcsc: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                if events.is_empty() {
                    continue;
                }
                let infos = mon.readers();
                let Ok(mut list) = readers.lock() else { return };
                for info in &infos {
                    if !list.iter().any(|r| r.name == info.name) {
                        let b = Backend::Pcsc {
                            ctx: ctx.clone(),
                            name: info.name.clone(),
                            card: None,
                        };
                        list.push(Reader::spawn(info.name.clone(), b));
                    }
                }
                list.retain(|r| infos.iter().any(|i| i.name == r.name));
                for r in list.iter() {
                    if let Some(i) = infos.iter().find(|i| i.name == r.name) {
                        r.set_presence(i.card_present, i.atr.clone());
                    }
                }
            }
        });
}
