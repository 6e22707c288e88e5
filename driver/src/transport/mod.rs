//! The transport: "a connected card", whatever carries the bytes.
//!
//! Backends (PC/SC in [`pcsc`], serial readers, in-process emulators) implement only
//! [`CardTransport`] and [`RawTransaction`]. The T=0 rules are applied once, above
//! the trait, by [`Transaction::transmit`]: `61xx` is answered with GET RESPONSE until
//! the card says `9000`, and `6Cxx` re-sends the command with the right Le.

pub mod pcsc;
pub mod pinpad;
pub mod serial;

use crate::apdu::{ApduError, CommandApdu, ResponseApdu};
use crate::status::StatusWord;
use pinpad::PadRequest;
use std::time::Duration;

/// Transport failures: the reader, the link or the card went wrong, not the command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// pcscd (or the serial line) is not there.
    #[error("smart-card service unavailable: {0}")]
    ServiceUnavailable(String),
    #[error("no such reader: {0}")]
    NoReader(String),
    #[error("no card in the reader")]
    NoCard,
    /// The card left the reader (or was reset) during the operation: whatever was in
    /// flight may or may not have happened on the card.
    #[error("card removed or reset during the operation")]
    CardRemoved,
    /// The card did not answer (mute card, timeout).
    #[error("card did not answer: {0}")]
    Timeout(String),
    #[error("reader is in use by another program")]
    Busy,
    /// The reader returned no status word (a card that lost power or left mid-command).
    #[error("no response from the card")]
    NoResponse,
    #[error("malformed APDU: {0}")]
    Apdu(#[from] ApduError),
    /// The card answered `61xx` / `6Cxx` in a loop or with inconsistent lengths.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The reader cannot do what was asked (a PIN entry on a reader without a pad).
    #[error("the reader cannot do this: {0}")]
    Unsupported(String),
    #[error("PC/SC error: {0}")]
    Pcsc(#[source] ::pcsc::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// True where the operation in flight may have reached the card and its outcome is
    /// unknown (card pulled, reset, link lost).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            TransportError::CardRemoved
                | TransportError::Timeout(_)
                | TransportError::Io(_)
                | TransportError::NoResponse
        )
    }
}

/// Card presence and protocol as the reader reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardStatus {
    pub present: bool,
    pub atr: Vec<u8>,
    pub protocol: Option<Protocol>,
}

/// Transmission protocol (ISO 7816-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    T0,
    T1,
}

/// What the reader can do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The reader has its own PIN pad.
    pub pin_pad: bool,
    /// Extended-length APDUs go through.
    pub extended_length: bool,
    /// Largest command the reader carries.
    pub max_command: usize,
}

/// Exclusive access to a card for several APDUs. Ends (releases the card) on drop.
pub trait RawTransaction {
    /// Send one command APDU's bytes and return the response APDU's bytes, as is.
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;
    /// Whether beginning this transaction found the card removed and inserted again, or
    /// reset, since the handle's last use (PC/SC: `SCARD_W_REMOVED_CARD` /
    /// `SCARD_W_RESET_CARD`) and took it up again: the transaction is on a new
    /// presentation of the card, and whatever was known of the old one is not to be
    /// trusted.
    fn new_presentation(&self) -> bool {
        false
    }
    /// Have the holder type the PIN on the reader's keypad (PC/SC part 10
    /// `FEATURE_VERIFY_PIN_DIRECT` / `FEATURE_MODIFY_PIN_DIRECT`, CCID
    /// `PC_to_RDR_Secure`; [`pinpad`]): the reader fills `request`'s APDU and sends it.
    /// Returns the response APDU's bytes: the card's answer, or the pad's own status
    /// word (`6400`–`6403`). Blocks until the holder is done or the pad times out.
    fn pin_pad(&mut self, request: &PadRequest) -> Result<Vec<u8>, TransportError> {
        let _ = request;
        Err(TransportError::Unsupported(
            "the reader has no PIN pad".into(),
        ))
    }
    /// End the transaction with a card reset (PC/SC `SCARD_RESET_CARD`), so that every
    /// other program sharing the reader (a running sscardd) sees a new presentation and
    /// drops what it had read of the card. Readers no other program shares (a serial
    /// port is held by one program) just end it.
    fn end_with_reset(self: Box<Self>) -> Result<(), TransportError> {
        Ok(())
    }
}

