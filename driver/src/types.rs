//! Identifiers of the card profile: card identification code (§2), region (§1),
//! terminal id (§6).

use std::fmt;
use std::str::FromStr;

/// Errors parsing identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what}: expected {expected}, got {got:?}")]
    Invalid {
        what: &'static str,
        expected: &'static str,
        got: String,
    },
}

fn invalid(what: &'static str, expected: &'static str, got: &str) -> IdError {
    IdError::Invalid {
        what,
        expected,
        got: got.chars().take(40).collect(),
    }
}

/// Whether every nibble is a decimal digit.
pub fn is_bcd(b: &[u8]) -> bool {
    b.iter().all(|x| x >> 4 <= 9 && x & 0x0F <= 9)
}

/// A 6-digit administrative division code, 3 bytes BCD (card profile §1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region([u8; 3]);

impl Region {
    pub fn from_bcd(b: [u8; 3]) -> Result<Self, IdError> {
        if is_bcd(&b) {
            Ok(Region(b))
        } else {
            Err(invalid("region", "3 BCD bytes", &hex::encode_upper(b)))
        }
    }
    pub fn bcd(&self) -> [u8; 3] {
        self.0
    }
    /// The province (first byte), context of K2.
    pub fn province(&self) -> u8 {
        self.0[0]
    }
    /// Province and city (first two bytes), context of K3.
    pub fn city(&self) -> [u8; 2] {
        [self.0[0], self.0[1]]
    }
}

impl FromStr for Region {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 6 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(invalid("region", "6 digits", s));
        }
        let mut b = [0u8; 3];
        hex::decode_to_slice(s, &mut b).map_err(|_| invalid("region", "6 digits", s))?;
        Ok(Region(b))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}
impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({self})")
    }
}

/// The issuer marker inside every card id: `D1 56 00 00 05` (§2).
pub const CARD_ID_MARKER: [u8; 5] = [0xD1, 0x56, 0x00, 0x00, 0x05];

/// Card identification code (卡识别码), 16 bytes: `region ‖ D1 56 00 00 05 ‖ chip serial`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardId([u8; 16]);

impl CardId {
    /// Build from region and chip serial.
    pub fn new(region: Region, chip_serial: [u8; 8]) -> Self {
        let mut b = [0u8; 16];
        b[..3].copy_from_slice(&region.bcd());
        b[3..8].copy_from_slice(&CARD_ID_MARKER);
        b[8..].copy_from_slice(&chip_serial);
        CardId(b)
    }
    /// Parse 16 bytes, checking the region's BCD and the marker.
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 16] = b
            .try_into()
            .map_err(|_| invalid("card id", "16 bytes", &hex::encode_upper(b)))?;
        let region_ok = is_bcd(&arr[..3]);
        if !region_ok || arr[3..8] != CARD_ID_MARKER {
            return Err(invalid(
                "card id",
                "region ‖ D156000005 ‖ serial",
                &hex::encode_upper(b),
            ));
        }
        Ok(CardId(arr))
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    pub fn region(&self) -> Region {
        Region([self.0[0], self.0[1], self.0[2]])
    }
    pub fn chip_serial(&self) -> [u8; 8] {
        let mut s = [0u8; 8];
        s.copy_from_slice(&self.0[8..]);
        s
    }
    /// 32 upper-case hex digits, as the API shows it.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }
}

impl FromStr for CardId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| invalid("card id", "32 hex digits", s))?;
        CardId::from_bytes(&b)
    }
}

impl fmt::Display for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardId({self})")
    }
}

/// A terminal id: 6 bytes, shown as 12 hex digits (§6).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TerminalId(pub [u8; 6]);

impl TerminalId {
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }
}

impl FromStr for TerminalId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut b = [0u8; 6];
        hex::decode_to_slice(s, &mut b).map_err(|_| invalid("terminal id", "12 hex digits", s))?;
        Ok(TerminalId(b))
    }
}

impl fmt::Display for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TerminalId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_id_layout() {
        let region: Region = "650200".parse().unwrap();
        let id = CardId::new(region, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
        assert_eq!(id.to_hex(), "650200D1560000050011223344556677");
        assert_eq!(id.to_hex().parse::<CardId>().unwrap(), id);
        assert_eq!(id.region(), region);
        assert!("650200D1560000060011223344556677"
            .parse::<CardId>()
            .is_err());
        assert!("6502".parse::<Region>().is_err());
        assert!("65020A".parse::<Region>().is_err());
    }
}
