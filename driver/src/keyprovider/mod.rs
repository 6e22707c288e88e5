//! Key providers (card profile §4, §8): whatever computes the terminal's cryptograms.
//!
//! The card application never holds a key: it asks a [`KeyProvider`]. Two
//! implementations: [`SoftwareKeys`] (city K3 keys in memory, loaded from an encrypted
//! keystore file, see [`keystore`]) and [`psam::PsamProvider`] (the keys stay in a PSAM
//! card; the host only forwards data and cryptograms).

pub mod keystore;
pub mod psam;

use crate::crypto::{self, LoadContext, PurchaseContext};
use crate::keys::{Key16, KeyPurpose};
use crate::types::{CardId, Region, TerminalId};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Key-provider failures. `Display` never shows key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// This provider does not hold the key of that purpose (e.g. a PSAM has no LOAD key).
    #[error("key {0} not available")]
    Unavailable(&'static str),
    /// The card is of another city than the keys.
    #[error("card region {card} is not this provider's city {keys}")]
    WrongRegion { card: String, keys: String },
    /// The PSAM (or its reader) failed.
    #[error("PSAM: {0}")]
    Psam(String),
    /// The terminal sequence could not be reserved durably.
    #[error("terminal sequence: {0}")]
    Sequence(String),
}

/// What INITIALIZE FOR PURCHASE told the terminal, plus the amount and time it chose.
#[derive(Clone, Debug)]
pub struct PurchaseInit {
    pub card_id: CardId,
    pub amount: u32,
    pub counter: u16,
    pub random: [u8; 4],
    pub key_version: u8,
    pub algorithm: u8,
    pub date: [u8; 4],
    pub time: [u8; 3],
}

/// One purchase's session between MAC1 and MAC2 (card profile §6 steps 2–3), as
/// [`KeyProvider::purchase_mac1`] hands it out and
/// [`KeyProvider::verify_purchase_mac2`] takes it back: each prepared purchase carries
/// its own, so two purchases in flight cannot check each other's MAC2.
///
/// Not `Clone`; the session key is zeroized on drop and `Debug` redacts it.
pub struct PurchaseSession {
    terminal_seq: u32,
    held: Held,
}

enum Held {
    /// The terminal holds the session key (software keys).
    Key { sk: Key16, ctx: PurchaseContext },
    /// The provider keeps the session itself (a PSAM, §8): only which purchase it is.
    Provider,
}

impl PurchaseSession {
    /// A session whose key travels with it: MAC2 is checked with `sk` over `ctx`.
    pub fn with_key(ctx: PurchaseContext, sk: Key16) -> Self {
        PurchaseSession {
            terminal_seq: ctx.terminal_seq,
            held: Held::Key { sk, ctx },
        }
    }

    /// A session the provider holds itself: the value names the purchase by its
    /// terminal sequence so the provider can refuse another purchase's MAC2.
    pub fn in_provider(terminal_seq: u32) -> Self {
        PurchaseSession {
            terminal_seq,
            held: Held::Provider,
        }
    }

    /// The terminal sequence number reserved for this purchase.
    pub fn terminal_seq(&self) -> u32 {
        self.terminal_seq
    }

    /// Check the card's MAC2 with the session key (constant time); `None` when the
    /// provider holds the key.
    pub fn check_mac2(&self, mac2: &[u8]) -> Option<bool> {
        match &self.held {
            Held::Key { sk, ctx } => Some(crypto::ct_eq(&ctx.mac2(sk), mac2)),
            Held::Provider => None,
        }
    }
}

impl fmt::Debug for PurchaseSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = match self.held {
            Held::Key { .. } => "key REDACTED",
            Held::Provider => "in the provider",
        };
        f.debug_struct("PurchaseSession")
            .field("terminal_seq", &self.terminal_seq)
            .field("session", &held)
            .finish()
    }
}

