//! Serial readers (`[[serial]]` in the configuration, `--serial` on the demo command
//! lines): each port is opened with the driver's serial backend
//! ([`sscard_driver::transport::serial`]) and each of its slots is a reader named
//! `<model> <path> <slot>` (api.md 1.1). The source polls every slot's presence (the
//! reader's card movement notices and GetSlotStatus) and reports cards inserted and
//! removed; a port that goes away (the device unplugged) shows as its readers removed,
//! and it is opened again, and its readers added, when the path comes back.

use super::source::{Connector, ReaderSource, SourceEvent};
use crate::config::SerialConfig;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{CardTransport, TransportError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the slots are looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long a port that could not be opened waits before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// The name of one slot of a serial reader (api.md 1.1).
pub fn reader_name(cfg: &SerialConfig, slot: u8) -> String {
    format!("{} {} {slot}", cfg.model.name(), cfg.path.display())
}

struct SlotConnector {
    reader: Arc<SerialReader>,
    slot: u8,
}

impl Connector for SlotConnector {
    fn connect(&mut self) -> Result<Box<dyn CardTransport>, TransportError> {
        Ok(Box::new(self.reader.connect(self.slot)?))
    }
}

/// One configured port.
struct Port {
    cfg: SerialConfig,
    reader: Option<Arc<SerialReader>>,
    /// Each slot's card (present, ATR) as last reported.
    known: Vec<(bool, Vec<u8>)>,
    next_try: Instant,
    /// The last reason the port could not be opened (logged once per reason).
    last_error: String,
}

impl Port {
    fn changes(&mut self, ev: &mut Vec<SourceEvent>) {
        let now = Instant::now();
        let Some(reader) = self.reader.clone() else {
            if now >= self.next_try {
                self.open(ev);
            }
            return;
        };
        match reader.poll() {
            Ok(slots) => {
                for s in slots {
                    let i = usize::from(s.slot);
                    let Some(k) = self.known.get_mut(i) else {
                        continue;
                    };
                    let name = reader_name(&self.cfg, s.slot);
                    if k.0 && !s.present {
                        ev.push(SourceEvent::CardRemoved { reader: name });
                    } else if !k.0 && s.present {
                        ev.push(SourceEvent::CardInserted {
                            reader: name,
                            atr: s.atr.clone(),
                        });
                    }
                    *k = (s.present, s.atr);
                }
            }
            Err(e) => {
                tracing::warn!(port = %self.cfg.path.display(), "serial reader gone: {e}");
                self.gone(ev);
            }
        }
    }

    fn open(&mut self, ev: &mut Vec<SourceEvent>) {
        let path = self.cfg.path.to_string_lossy().into_owned();
        match SerialReader::open(&path, self.cfg.model) {
            Ok(r) => {
                let r = Arc::new(r);
                tracing::info!(port = %path, model = self.cfg.model.name(), firmware = %r.firmware(), "serial reader opened");
                self.last_error.clear();
                self.known = vec![(false, Vec::new()); usize::from(r.slots())];
                for slot in 0..r.slots() {
                    ev.push(SourceEvent::ReaderAdded {
                        name: reader_name(&self.cfg, slot),
                        backend: "serial",
                        connector: Box::new(SlotConnector {
                            reader: r.clone(),
                            slot,
                        }),
                        live: None,
                    });
                }
                self.reader = Some(r);
            }
            Err(e) => {
                let m = e.to_string();
                if m != self.last_error {
                    tracing::warn!(port = %path, "serial reader: {m}; retrying");
                    self.last_error = m;
                }
                self.next_try = Instant::now() + RETRY;
            }
        }
    }

    /// The port went away: every card in it leaves, then every slot's reader.
    fn gone(&mut self, ev: &mut Vec<SourceEvent>) {
        for (slot, (present, _)) in self.known.iter().enumerate() {
            let name = reader_name(&self.cfg, u8::try_from(slot).unwrap_or(u8::MAX));
            if *present {
                ev.push(SourceEvent::CardRemoved {
                    reader: name.clone(),
                });
            }
            ev.push(SourceEvent::ReaderRemoved(name));
        }
        self.known.clear();
        self.reader = None;
        self.next_try = Instant::now() + RETRY;
    }
}

/// The configured serial readers, as a [`ReaderSource`].
pub struct SerialSource {
    ports: Vec<Port>,
}

impl SerialSource {
    pub fn new(serial: &[SerialConfig]) -> Self {
        SerialSource {
            ports: serial
                .iter()
                .map(|cfg| Port {
                    cfg: cfg.clone(),
                    reader: None,
                    known: Vec::new(),
                    next_try: Instant::now(),
                    last_error: String::new(),
                })
                .collect(),
        }
    }
}

impl ReaderSource for SerialSource {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<SourceEvent>, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ev = Vec::new();
            for p in &mut self.ports {
                p.changes(&mut ev);
            }
            let now = Instant::now();
            if !ev.is_empty() || now >= deadline {
                return Ok(ev);
            }
            std::thread::sleep((deadline - now).min(POLL));
        }
    }
}
