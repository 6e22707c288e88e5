//! Errors of the card application, with variants a caller can act on.

use crate::keyprovider::KeyError;
use crate::status::StatusWord;
use crate::transport::{CommandError, TransportError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The reader or the link failed; see [`TransportError::outcome_unknown`].
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Not a card of this profile, or not ISSUED.
    #[error("card not supported: {0}")]
    NotSupported(String),
    #[error("application blocked")]
    Blocked,
    #[error("wrong PIN, {tries_left} tries left")]
    PinWrong { tries_left: u8 },
    #[error("PIN blocked")]
    PinBlocked,
    /// The PIN pad gave the entry up (timeout, cancel, the new PINs differ, wrong
    /// length): the card was not asked, no try was used.
    #[error("PIN entry on the pad: {0}")]
    PinEntry(crate::status::PinEntry),
    #[error("security status not satisfied (PIN not verified?)")]
    SecurityNotSatisfied,
    #[error("authentication failed")]
    AuthFailed,
    #[error("card is not genuine: internal authentication failed")]
    NotGenuine,
    #[error("MAC mismatch: {0}")]
    MacMismatch(&'static str),
    #[error("insufficient funds")]
    InsufficientFunds,
    /// A record the card returned is malformed.
    #[error("EF{ef:04X} record {tag:02X}: {reason}")]
    BadRecord { ef: u16, tag: u8, reason: String },
    /// The debit was sent but its answer never came: recovery decides.
    #[error("outcome unknown after {step}: {source}")]
    Uncertain {
        step: &'static str,
        #[source]
        source: TransportError,
    },
    /// The provider does not hold the key of that purpose (checked before any command).
    #[error("key not available: {0}")]
    KeyUnavailable(&'static str),
    /// The key provider failed, with its own kind kept: a terminal sequence that could
    /// not be reserved (`KeyError::Sequence`) is a journal problem, not a card's.
    #[error("keys: {0}")]
    Key(#[source] KeyError),
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("card answered {0}")]
    Card(StatusWord),
}

impl From<CommandError> for AppError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Transport(t) => AppError::Transport(t),
            CommandError::Status(sw) => AppError::Card(sw),
        }
    }
}
