//! PC/SC readers through pcscd ([`sscard_driver::transport::pcsc`]): the monitor's
//! reader and card events, and connections in shared mode (each job runs inside one
//! PC/SC transaction, so other programs never interleave with it).

use super::source::{Connector, ReaderSource, SourceEvent};
use sscard_driver::transport::pcsc::{Monitor, PcscContext, ReaderEvent, ShareMode};
use sscard_driver::transport::{CardTransport, TransportError};
use std::time::Duration;

/// Connects to one reader's card on a PC/SC context of the reader's own: pcsc-lite runs
/// the calls of one context one at a time, so readers sharing a context (or sharing the
/// monitor's) would wait for each other.
struct PcscConnector {
    ctx: Option<PcscContext>,
    name: String,
}

impl Connector for PcscConnector {
    fn connect(&mut self) -> Result<Box<dyn CardTransport>, TransportError> {
        let ctx = match &self.ctx {
            Some(c) => c.clone(),
            None => {
                let c = PcscContext::establish()?;
                self.ctx = Some(c.clone());
                c
            }
        };
        Ok(Box::new(ctx.connect(
            &self.name,
            ShareMode::Shared,
            None,
        )?))
    }
}

/// The machine's PC/SC readers, except those named in `ignore` (a PSAM's reader).
pub struct PcscSource {
    ctx: Option<PcscContext>,
    monitor: Option<Monitor>,
    ignore: Vec<String>,
}

impl PcscSource {
    /// A source; the PC/SC context is established at the first poll (and again
    /// whenever pcscd went away), so the daemon starts without pcscd running.
    pub fn new(ignore: Vec<String>) -> Self {
        PcscSource {
            ctx: None,
            monitor: None,
            ignore,
        }
    }

    fn ignored(&self, name: &str) -> bool {
        self.ignore.iter().any(|i| i == name)
    }
}

impl ReaderSource for PcscSource {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<SourceEvent>, TransportError> {
        if self.ctx.is_none() {
            self.ctx = Some(PcscContext::establish()?);
        }
        let ctx = match &self.ctx {
            Some(c) => c.clone(),
            None => return Ok(Vec::new()),
        };
        if self.monitor.is_none() {
            self.monitor = Some(ctx.monitor()?);
        }
        let Some(m) = self.monitor.as_mut() else {
            return Ok(Vec::new());
        };
        let events = match m.wait(timeout) {
            Ok(e) => e,
            Err(e) => {
                // start over with a fresh monitor next time (pcscd restarted)
                self.monitor = None;
                return Err(e);
            }
        };
        let mut out = Vec::new();
        for e in events {
            match e {
                ReaderEvent::ReaderAdded(name) if !self.ignored(&name) => {
                    // a PC/SC reader's pad is learnt on the card's connection (a direct
                    // connection without a card upsets some drivers: vpcd keeps a pulled
                    // card present)
                    out.push(SourceEvent::ReaderAdded {
                        pin_pad: false,
                        connector: Box::new(PcscConnector {
                            ctx: None,
                            name: name.clone(),
                        }),
                        name,
                        backend: "pcsc",
                        live: None,
                        slot: None,
                    })
                }
                ReaderEvent::ReaderRemoved(name) if !self.ignored(&name) => {
                    out.push(SourceEvent::ReaderRemoved(name))
                }
                ReaderEvent::CardInserted { reader, atr } if !self.ignored(&reader) => {
                    out.push(SourceEvent::CardInserted { reader, atr })
                }
                ReaderEvent::CardRemoved { reader } if !self.ignored(&reader) => {
                    out.push(SourceEvent::CardRemoved { reader })
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
