//! Key material (card profile §4): 16-byte AES keys that zeroize on drop and never print.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 16-byte AES-128 key. `Debug` prints only its check value's absence: never the key.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Key16([u8; 16]);

impl Key16 {
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Key16(b)
    }

    /// From a slice of exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(Key16)
    }

    /// From 32 hex digits. The error says nothing about the input.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let mut b = zeroize::Zeroizing::new([0u8; 16]);
        hex::decode_to_slice(s.trim(), &mut *b).map_err(|_| KeyError::BadHex)?;
        Ok(Key16(*b))
    }

    /// The raw bytes, for the cipher only.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for Key16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key16(REDACTED)")
    }
}

/// Why key text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key must be 32 hex digits")]
    BadHex,
}

/// The seven key purposes; the discriminant is the key number in commands (§4).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum KeyPurpose {
    /// EXTERNAL AUTHENTICATE: the terminal proves itself.
    Ext = 1,
    /// INTERNAL AUTHENTICATE: the card proves it is genuine.
    Int = 2,
    /// Line-protection MAC on UPDATE RECORD, APPLICATION BLOCK / UNBLOCK.
    Maint = 3,
    /// MAC on RELOAD PIN.
    Pin = 4,
    /// Purse debit session keys.
    Purchase = 5,
    /// Purse credit session keys.
    Load = 6,
    /// Transaction authorization codes.
    Tac = 7,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 7] = [
        KeyPurpose::Ext,
        KeyPurpose::Int,
        KeyPurpose::Maint,
        KeyPurpose::Pin,
        KeyPurpose::Purchase,
        KeyPurpose::Load,
        KeyPurpose::Tac,
    ];

    /// The key number used in commands.
    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.id() == id)
    }

    /// The name used in the card profile and `vectors.json` (`EXT`, `PURCHASE`…).
    pub fn name(self) -> &'static str {
        match self {
            KeyPurpose::Ext => "EXT",
            KeyPurpose::Int => "INT",
            KeyPurpose::Maint => "MAINT",
            KeyPurpose::Pin => "PIN",
            KeyPurpose::Purchase => "PURCHASE",
            KeyPurpose::Load => "LOAD",
            KeyPurpose::Tac => "TAC",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }
}

/// The seven card keys Kc of one card (what the emulator holds; a terminal never does).
#[derive(Clone)]
pub struct CardKeys {
    keys: [Key16; 7],
}

impl CardKeys {
    pub fn new(f: impl Fn(KeyPurpose) -> Key16) -> Self {
        CardKeys {
            keys: KeyPurpose::ALL.map(f),
        }
    }
    pub fn get(&self, p: KeyPurpose) -> &Key16 {
        &self.keys[p.id() as usize - 1]
    }
}

impl fmt::Debug for CardKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardKeys(REDACTED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print() {
        let k = Key16::from_hex("000102030405060708090A0B0C0D0E0F").unwrap();
        assert_eq!(format!("{k:?}"), "Key16(REDACTED)");
        assert!(Key16::from_hex("zz").is_err());
        assert_eq!(KeyError::BadHex.to_string(), "a key must be 32 hex digits");
    }

    #[test]
    fn purposes() {
        for p in KeyPurpose::ALL {
            assert_eq!(KeyPurpose::from_id(p.id()), Some(p));
            assert_eq!(KeyPurpose::from_name(p.name()), Some(p));
        }
        assert_eq!(KeyPurpose::Purchase.id(), 5);
    }
}
