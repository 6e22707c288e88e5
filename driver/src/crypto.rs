//! The card profile's cryptography (§4 to §9) on RustCrypto's `aes` and `cmac`.
//!
//! Nothing here is hand-rolled: AES-128 block encryption and AES-CMAC come from the
//! crates; this module only lays out the bytes each formula of the profile names.

use crate::keys::{Key16, KeyPurpose};
use crate::types::{CardId, Region, TerminalId};
use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use cmac::{Cmac, Mac};
use zeroize::Zeroizing;

/// AES-128 encryption of one block (AES-ECB of 16 bytes).
pub fn aes_encrypt_block(key: &Key16, block: &[u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(GenericArray::from_slice(key.expose()));
    let mut b = GenericArray::clone_from_slice(block);
    cipher.encrypt_block(&mut b);
    b.into()
}

/// AES-128 decryption of one block.
pub fn aes_decrypt_block(key: &Key16, block: &[u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(GenericArray::from_slice(key.expose()));
    let mut b = GenericArray::clone_from_slice(block);
    cipher.decrypt_block(&mut b);
    b.into()
}

/// AES-CMAC (NIST SP 800-38B) of `parts` concatenated.
pub fn cmac(key: &Key16, parts: &[&[u8]]) -> [u8; 16] {
    let mut m = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(key.expose()));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// MAC4: the first 4 bytes of an AES-CMAC (§1).
pub fn mac4(key: &Key16, parts: &[&[u8]]) -> [u8; 4] {
    let full = cmac(key, parts);
    [full[0], full[1], full[2], full[3]]
}

/// Constant-time comparison of MACs and cryptograms.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `KDF(K, label, context) = AES-CMAC(K, 01 ‖ label ‖ 00 ‖ context ‖ 00 80)` (§4):
/// NIST SP 800-108 counter mode, one 128-bit block.
pub fn kdf(key: &Key16, label: &[u8], context: &[u8]) -> Key16 {
    let out = Zeroizing::new(cmac(
        key,
        &[&[0x01], label, &[0x00], context, &[0x00, 0x80]],
    ));
    Key16::from_bytes(*out)
}

/// Key check value: `AES-ECB(K, 01 × 16)[0..3]` (§4).
pub fn kcv(key: &Key16) -> [u8; 3] {
    let e = aes_encrypt_block(key, &[0x01; 16]);
    [e[0], e[1], e[2]]
}

/// K2 (province) from K1 (§4).
pub fn derive_k2(k1: &Key16, region: Region) -> Key16 {
    kdf(k1, b"SSC-L2", &[region.province()])
}

/// K3 (city) from K2 (§4).
pub fn derive_k3(k2: &Key16, region: Region) -> Key16 {
    kdf(k2, b"SSC-L3", &region.city())
}

/// Kc (card) from K3 (§4).
pub fn derive_card_key(k3: &Key16, card_id: &CardId) -> Key16 {
    kdf(k3, b"SSC-CARD", card_id.as_bytes())
}

/// Kc straight from K1 through the whole hierarchy.
pub fn card_key_from_master(k1: &Key16, card_id: &CardId) -> Key16 {
    let region = card_id.region();
    derive_card_key(&derive_k3(&derive_k2(k1, region), region), card_id)
}

/// The transport key of a blank card: `KDF(K_MANUF, "SSC-TRANSPORT", chip serial)` (§9).
pub fn transport_key(k_manuf: &Key16, chip_serial: &[u8; 8]) -> Key16 {
    kdf(k_manuf, b"SSC-TRANSPORT", chip_serial)
}

/// `block(x) = x ‖ 80 00…00`, padded to 16 bytes (x at most 15 bytes).
fn pad80(x: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = x.len().min(15);
    b[..n].copy_from_slice(&x[..n]);
    b[n] = 0x80;
    b
}

/// Authentication cryptogram `AES-ECB(Kc, challenge ‖ 80 00…00)`: EXTERNAL AUTHENTICATE
/// (Kc[EXT], card challenge) and INTERNAL AUTHENTICATE (Kc[INT], terminal random) (§5).
pub fn auth_cryptogram(kc: &Key16, challenge: &[u8; 8]) -> [u8; 16] {
    aes_encrypt_block(kc, &pad80(challenge))
}

/// Line-protection MAC (§5): `MAC4(Kc, challenge ‖ CLA ‖ INS ‖ P1 ‖ P2 ‖ Lc ‖ data)`,
/// where Lc counts the 4 MAC bytes and `data` excludes them.
pub fn line_mac(kc: &Key16, challenge: &[u8; 8], header: [u8; 4], data: &[u8]) -> [u8; 4] {
    let lc = (data.len() + 4) as u8;
    mac4(kc, &[challenge, &header, &[lc], data])
}

/// A purchase as both sides see it (§6): everything the session key, MAC1, MAC2 and
/// TAC are computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseContext {
    pub card_id: CardId,
    /// Amount in fen.
    pub amount: u32,
    /// The purse counter from INITIALIZE FOR PURCHASE.
    pub counter: u16,
    /// The card's random from INITIALIZE FOR PURCHASE.
    pub random: [u8; 4],
    pub terminal_id: TerminalId,
    pub terminal_seq: u32,
    /// BCD `YYYYMMDD`.
    pub date: [u8; 4],
    /// BCD `hhmmss`.
    pub time: [u8; 3],
}

/// The transaction type byte of a purchase (§6).
pub const TXN_PURCHASE: u8 = 0x06;
/// The transaction type byte of a load (§7).
pub const TXN_LOAD: u8 = 0x02;

impl PurchaseContext {
    /// `SK = AES-ECB(Kc[PURCHASE], random ‖ counter ‖ terminal seq ‖ 80 00 00 00 00 00)`.
    pub fn session_key(&self, kc_purchase: &Key16) -> Key16 {
        let mut b = Zeroizing::new([0u8; 16]);
        b[..4].copy_from_slice(&self.random);
        b[4..6].copy_from_slice(&self.counter.to_be_bytes());
        b[6..10].copy_from_slice(&self.terminal_seq.to_be_bytes());
        b[10] = 0x80;
        Key16::from_bytes(aes_encrypt_block(kc_purchase, &b))
    }

    /// `MAC1 = MAC4(SK, amount ‖ 06 ‖ terminal id ‖ date ‖ time)`.
    pub fn mac1(&self, sk: &Key16) -> [u8; 4] {
        mac4(
            sk,
            &[
                &self.amount.to_be_bytes(),
                &[TXN_PURCHASE],
                &self.terminal_id.0,
                &self.date,
                &self.time,
            ],
        )
    }

    /// `MAC2 = MAC4(SK, amount)`.
    pub fn mac2(&self, sk: &Key16) -> [u8; 4] {
        mac4(sk, &[&self.amount.to_be_bytes()])
    }

    /// `TAC = MAC4(Kc[TAC], amount ‖ 06 ‖ terminal id ‖ terminal seq ‖ date ‖ time ‖
    /// counter ‖ card id)`.
    pub fn tac(&self, kc_tac: &Key16) -> [u8; 4] {
        mac4(
            kc_tac,
            &[
                &self.amount.to_be_bytes(),
                &[TXN_PURCHASE],
                &self.terminal_id.0,
                &self.terminal_seq.to_be_bytes(),
                &self.date,
                &self.time,
                &self.counter.to_be_bytes(),
                self.card_id.as_bytes(),
            ],
        )
    }
}

/// A load (credit) as both sides see it (§7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadContext {
    pub card_id: CardId,
    /// Amount in fen.
    pub amount: u32,
    /// Balance before the load, as INITIALIZE FOR LOAD reports it.
    pub balance: u32,
    pub online_counter: u16,
    pub random: [u8; 4],
    pub terminal_id: TerminalId,
    pub date: [u8; 4],
    pub time: [u8; 3],
}

