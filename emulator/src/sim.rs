//! An in-process reader holding a virtual card: a [`CardTransport`] for unit tests and
//! the daemon's `--simulate` mode. The real tests go through pcscd
//! (`sscard_firmware_tests::vpcd`).
//!
//! The card sits behind an `Arc<Mutex<…>>` ([`SimSlot`]) so a test (or the daemon) can
//! insert and remove it, or turn its knobs, while a reader holds the transport. The slot
//! is generic over the card type: a `SimSlot<EmulatedCard>` gives typed access
//! (`slot.with_card(|c| c.set_knobs(…))`); the default `SimSlot` holds any
//! `dyn VirtualCard` (a personalization chip, a PSAM).
//!
//! A transaction is bound to the card it began with: if that card leaves (tear, removal),
//! the rest of the transaction fails with [`TransportError::CardRemoved`]. Between
//! transactions the reader follows whatever card is in the slot, unless
//! [`SimReader::require_reconnect`] makes it behave like a PC/SC card handle: then, once
//! it has talked to a card, a card removed and inserted again (or a torn card put back)
//! makes `status` report no card until [`CardTransport::reset`] reconnects, as
//! `SCARD_W_REMOVED_CARD` does through pcscd, and `begin` takes the new card up and says
//! so ([`RawTransaction::new_presentation`]), as the PC/SC backend does.

use crate::{Reply, VirtualCard};
use sscard_driver::atr::Atr;
use sscard_driver::transport::{CardStatus, CardTransport, RawTransaction, TransportError};
use std::sync::{Arc, Mutex, MutexGuard};

struct SlotState<C: ?Sized> {
    card: Option<Box<C>>,
    /// The card a tear pulled out, until [`SimSlot::reinsert`] puts it back.
    torn: Option<Box<C>>,
    /// Goes up at every insertion: a reader connected to an older one is stale.
    generation: u64,
}

/// The slot: what card, if any, is in the reader.
pub struct SimSlot<C: VirtualCard + ?Sized = dyn VirtualCard> {
    inner: Arc<Mutex<SlotState<C>>>,
}

