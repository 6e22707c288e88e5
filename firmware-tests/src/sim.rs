//! An in-process reader holding a virtual card: a [`CardTransport`] for unit tests and
//! the daemon's `--simulate` mode. The real tests go through pcscd (`crate::vpcd`).
//!
//! The card sits behind an `Arc<Mutex<…>>` ([`SimSlot`]) so a test (or the daemon) can
//! insert and remove it, or turn its knobs, while a reader task holds the transport.

use crate::{Reply, VirtualCard};
use sscard_driver::transport::{
    CardStatus, CardTransport, Protocol, RawTransaction, TransportError,
};
use std::sync::{Arc, Mutex, MutexGuard};

/// The slot: what card, if any, is in the reader.
#[derive(Clone, Default)]
pub struct SimSlot {
    inner: Arc<Mutex<Option<Box<dyn VirtualCard>>>>,
}

impl SimSlot {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<dyn VirtualCard>>> {
        // a panic while holding the lock leaves a card that is still usable
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put a card in (powering it on); a card already there is replaced.
    pub fn insert(&self, mut card: Box<dyn VirtualCard>) {
        card.power_on();
        *self.lock() = Some(card);
    }

    /// Take the card out.
    pub fn remove(&self) -> Option<Box<dyn VirtualCard>> {
        let mut c = self.lock().take();
        if let Some(c) = &mut c {
            c.power_off();
        }
        c
    }

    pub fn is_present(&self) -> bool {
        self.lock().is_some()
    }

    /// Run `f` on the card in the slot (to read or change it), if there is one.
    pub fn with_card<R>(&self, f: impl FnOnce(&mut dyn VirtualCard) -> R) -> Option<R> {
        self.lock().as_mut().map(|c| f(c.as_mut()))
    }
}

/// The in-process reader.
pub struct SimReader {
    name: String,
    slot: SimSlot,
}

impl SimReader {
    pub fn new(name: impl Into<String>, slot: SimSlot) -> Self {
        SimReader {
            name: name.into(),
            slot,
        }
    }

    /// A reader with `card` inserted.
    pub fn with_card(name: impl Into<String>, card: Box<dyn VirtualCard>) -> Self {
        let slot = SimSlot::new();
        slot.insert(card);
        Self::new(name, slot)
    }

    pub fn slot(&self) -> &SimSlot {
        &self.slot
    }
}

struct SimTransaction<'a> {
    slot: &'a SimSlot,
}

impl RawTransaction for SimTransaction<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut g = self.slot.lock();
        let card = g.as_mut().ok_or(TransportError::CardRemoved)?;
        match card.process(command) {
            Reply::Answer(a) => Ok(a),
            Reply::Mute => Err(TransportError::Timeout("card did not answer".into())),
            Reply::Tear => {
                // the card left the reader mid-command
                if let Some(mut c) = g.take() {
                    c.power_off();
                }
                Err(TransportError::CardRemoved)
            }
        }
    }
}

impl CardTransport for SimReader {
    fn reader_name(&self) -> String {
        self.name.clone()
    }

    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        if !self.slot.is_present() {
            return Err(TransportError::NoCard);
        }
        Ok(Box::new(SimTransaction { slot: &self.slot }))
    }

    fn status(&mut self) -> Result<CardStatus, TransportError> {
        Ok(match self.slot.lock().as_ref() {
            Some(c) => {
                let atr = c.atr();
                // T=1 if the ATR offers it (TD1 low nibble), else T=0
                let t1 = atr.len() > 1 && atr[1] & 0x80 != 0 && {
                    let y1 = atr[1] >> 4;
                    let idx =
                        2 + (y1 & 1) as usize + ((y1 >> 1) & 1) as usize + ((y1 >> 2) & 1) as usize;
                    atr.get(idx).is_some_and(|td| td & 0x0F == 1)
                };
                CardStatus {
                    present: true,
                    atr,
                    protocol: Some(if t1 { Protocol::T1 } else { Protocol::T0 }),
                }
            }
            None => CardStatus {
                present: false,
                atr: Vec::new(),
                protocol: None,
            },
        })
    }

    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        let mut g = self.slot.lock();
        let c = g.as_mut().ok_or(TransportError::NoCard)?;
        c.reset();
        Ok(c.atr())
    }
}
