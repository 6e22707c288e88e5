//! Where readers come from: a [`ReaderSource`] reports readers appearing and
//! disappearing and cards inserted and removed; each reader comes with a
//! [`Connector`] that opens a transport to the card in it.

use sscard_driver::transport::{CardTransport, TransportError};
use std::sync::Arc;
use std::time::Duration;

/// Presence and ATR read straight from the backend (when it can tell cheaply).
pub type LivePresence = Arc<dyn Fn() -> (bool, Vec<u8>) + Send + Sync>;

/// Opens a transport to the card in one reader.
pub trait Connector: Send {
    /// A transport to the card in the reader (`NoCard` when there is none).
    fn connect(&mut self) -> Result<Box<dyn CardTransport>, TransportError>;
}

/// What a source reports.
pub enum SourceEvent {
    ReaderAdded {
        name: String,
        /// `pcsc`, `serial` or `sim` (api.md `reader.list`).
        backend: &'static str,
        connector: Box<dyn Connector>,
        live: Option<LivePresence>,
        /// The slot of a multi-slot reader (a serial reader's), for `reader.list`.
        slot: Option<u8>,
        /// The reader has a PIN pad the holder types on (api.md 1.1 `pin_pad`), as far
        /// as the source knows (a PC/SC reader's is learnt when a card is connected).
        pin_pad: bool,
    },
    ReaderRemoved(String),
    CardInserted {
        reader: String,
        atr: Vec<u8>,
    },
    CardRemoved {
        reader: String,
    },
}

impl SourceEvent {
    /// The reader the event is about.
    pub fn reader(&self) -> &str {
        match self {
            SourceEvent::ReaderAdded { name, .. } | SourceEvent::ReaderRemoved(name) => name,
            SourceEvent::CardInserted { reader, .. } | SourceEvent::CardRemoved { reader } => {
                reader
            }
        }
    }
}

impl std::fmt::Debug for SourceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceEvent::ReaderAdded { name, backend, .. } => {
                write!(f, "ReaderAdded({name:?}, {backend})")
            }
            SourceEvent::ReaderRemoved(n) => write!(f, "ReaderRemoved({n:?})"),
            SourceEvent::CardInserted { reader, .. } => write!(f, "CardInserted({reader:?})"),
            SourceEvent::CardRemoved { reader } => write!(f, "CardRemoved({reader:?})"),
        }
    }
}

/// A source of readers. `poll` runs on its own thread and may block up to `timeout`.
pub trait ReaderSource: Send {
    /// Wait up to `timeout` for changes; the first call reports every reader there is
    /// (and every card in them). An empty list means nothing changed.
    fn poll(&mut self, timeout: Duration) -> Result<Vec<SourceEvent>, TransportError>;
}
