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
use std::sync::{Arc, Mutex};

/// Key-provider failures.
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
    /// Reserve a terminal sequence number and compute MAC1 (§6 step 2); the session
    /// key stays inside the provider for [`KeyProvider::verify_purchase_mac2`].
    fn purchase_mac1(&mut self, init: &PurchaseInit) -> Result<(u32, [u8; 4]), KeyError>;
    /// Check the card's MAC2 of the purchase begun by the last `purchase_mac1`.
    fn verify_purchase_mac2(&mut self, mac2: &[u8]) -> Result<bool, KeyError>;
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
    session: Option<(Key16, PurchaseContext)>,
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
            session: None,
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
    fn purchase_mac1(&mut self, i: &PurchaseInit) -> Result<(u32, [u8; 4]), KeyError> {
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
        self.session = Some((sk, ctx));
        Ok((seq, mac1))
    }
    fn verify_purchase_mac2(&mut self, mac2: &[u8]) -> Result<bool, KeyError> {
        let (sk, ctx) = self
            .session
            .take()
            .ok_or(KeyError::Unavailable("purchase session"))?;
        Ok(crypto::ct_eq(&ctx.mac2(&sk), mac2))
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