/// A connected card.
pub trait CardTransport: Send {
    /// A human name of the reader (slot) the card sits in.
    fn reader_name(&self) -> String;
    /// Begin a transaction: exclusive access until the returned value is dropped. A
    /// card removed and inserted again, or reset, since the last transaction is taken up
    /// again (without another reset) and the transaction says so
    /// ([`RawTransaction::new_presentation`]); no card is [`TransportError::NoCard`].
    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError>;
    /// Current presence, ATR and protocol.
    fn status(&mut self) -> Result<CardStatus, TransportError>;
    /// Warm-reset the card (or reconnect after it was removed and inserted again),
    /// returning the new ATR. Card state (selected file, PIN verified) is lost.
    fn reset(&mut self) -> Result<Vec<u8>, TransportError>;
    /// Take up the card as it is now, after it was removed and inserted again or reset
    /// by another program (PC/SC: `SCARD_W_REMOVED_CARD` / `SCARD_W_RESET_CARD` on this
    /// handle), without resetting it once more: another program sharing the reader
    /// would see that reset as a new presentation too. Returns the ATR.
    fn reattach(&mut self) -> Result<Vec<u8>, TransportError> {
        self.reset()
    }
    /// What the reader can do.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pin_pad: false,
            extended_length: false,
            max_command: 261,
        }
    }
}

/// Upper bound of GET RESPONSE rounds and Le resends, so a broken card cannot loop us.
const MAX_CHAIN: usize = 64;

/// A transaction with the T=0 rules applied: what the card application speaks to.
pub struct Transaction<'a> {
    raw: Box<dyn RawTransaction + 'a>,
}

impl<'a> Transaction<'a> {
    /// Begin a transaction on a card.
    pub fn begin(card: &'a mut dyn CardTransport) -> Result<Self, TransportError> {
        Ok(Transaction { raw: card.begin()? })
    }

    /// End the transaction with a card reset ([`RawTransaction::end_with_reset`]): what
    /// the office's commands that write a card do, so that a daemon sharing the reader
    /// reads it again.
    pub fn end_with_reset(self) -> Result<(), TransportError> {
        self.raw.end_with_reset()
    }

    /// Wrap an already-open raw transaction.
    pub fn from_raw(raw: Box<dyn RawTransaction + 'a>) -> Self {
        Transaction { raw }
    }

    fn exchange(&mut self, cmd: &CommandApdu) -> Result<ResponseApdu, TransportError> {
        tracing::trace!(">>> {:?}", cmd);
        let bytes = self.raw.transmit_raw(&cmd.to_bytes())?;
        // fewer than two bytes: the command may or may not have run on the card
        let resp = ResponseApdu::parse(&bytes).map_err(|_| TransportError::NoResponse)?;
        tracing::trace!("<<< {:?}", resp);
        Ok(resp)
    }

    /// Send a command; `61xx` is chained with GET RESPONSE, `6Cxx` re-sent with the
    /// right Le. The status word returned is never `61xx` or `6Cxx`.
    pub fn transmit(&mut self, cmd: &CommandApdu) -> Result<ResponseApdu, TransportError> {
        let mut resp = self.exchange(cmd)?;
        let mut rounds = 0;
        if let StatusWord::WrongLe(le) = resp.sw {
            let fixed = cmd
                .clone()
                .with_le(if le == 0 { 256 } else { le as usize })?;
            resp = self.exchange(&fixed)?;
            if let StatusWord::WrongLe(_) = resp.sw {
                return Err(TransportError::Protocol("card answered 6Cxx twice".into()));
            }
        }
        let mut data = std::mem::take(&mut resp.data);
        while let StatusWord::MoreData(n) = resp.sw {
            rounds += 1;
            if rounds > MAX_CHAIN {
                return Err(TransportError::Protocol(
                    "GET RESPONSE chain does not end".into(),
                ));
            }
            let get = CommandApdu::new(cmd.cla & 0x03, 0xC0, 0, 0).with_le(if n == 0 {
                256
            } else {
                n as usize
            })?;
            resp = self.exchange(&get)?;
            if let StatusWord::WrongLe(le) = resp.sw {
                let get = CommandApdu::new(cmd.cla & 0x03, 0xC0, 0, 0).with_le(if le == 0 {
                    256
                } else {
                    le as usize
                })?;
                resp = self.exchange(&get)?;
            }
            data.append(&mut resp.data);
        }
        resp.data = data;
        Ok(resp)
    }

