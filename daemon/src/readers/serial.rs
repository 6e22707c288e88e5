//! Serial readers (`[[serial]]` in the configuration, `--serial` on the demo command
//! lines): each port is opened with the driver's serial backend
//! ([`sscard_driver::transport::serial`]) and each of its slots is a reader named
//! `<model> <path> <slot>` (api.md 1.1). The source polls every slot's presence (the
//! reader's card movement notices and GetSlotStatus) and reports cards inserted and
//! removed; a port that goes away (the device unplugged) shows as its readers removed,
//! and it is opened again, and its readers added, when the path comes back.
//!
//! A PSAM in a serial reader's SAM slot (`keys.psam.reader` naming that slot) is opened
//! before the daemon starts ([`psam_port`]); its port is then shared with the source,
//! which does not offer the PSAM's slot for payments.

use super::source::{Connector, ReaderSource, SourceEvent};
use crate::config::{Config, KeysConfig, SerialConfig};
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

/// When `keys.psam.reader` names a slot of a `[[serial]]` reader: that reader, opened
/// now (the keys are needed before the daemon serves), and the slot. `None` when the
/// PSAM is not in a serial reader.
pub fn psam_port(config: &Config) -> Result<Option<(Arc<SerialReader>, u8)>, String> {
    let Some(KeysConfig::Psam { reader }) = &config.keys else {
        return Ok(None);
    };
    for cfg in &config.serial {
        for slot in 0..cfg.model.slots() {
            if reader_name(cfg, slot) == *reader {
                let path = cfg.path.to_string_lossy();
                let r = SerialReader::open(&path, cfg.model)
                    .map_err(|e| format!("keys.psam: serial reader {path}: {e}"))?;
                return Ok(Some((Arc::new(r), slot)));
            }
        }
    }
    Ok(None)
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

/// One configured port. Its [`SerialReader`] is made once and kept: after the device
/// went away the same reader opens the port again (its slots' connectors, and a PSAM
/// that holds one of them, stay valid), so two readers never share a port.
struct Port {
    cfg: SerialConfig,
    reader: Option<Arc<SerialReader>>,
    /// Its slots are readers now (announced, not gone since).
    up: bool,
    /// Each slot's card (present, ATR) as last reported.
    known: Vec<(bool, Vec<u8>)>,
    next_try: Instant,
    /// The last reason the port could not be opened (logged once per reason).
    last_error: String,
}

impl Port {
    fn changes(&mut self, ev: &mut Vec<SourceEvent>) {
        let now = Instant::now();
        if !self.up && now < self.next_try {
            return;
        }
        let reader = match &self.reader {
            Some(r) => r.clone(),
            None => {
                let path = self.cfg.path.to_string_lossy().into_owned();
                match SerialReader::open(&path, self.cfg.model) {
                    Ok(r) => {
                        let r = Arc::new(r);
                        self.reader = Some(r.clone());
                        r
                    }
                    Err(e) => return self.failed(&e),
                }
            }
        };
        match reader.poll() {
            // its cards are reported at the next poll
            Ok(_) if !self.up => {
                tracing::info!(port = %self.cfg.path.display(), model = self.cfg.model.name(), firmware = %reader.firmware(), "serial reader up");
                self.last_error.clear();
                self.announce(&reader, ev);
            }
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
            Err(e) if self.up => {
                tracing::warn!(port = %self.cfg.path.display(), "serial reader gone: {e}");
                self.gone(ev);
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &TransportError) {
        let m = e.to_string();
        if m != self.last_error {
            tracing::warn!(port = %self.cfg.path.display(), "serial reader: {m}; retrying");
            self.last_error = m;
        }
        self.next_try = Instant::now() + RETRY;
    }

    /// Every slot of the reader becomes a reader of the daemon.
    fn announce(&mut self, r: &Arc<SerialReader>, ev: &mut Vec<SourceEvent>) {
        self.up = true;
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
                slot: Some(slot),
                pin_pad: r.model().pin_pad(),
            });
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
        self.up = false;
        self.next_try = Instant::now() + RETRY;
    }
}

/// The configured serial readers, as a [`ReaderSource`].
pub struct SerialSource {
    ports: Vec<Port>,
    /// Readers not offered (the PSAM's slot).
    ignore: Vec<String>,
}

impl SerialSource {
    /// The readers of `serial`; those of `opened` (by path) are used as they are, and the
    /// slots named in `ignore` are not reported.
    pub fn new(serial: &[SerialConfig], opened: &[Arc<SerialReader>], ignore: Vec<String>) -> Self {
        SerialSource {
            ports: serial
                .iter()
                .map(|cfg| Port {
                    cfg: cfg.clone(),
                    reader: opened
                        .iter()
                        .find(|r| std::path::Path::new(r.path()) == cfg.path)
                        .cloned(),
                    up: false,
                    known: Vec::new(),
                    next_try: Instant::now(),
                    last_error: String::new(),
                })
                .collect(),
            ignore,
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
            ev.retain(|e| !self.ignore.iter().any(|n| n == e.reader()));
            let now = Instant::now();
            if !ev.is_empty() || now >= deadline {
                return Ok(ev);
            }
            std::thread::sleep((deadline - now).min(POLL));
        }
    }
}