/// The terminal's side of the cryptography.
pub trait KeyProvider: Send {
    /// The terminal id to put in purchases.
    fn terminal_id(&self) -> TerminalId;
    /// Whether the provider holds the key of `purpose`.
    fn supports(&self, purpose: KeyPurpose) -> bool;
    /// EXTERNAL AUTHENTICATE cryptogram for the card's challenge (§5).
    fn external_auth_cryptogram(
        &mut self,
        card_id: &CardId,
        challenge: &[u8; 8],
    ) -> Result<[u8; 16], KeyError>;
    /// Whether the card's INTERNAL AUTHENTICATE answer proves it holds Kc[INT] (§5).
    fn verify_internal_auth(
        &mut self,
        card_id: &CardId,
        random: &[u8; 8],
        answer: &[u8],
    ) -> Result<bool, KeyError>;
    /// Reserve a terminal sequence number and compute MAC1 (§6 step 2): the sequence,
    /// MAC1 and the purchase's session, for [`KeyProvider::verify_purchase_mac2`].
    fn purchase_mac1(
        &mut self,
        init: &PurchaseInit,
    ) -> Result<(u32, [u8; 4], PurchaseSession), KeyError>;
    /// Check the card's MAC2 (§6 step 3) of the purchase `session` belongs to.
    fn verify_purchase_mac2(
        &mut self,
        session: PurchaseSession,
        mac2: &[u8],
    ) -> Result<bool, KeyError>;
    /// Check the card's load MAC1 and compute the terminal's MAC2 (§7).
    fn load_mac2(
        &mut self,
        ctx: &LoadContext,
        card_mac1: &[u8],
    ) -> Result<Option<[u8; 4]>, KeyError>;
    /// Line-protection MAC (§5) with Kc of `purpose` (MAINT or PIN).
    fn line_mac(
        &mut self,
        purpose: KeyPurpose,
        card_id: &CardId,
        challenge: &[u8; 8],
        header: [u8; 4],
        data: &[u8],
    ) -> Result<[u8; 4], KeyError>;
}

/// Where a software provider takes terminal sequence numbers from. It must never hand
/// out the same number twice, across crashes (the daemon reserves them in its journal).
pub trait SequenceSource: Send {
    fn next(&mut self) -> Result<u32, KeyError>;
}

/// A sequence kept in memory (tests, `--simulate`).
#[derive(Clone, Default)]
pub struct MemorySequence(Arc<Mutex<u32>>);

impl SequenceSource for MemorySequence {
    fn next(&mut self) -> Result<u32, KeyError> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        Ok(*g)
    }
}

/// K3 keys of a city held in memory (zeroized on drop), Kc derived per card.
pub struct SoftwareKeys {
    region: Region,
    terminal_id: TerminalId,
    k3: Vec<(KeyPurpose, Key16)>,
    seq: Box<dyn SequenceSource>,
}

impl SoftwareKeys {
    pub fn new(
        region: Region,
        terminal_id: TerminalId,
        k3: Vec<(KeyPurpose, Key16)>,
        seq: Box<dyn SequenceSource>,
    ) -> Self {
        SoftwareKeys {
            region,
            terminal_id,
            k3,
            seq,
        }
    }

    /// The test keys of `vectors.json` for `region`, with the given purposes.
    pub fn test_keys(region: Region, terminal_id: TerminalId, purposes: &[KeyPurpose]) -> Self {
        let m = crate::testkeys::test_master_keys();
        let k3 = purposes.iter().map(|p| (*p, m.k3(*p, region))).collect();
        Self::new(region, terminal_id, k3, Box::new(MemorySequence::default()))
    }

    pub fn region(&self) -> Region {
        self.region
    }

    fn kc(&self, p: KeyPurpose, card_id: &CardId) -> Result<Key16, KeyError> {
        if card_id.region().city() != self.region.city() {
            return Err(KeyError::WrongRegion {
                card: card_id.region().to_string(),
                keys: self.region.to_string(),
            });
        }
        let k3 = self
            .k3
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, k)| k)
            .ok_or(KeyError::Unavailable(p.name()))?;
        Ok(crypto::derive_card_key(k3, card_id))
    }
}