impl LoadContext {
    /// `SKL = AES-ECB(Kc[LOAD], random ‖ online counter ‖ 80 00…00)`.
    pub fn session_key(&self, kc_load: &Key16) -> Key16 {
        let mut b = Zeroizing::new([0u8; 16]);
        b[..4].copy_from_slice(&self.random);
        b[4..6].copy_from_slice(&self.online_counter.to_be_bytes());
        b[6] = 0x80;
        Key16::from_bytes(aes_encrypt_block(kc_load, &b))
    }

    /// Card's `MAC1 = MAC4(SKL, balance ‖ amount ‖ 02 ‖ terminal id)`.
    pub fn mac1(&self, skl: &Key16) -> [u8; 4] {
        mac4(
            skl,
            &[
                &self.balance.to_be_bytes(),
                &self.amount.to_be_bytes(),
                &[TXN_LOAD],
                &self.terminal_id.0,
            ],
        )
    }

    /// Terminal's `MAC2 = MAC4(SKL, amount ‖ 02 ‖ terminal id ‖ date ‖ time)`.
    pub fn mac2(&self, skl: &Key16) -> [u8; 4] {
        mac4(
            skl,
            &[
                &self.amount.to_be_bytes(),
                &[TXN_LOAD],
                &self.terminal_id.0,
                &self.date,
                &self.time,
            ],
        )
    }

    /// The balance after the load, or `None` when it would pass 2^31 − 1 (§7).
    pub fn new_balance(&self) -> Option<u32> {
        self.balance
            .checked_add(self.amount)
            .filter(|b| *b <= i32::MAX as u32)
    }

    /// `TAC = MAC4(Kc[TAC], new balance ‖ online counter ‖ amount ‖ 02 ‖ terminal id ‖
    /// date ‖ time ‖ card id)`. `None` when the new balance would overflow.
    pub fn tac(&self, kc_tac: &Key16) -> Option<[u8; 4]> {
        let nb = self.new_balance()?;
        Some(mac4(
            kc_tac,
            &[
                &nb.to_be_bytes(),
                &self.online_counter.to_be_bytes(),
                &self.amount.to_be_bytes(),
                &[TXN_LOAD],
                &self.terminal_id.0,
                &self.date,
                &self.time,
                self.card_id.as_bytes(),
            ],
        ))
    }
}

/// A key purpose's master key set, for tests, demos and issuing offices: derive any
/// level of any purpose.
pub fn derive_level(k1: &Key16, region: Region, level: u8) -> Key16 {
    match level {
        1 => k1.clone(),
        2 => derive_k2(k1, region),
        _ => derive_k3(&derive_k2(k1, region), region),
    }
}

/// Purposes a terminal or PSAM holds at K3 level (§4).
pub const TERMINAL_PURPOSES: [KeyPurpose; 3] =
    [KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase];