    /// A PIN entry on the reader's keypad ([`RawTransaction::pin_pad`]). The answer's
    /// status word may be the pad's ([`StatusWord::PinEntry`]).
    pub fn pin_pad(&mut self, request: &PadRequest) -> Result<ResponseApdu, TransportError> {
        tracing::trace!(">>> PIN pad {:?}", request.purpose());
        let bytes = self.raw.pin_pad(request)?;
        let resp = ResponseApdu::parse(&bytes).map_err(|_| TransportError::NoResponse)?;
        tracing::trace!("<<< {:?}", resp.sw);
        Ok(resp)
    }

    /// Send and require `9000`; other status words come back as `Err(Ok(sw))`-style
    /// [`CommandError::Status`].
    pub fn transmit_ok(&mut self, cmd: &CommandApdu) -> Result<Vec<u8>, CommandError> {
        let r = self.transmit(cmd)?;
        r.into_result().map_err(CommandError::Status)
    }
}

/// A command failed either in transport or with a status word.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("card answered {0}")]
    Status(StatusWord),
}

/// Wait for a card with a timeout, shared by backends that poll.
pub fn poll_interval() -> Duration {
    Duration::from_millis(50)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// In-process fake for unit tests only: answers from a script and records commands.
    struct Script {
        answers: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
    }
    impl RawTransaction for &mut Script {
        fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.sent.push(command.to_vec());
            self.answers
                .pop_front()
                .ok_or_else(|| TransportError::Timeout("script exhausted".into()))
        }
    }
    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn get_response_chain() {
        let mut s = Script {
            answers: [h("6110"), h("0102 6102"), h("0304 9000")].into(),
            sent: vec![],
        };
        let mut tx = Transaction::from_raw(Box::new(&mut s));
        let cmd = CommandApdu::new(0, 0x88, 0, 2)
            .with_data(vec![1; 8])
            .unwrap();
        let r = tx.transmit(&cmd).unwrap();
        assert_eq!(r.data, h("01020304"));
        assert!(r.sw.is_ok());
        drop(tx);
        assert_eq!(s.sent[1], h("00C0000010"));
        assert_eq!(s.sent[2], h("00C0000002"));
    }

    #[test]
    fn wrong_le_is_resent() {
        let mut s = Script {
            answers: [h("6C05"), h("0102030405 9000")].into(),
            sent: vec![],
        };
        let mut tx = Transaction::from_raw(Box::new(&mut s));
        let cmd = CommandApdu::new(0, 0xB2, 7, 0).with_le(20).unwrap();
        let r = tx.transmit(&cmd).unwrap();
        assert_eq!(r.data.len(), 5);
        drop(tx);
        assert_eq!(s.sent[1], h("00B2070005"));
    }

    #[test]
    fn endless_chain_is_an_error() {
        let mut s = Script {
            answers: std::iter::repeat_n(h("6101"), 100).collect(),
            sent: vec![],
        };
        let mut tx = Transaction::from_raw(Box::new(&mut s));
        let cmd = CommandApdu::new(0, 0x84, 0, 0).with_le(8).unwrap();
        assert!(matches!(
            tx.transmit(&cmd),
            Err(TransportError::Protocol(_))
        ));
    }
}
