//! The presentation cache: what the reader task knows of the card in its reader, from
//! the moment it was inserted until it leaves (docs/architecture.md, "The presentation
//! cache"; the safety argument is in docs/payment-failures.md).
//!
//! A presentation is one stay of one card in the reader, from insertion (or reset) to
//! removal (or reset). Its records are read once, in the background, when the card is
//! inserted; `card.read` answers from them and a payment sends only what money needs.
//! The cache is dropped:
//! - when the card leaves or is reset: the reader's card events (the PC/SC event
//!   counter, so a quick swap is seen even where the presence bit never dropped), and
//!   `SCARD_W_REMOVED_CARD` / `SCARD_W_RESET_CARD` on the reader task's own handle, both
//!   checked before every job;
//! - on any transport error during a job;
//! - by any command that changes what it holds (UPDATE RECORD, APPLICATION BLOCK and
//!   UNBLOCK, personalization): [`Card`] sees every command a job sends, and after such a
//!   job the reader task also resets the card, so that every other program sharing the
//!   reader sees a new presentation too.

use sscard_driver::app::{CardRecord, PolicyRecords};
use sscard_driver::transport::pinpad::PadRequest;
use sscard_driver::transport::{
    Capabilities, CardStatus, CardTransport, RawTransaction, Transaction, TransportError,
};
use std::sync::atomic::{AtomicBool, Ordering};

/// What is known of the card in the reader.
#[derive(Clone, Debug)]
pub struct Presentation {
    /// What policy and a payment need (always there once anything was read).
    pub policy: PolicyRecords,
    /// All the records, once read.
    pub record: Option<CardRecord>,
    /// INTERNAL AUTHENTICATE against the key diversified from `policy.card_id`, once run.
    pub genuine: Option<bool>,
}

impl Presentation {
    /// A presentation known from its policy records only.
    pub fn of(policy: PolicyRecords) -> Self {
        Presentation {
            policy,
            record: None,
            genuine: None,
        }
    }

    /// A presentation known from all its records.
    pub fn whole(record: CardRecord) -> Self {
        Presentation {
            policy: record.policy(),
            record: Some(record),
            genuine: None,
        }
    }
}

/// Instructions that change what a presentation holds (card profile §5, §9): UPDATE
/// RECORD, UPDATE BINARY, APPEND RECORD, APPLICATION BLOCK and UNBLOCK, and the
/// personalization commands (CREATE FILE, PUT KEY, and the issuing step's end,
/// docs/personalization.md).
fn changes_records(command: &[u8]) -> bool {
    matches!(
        command.get(1),
        Some(0xDC | 0xD6 | 0xE2 | 0x1E | 0x18 | 0xE0 | 0xD8 | 0xF0)
    )
}

/// The card as a job sees it: the reader's transport, watched, and the presentation
/// cache. Every command the job sends goes through here, so a transport error or a
/// command that writes the card is noticed whatever code sent it.
pub struct Card<'a> {
    transport: &'a mut dyn CardTransport,
    cache: &'a mut Option<Presentation>,
    failed: AtomicBool,
    wrote: AtomicBool,
}

impl<'a> Card<'a> {
    pub(super) fn new(
        transport: &'a mut dyn CardTransport,
        cache: &'a mut Option<Presentation>,
    ) -> Self {
        Card {
            transport,
            cache,
            failed: AtomicBool::new(false),
            wrote: AtomicBool::new(false),
        }
    }

    /// What is known of this presentation (none after anything invalidated it), as of
    /// the last word from the reader: to answer from it with no command to the card,
    /// [`Card::confirm`] first; [`Card::open`] gives it with the transaction that
    /// confirms it.
    pub fn cached(&self) -> Option<&Presentation> {
        if self.failed.load(Ordering::Relaxed) || self.wrote.load(Ordering::Relaxed) {
            return None;
        }
        self.cache.as_ref()
    }

    /// Ask the reader (one call, no command to the card) whether the card is still
    /// there and was not reset: if not, the cache is dropped.
    pub fn confirm(&mut self) {
        match self.transport.status() {
            Ok(s) if s.present => {}
            _ => *self.cache = None,
        }
    }