impl<C: VirtualCard + ?Sized> Clone for SimSlot<C> {
    fn clone(&self) -> Self {
        SimSlot {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: VirtualCard + ?Sized> Default for SimSlot<C> {
    fn default() -> Self {
        SimSlot {
            inner: Arc::new(Mutex::new(SlotState {
                card: None,
                torn: None,
                generation: 0,
            })),
        }
    }
}

impl<C: VirtualCard + ?Sized> SimSlot<C> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<C>> {
        // a panic while holding the lock leaves a card that is still usable
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put a card in (powering it on); a card already there is taken out first.
    pub fn insert(&self, mut card: Box<C>) {
        card.power_on();
        let mut s = self.lock();
        if let Some(old) = s.card.as_mut() {
            old.power_off();
        }
        s.card = Some(card);
        s.generation += 1;
    }

    /// Take the card out (powered off).
    pub fn remove(&self) -> Option<Box<C>> {
        let mut c = self.lock().card.take();
        if let Some(c) = &mut c {
            c.power_off();
        }
        c
    }

    /// Put back the card the last tear pulled out; false if there is none (or the slot
    /// already holds a card).
    pub fn reinsert(&self) -> bool {
        let mut s = self.lock();
        if s.card.is_some() {
            return false;
        }
        match s.torn.take() {
            Some(mut c) => {
                c.power_on();
                s.card = Some(c);
                s.generation += 1;
                true
            }
            None => false,
        }
    }

    /// Take the card the last tear pulled out, to inspect it or insert it elsewhere.
    pub fn take_torn(&self) -> Option<Box<C>> {
        self.lock().torn.take()
    }

    /// Whether a card is in the slot.
    pub fn is_present(&self) -> bool {
        self.lock().card.is_some()
    }

    /// Run `f` on the card in the slot (to read it or turn its knobs), if there is one.
    pub fn with_card<R>(&self, f: impl FnOnce(&mut C) -> R) -> Option<R> {
        self.lock().card.as_mut().map(|c| f(c.as_mut()))
    }

    /// Run `f` on the card the last tear pulled out, if there is one.
    pub fn with_torn<R>(&self, f: impl FnOnce(&mut C) -> R) -> Option<R> {
        self.lock().torn.as_mut().map(|c| f(c.as_mut()))
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }
}

/// The in-process reader.
pub struct SimReader<C: VirtualCard + ?Sized = dyn VirtualCard> {
    name: String,
    slot: SimSlot<C>,
    /// The insertion this reader talks to; `None` until it first sees a card.
    connected: Option<u64>,
    /// PC/SC-like: a new insertion needs a `reset` before use.
    strict: bool,
}

impl<C: VirtualCard + ?Sized> SimReader<C> {
    /// A reader over `slot` (which may be empty: the reader connects to the first card
    /// it sees).
    pub fn new(name: impl Into<String>, slot: SimSlot<C>) -> Self {
        SimReader {
            name: name.into(),
            slot,
            connected: None,
            strict: false,
        }
    }

    /// Behave like a PC/SC card handle (see the module doc): after the card in the slot
    /// changed, `begin` answers `CardRemoved` and `status` no card until `reset`.
    pub fn require_reconnect(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// True when this reader is PC/SC-like and the card it talked to has left.
    fn stale(&self) -> bool {
        self.strict && self.connected.is_some_and(|g| g != self.slot.generation())
    }

    /// A reader with `card` inserted.
    pub fn with_card(name: impl Into<String>, card: Box<C>) -> Self {
        let slot = SimSlot::new();
        slot.insert(card);
        Self::new(name, slot)
    }

    /// The slot, to insert, remove or reach the card while the reader holds it.
    pub fn slot(&self) -> &SimSlot<C> {
        &self.slot
    }

    /// Connect to the card in the slot, or say why not (see the module doc): the
    /// insertion it talks to, and whether a PC/SC-like reader had to take up a card
    /// inserted since it last talked to one (a new presentation).
    fn connect(&mut self) -> Result<(u64, bool), TransportError> {
        let s = self.slot.lock();
        if s.card.is_none() {
            return Err(TransportError::NoCard);
        }
        let stale = self.strict && self.connected.is_some_and(|g| g != s.generation);
        self.connected = Some(s.generation);
        Ok((s.generation, stale))
    }
}

struct SimTransaction<'a, C: VirtualCard + ?Sized> {
    slot: &'a SimSlot<C>,
    generation: u64,
    new_presentation: bool,
}

impl<C: VirtualCard + ?Sized> RawTransaction for SimTransaction<'_, C> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut s = self.slot.lock();
        if s.generation != self.generation {
            return Err(TransportError::CardRemoved);
        }
        let card = s.card.as_mut().ok_or(TransportError::CardRemoved)?;
        match card.process(command) {
            Reply::Answer(a) => Ok(a),
            Reply::Mute => Err(TransportError::Timeout("card did not answer".into())),
            Reply::Tear => {
                // the card left the reader mid-command
                let mut c = s.card.take();
                if let Some(c) = &mut c {
                    c.power_off();
                }
                s.torn = c;
                Err(TransportError::CardRemoved)
            }
        }
    }

    fn new_presentation(&self) -> bool {
        self.new_presentation
    }
}

impl<C: VirtualCard + ?Sized> CardTransport for SimReader<C> {
    fn reader_name(&self) -> String {
        self.name.clone()
    }

    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        let (generation, new_presentation) = self.connect()?;
        Ok(Box::new(SimTransaction {
            slot: &self.slot,
            generation,
            new_presentation,
        }))
    }

    fn status(&mut self) -> Result<CardStatus, TransportError> {
        let stale = self.stale();
        Ok(match self.slot.lock().card.as_ref().filter(|_| !stale) {
            Some(c) => {
                let atr = c.atr();
                // the first protocol the ATR offers, as a reader would choose
                let protocol = Atr::parse(&atr)
                    .ok()
                    .and_then(|a| a.protocols().first().copied());
                CardStatus {
                    present: true,
                    atr,
                    protocol,
                }
            }
            None => CardStatus {
                present: false,
                atr: Vec::new(),
                protocol: None,
            },
        })
    }

    /// Power-cycle the card in the slot and connect to it (also after a removal).
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        let mut s = self.slot.lock();
        let generation = s.generation;
        let c = s.card.as_mut().ok_or(TransportError::NoCard)?;
        c.power_off();
        c.power_on();
        let atr = c.atr();
        drop(s);
        self.connected = Some(generation);
        Ok(atr)
    }
}