impl KeyProvider for SoftwareKeys {
    fn terminal_id(&self) -> TerminalId {
        self.terminal_id
    }
    fn supports(&self, purpose: KeyPurpose) -> bool {
        self.k3.iter().any(|(p, _)| *p == purpose)
    }
    fn external_auth_cryptogram(
        &mut self,
        card_id: &CardId,
        challenge: &[u8; 8],
    ) -> Result<[u8; 16], KeyError> {
        Ok(crypto::auth_cryptogram(
            &self.kc(KeyPurpose::Ext, card_id)?,
            challenge,
        ))
    }
    fn verify_internal_auth(
        &mut self,
        card_id: &CardId,
        random: &[u8; 8],
        answer: &[u8],
    ) -> Result<bool, KeyError> {
        let want = crypto::auth_cryptogram(&self.kc(KeyPurpose::Int, card_id)?, random);
        Ok(crypto::ct_eq(&want, answer))
    }
    fn purchase_mac1(
        &mut self,
        i: &PurchaseInit,
    ) -> Result<(u32, [u8; 4], PurchaseSession), KeyError> {
        let kc = self.kc(KeyPurpose::Purchase, &i.card_id)?;
        let seq = self.seq.next()?;
        let ctx = PurchaseContext {
            card_id: i.card_id,
            amount: i.amount,
            counter: i.counter,
            random: i.random,
            terminal_id: self.terminal_id,
            terminal_seq: seq,
            date: i.date,
            time: i.time,
        };
        let sk = ctx.session_key(&kc);
        let mac1 = ctx.mac1(&sk);
        Ok((seq, mac1, PurchaseSession::with_key(ctx, sk)))
    }
    fn verify_purchase_mac2(
        &mut self,
        session: PurchaseSession,
        mac2: &[u8],
    ) -> Result<bool, KeyError> {
        session
            .check_mac2(mac2)
            .ok_or(KeyError::Unavailable("purchase session key"))
    }
    fn load_mac2(
        &mut self,
        ctx: &LoadContext,
        card_mac1: &[u8],
    ) -> Result<Option<[u8; 4]>, KeyError> {
        let skl = ctx.session_key(&self.kc(KeyPurpose::Load, &ctx.card_id)?);
        if !crypto::ct_eq(&ctx.mac1(&skl), card_mac1) {
            return Ok(None);
        }
        Ok(Some(ctx.mac2(&skl)))
    }
    fn line_mac(
        &mut self,
        purpose: KeyPurpose,
        card_id: &CardId,
        challenge: &[u8; 8],
        header: [u8; 4],
        data: &[u8],
    ) -> Result<[u8; 4], KeyError> {
        Ok(crypto::line_mac(
            &self.kc(purpose, card_id)?,
            challenge,
            header,
            data,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(seq: u32) -> PurchaseContext {
        PurchaseContext {
            card_id: "650200D1560000050011223344556677".parse().unwrap(),
            amount: 1234,
            counter: 7,
            random: [1, 2, 3, 4],
            terminal_id: "650200000001".parse().unwrap(),
            terminal_seq: seq,
            date: [0x20, 0x26, 0x11, 0x23],
            time: [0x10, 0x15, 0x00],
        }
    }

    #[test]
    fn a_purchase_session_checks_its_own_mac2_and_hides_its_key() {
        let kc = Key16::from_bytes([0x11; 16]);
        let (a, b) = (ctx(1), ctx(2));
        let (ska, skb) = (a.session_key(&kc), b.session_key(&kc));
        let (mac2_a, mac2_b) = (a.mac2(&ska), b.mac2(&skb));
        let s = PurchaseSession::with_key(a, ska.clone());
        assert_eq!(s.terminal_seq(), 1);
        assert_eq!(s.check_mac2(&mac2_a), Some(true));
        assert_eq!(s.check_mac2(&mac2_b), Some(false));
        let shown = format!("{s:?}");
        assert!(shown.contains("REDACTED"), "{shown}");
        assert!(!shown.contains(&hex::encode(ska.expose())), "{shown}");
        assert!(!shown.to_lowercase().contains("1111"), "{shown}");
        assert_eq!(PurchaseSession::in_provider(5).check_mac2(&mac2_a), None);
    }
}