    /// Begin a transaction, with what is known of the presentation it is on: nothing
    /// when the transport found the card removed and inserted, or reset, since the last
    /// job ([`RawTransaction::new_presentation`]; the cache is dropped).
    pub fn open(&mut self) -> Result<(Transaction<'_>, Option<Presentation>), TransportError> {
        let Card {
            transport,
            cache,
            failed,
            wrote,
        } = self;
        let watched = watched_begin(&mut **transport, cache, failed, wrote)?;
        let known = if failed.load(Ordering::Relaxed) || wrote.load(Ordering::Relaxed) {
            None
        } else {
            cache.clone()
        };
        Ok((Transaction::from_raw(Box::new(watched)), known))
    }

    /// Remember what was read of this presentation.
    pub fn remember(&mut self, p: Presentation) {
        *self.cache = Some(p);
    }

    /// Forget the presentation (the card in the reader is not the one remembered).
    pub fn forget(&mut self) {
        *self.cache = None;
    }

    /// Whether the job sent a command that changes the card's records.
    pub(super) fn wrote(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// Whether the transport failed during the job.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn watch<T>(&self, r: Result<T, TransportError>) -> Result<T, TransportError> {
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

/// Begin a transaction on `transport`, watched: a new presentation drops the cache, and
/// a failure to begin counts as a transport error.
fn watched_begin<'t>(
    transport: &'t mut dyn CardTransport,
    cache: &mut Option<Presentation>,
    failed: &'t AtomicBool,
    wrote: &'t AtomicBool,
) -> Result<Watched<'t>, TransportError> {
    match transport.begin() {
        Ok(raw) => {
            if raw.new_presentation() {
                *cache = None;
            }
            Ok(Watched { raw, failed, wrote })
        }
        Err(e) => {
            failed.store(true, Ordering::Relaxed);
            Err(e)
        }
    }
}

struct Watched<'t> {
    raw: Box<dyn RawTransaction + 't>,
    failed: &'t AtomicBool,
    wrote: &'t AtomicBool,
}

impl RawTransaction for Watched<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if changes_records(command) {
            // before it is sent: whatever its answer, the records may have changed
            self.wrote.store(true, Ordering::Relaxed);
        }
        let r = self.raw.transmit_raw(command);
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn new_presentation(&self) -> bool {
        self.raw.new_presentation()
    }

    fn pin_pad(&mut self, request: &PadRequest) -> Result<Vec<u8>, TransportError> {
        if changes_records(&request.apdu) {
            self.wrote.store(true, Ordering::Relaxed);
        }
        let r = self.raw.pin_pad(request);
        // a reader without a pad sent nothing: the card is as it was
        if matches!(r, Err(ref e) if !matches!(e, TransportError::Unsupported(_))) {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl CardTransport for Card<'_> {
    fn reader_name(&self) -> String {
        self.transport.reader_name()
    }

    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        let Card {
            transport,
            cache,
            failed,
            wrote,
        } = self;
        Ok(Box::new(watched_begin(
            &mut **transport,
            cache,
            failed,
            wrote,
        )?))
    }

    fn status(&mut self) -> Result<CardStatus, TransportError> {
        let r = self.transport.status();
        self.watch(r)
    }

    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        // a reset ends the presentation as far as the cache is concerned
        self.failed.store(true, Ordering::Relaxed);
        self.transport.reset()
    }

    fn reattach(&mut self) -> Result<Vec<u8>, TransportError> {
        self.failed.store(true, Ordering::Relaxed);
        self.transport.reattach()
    }

    fn capabilities(&self) -> Capabilities {
        self.transport.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::changes_records;

    #[test]
    fn writes_are_told_from_reads() {
        for w in ["04DC22000A", "841E000004", "8418000004", "00D6000001"] {
            assert!(changes_records(&hex::decode(w).unwrap()), "{w}");
        }
        for r in [
            "00A404000F",
            "00B2010000",
            "0088000208",
            "0020000003",
            "805401000F",
        ] {
            assert!(!changes_records(&hex::decode(r).unwrap()), "{r}");
        }
        assert!(!changes_records(&[]));
    }
}
