//! The PSAM key provider (card profile §8): the terminal's keys stay in a PSAM card in
//! a second reader slot; the host forwards the card's data and cryptograms.

use super::{KeyError, KeyProvider, PurchaseInit, PurchaseSession};
use crate::apdu::CommandApdu;
use crate::crypto::LoadContext;
use crate::keys::KeyPurpose;
use crate::status::StatusWord;
use crate::transport::{CardTransport, Transaction};
use crate::types::{CardId, TerminalId};

/// The PSAM application identifier `D1 56 00 00 05 ‖ "PSAM"`.
pub const PSAM_AID: [u8; 9] = [0xD1, 0x56, 0x00, 0x00, 0x05, b'P', b'S', b'A', b'M'];

/// A PSAM in its own reader slot.
pub struct PsamProvider {
    card: Box<dyn CardTransport>,
    terminal_id: TerminalId,
    /// The terminal sequence of the purchase whose session the PSAM holds (it keeps
    /// one: the last INIT SAM FOR PURCHASE).
    open_purchase: Option<u32>,
}

fn psam_err(what: &str, e: impl std::fmt::Display) -> KeyError {
    KeyError::Psam(format!("{what}: {e}"))
}

fn cmd(ins: u8, p1: u8, p2: u8, data: &[u8], le: usize) -> Result<CommandApdu, KeyError> {
    CommandApdu::new(0x80, ins, p1, p2)
        .with_data(data.to_vec())
        .and_then(|c| c.with_le(le))
        .map_err(|e| psam_err("command", e))
}

impl PsamProvider {
    /// Select the PSAM application and read its terminal id.
    pub fn open(mut card: Box<dyn CardTransport>) -> Result<Self, KeyError> {
        let tid = {
            let mut tx = Transaction::begin(card.as_mut()).map_err(|e| psam_err("reader", e))?;
            Self::select(&mut tx)?;
            let c = CommandApdu::new(0x00, 0xB0, 0x96, 0x00)
                .with_le(6)
                .map_err(|e| psam_err("command", e))?;
            let d = tx.transmit_ok(&c).map_err(|e| psam_err("terminal id", e))?;
            let b: [u8; 6] = d
                .try_into()
                .map_err(|_| psam_err("terminal id", "not 6 bytes"))?;
            TerminalId(b)
        };
        Ok(PsamProvider {
            card,
            terminal_id: tid,
            open_purchase: None,
        })
    }

    fn select(tx: &mut Transaction<'_>) -> Result<(), KeyError> {
        let c = CommandApdu::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(PSAM_AID.to_vec())
            .map_err(|e| psam_err("command", e))?;
        tx.transmit_ok(&c)
            .map(|_| ())
            .map_err(|e| psam_err("select", e))
    }

    /// One command in a transaction; the PSAM is re-selected after a reset.
    fn run(&mut self, c: &CommandApdu) -> Result<(Vec<u8>, StatusWord), KeyError> {
        let mut tx = Transaction::begin(self.card.as_mut()).map_err(|e| psam_err("reader", e))?;
        let r = tx.transmit(c).map_err(|e| psam_err("transmit", e))?;
        if r.sw == StatusWord::ConditionsNotSatisfied {
            Self::select(&mut tx)?;
            let r = tx.transmit(c).map_err(|e| psam_err("transmit", e))?;
            return Ok((r.data, r.sw));
        }
        Ok((r.data, r.sw))
    }
}

impl KeyProvider for PsamProvider {
    fn terminal_id(&self) -> TerminalId {
        self.terminal_id
    }
    fn supports(&self, purpose: KeyPurpose) -> bool {
        matches!(
            purpose,
            KeyPurpose::Ext | KeyPurpose::Int | KeyPurpose::Purchase
        )
    }
    fn external_auth_cryptogram(
        &mut self,
        card_id: &CardId,
        challenge: &[u8; 8],
    ) -> Result<[u8; 16], KeyError> {
        let mut d = card_id.as_bytes().to_vec();
        d.extend_from_slice(challenge);
        match self.run(&cmd(0x7A, 0x01, 0x00, &d, 16)?)? {
            (data, StatusWord::Ok) => data
                .try_into()
                .map_err(|_| psam_err("cryptogram", "not 16 bytes")),
            (_, StatusWord::IncorrectData) => Err(KeyError::WrongRegion {
                card: card_id.region().to_string(),
                keys: "the PSAM's city".into(),
            }),
            (_, sw) => Err(psam_err("EXT AUTH CRYPTOGRAM", sw)),
        }
    }
    fn verify_internal_auth(
        &mut self,
        card_id: &CardId,
        random: &[u8; 8],
        answer: &[u8],
    ) -> Result<bool, KeyError> {
        if answer.len() != 16 {
            return Ok(false);
        }
        let mut d = card_id.as_bytes().to_vec();
        d.extend_from_slice(random);
        d.extend_from_slice(answer);
        match self.run(&cmd(0x7C, 0x02, 0x00, &d, 0)?)?.1 {
            StatusWord::Ok => Ok(true),
            StatusWord::AuthenticationFailed => Ok(false),
            sw => Err(psam_err("VERIFY INT AUTH", sw)),
        }
    }
    fn purchase_mac1(
        &mut self,
        i: &PurchaseInit,
    ) -> Result<(u32, [u8; 4], PurchaseSession), KeyError> {
        let mut d = i.random.to_vec();
        d.extend_from_slice(&i.counter.to_be_bytes());
        d.extend_from_slice(&i.amount.to_be_bytes());
        d.push(crate::crypto::TXN_PURCHASE);
        d.extend_from_slice(&i.date);
        d.extend_from_slice(&i.time);
        d.push(i.key_version);
        d.push(i.algorithm);
        d.extend_from_slice(i.card_id.as_bytes());
        // whatever session the PSAM held is replaced from here on
        self.open_purchase = None;
        match self.run(&cmd(0x70, 0x00, 0x00, &d, 8)?)? {
            (data, StatusWord::Ok) if data.len() == 8 => {
                let seq = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                self.open_purchase = Some(seq);
                Ok((
                    seq,
                    [data[4], data[5], data[6], data[7]],
                    PurchaseSession::in_provider(seq),
                ))
            }
            (_, sw) => Err(psam_err("INIT SAM FOR PURCHASE", sw)),
        }
    }
    fn verify_purchase_mac2(
        &mut self,
        session: PurchaseSession,
        mac2: &[u8],
    ) -> Result<bool, KeyError> {
        // the PSAM checks MAC2 with the one session it holds: refuse to check another
        // purchase's MAC2 against it
        if self.open_purchase != Some(session.terminal_seq()) {
            return Err(KeyError::Psam(format!(
                "the PSAM no longer holds the session of purchase {}",
                session.terminal_seq()
            )));
        }
        // VERIFY MAC2 ends the PSAM's session, whatever it answers
        self.open_purchase = None;
        match self.run(&cmd(0x72, 0x00, 0x00, mac2, 0)?)?.1 {
            StatusWord::Ok => Ok(true),
            StatusWord::MacInvalid => Ok(false),
            sw => Err(psam_err("VERIFY MAC2", sw)),
        }
    }
    fn load_mac2(&mut self, _: &LoadContext, _: &[u8]) -> Result<Option<[u8; 4]>, KeyError> {
        Err(KeyError::Unavailable("LOAD"))
    }
    fn line_mac(
        &mut self,
        p: KeyPurpose,
        _: &CardId,
        _: &[u8; 8],
        _: [u8; 4],
        _: &[u8],
    ) -> Result<[u8; 4], KeyError> {
        Err(KeyError::Unavailable(p.name()))
    }
}
