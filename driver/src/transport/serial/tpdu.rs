//! Short APDUs as T=0 TPDUs (ISO 7816-3 §12.2), for readers that exchange TPDUs (every
//! GemPC Twin / GemCore serial reader declares TPDU-level exchange).
//!
//! The reader runs the procedure bytes (ACK, NULL, `60`) itself and answers the data
//! and SW1-SW2. What the host does is the mapping of the command:
//!
//! | case | command APDU          | C-TPDU                    |
//! |------|-----------------------|---------------------------|
//! | 1    | header                | header ‖ `00`             |
//! | 2S   | header ‖ Le           | header ‖ Le               |
//! | 3S   | header ‖ Lc ‖ data    | header ‖ Lc ‖ data        |
//! | 4S   | header ‖ Lc ‖ data ‖ Le | header ‖ Lc ‖ data (Le dropped) |
//!
//! A case 4 command is answered `61xx`, and a case 2 command with a wrong Le `6Cxx`:
//! both are left to [`crate::transport::Transaction`], which applies the T=0 rules
//! above every backend.

use crate::apdu::{ApduCase, CommandApdu};
use crate::transport::TransportError;
use zeroize::Zeroizing;

/// The C-TPDU that carries `apdu` (its bytes) over T=0.
pub fn t0_command(apdu: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    let c = CommandApdu::parse(apdu)?;
    if c.needs_extended() {
        return Err(TransportError::Protocol(
            "T=0 carries short APDUs only (Lc up to 255, Le up to 256)".into(),
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(5 + c.data().len()));
    out.extend_from_slice(&[c.cla, c.ins, c.p1, c.p2]);
    match c.case() {
        ApduCase::Case1 => out.push(0),
        ApduCase::Case2 => out.push(c.le.map_or(0, |le| (le % 256) as u8)),
        ApduCase::Case3 | ApduCase::Case4 => {
            out.push(c.data().len() as u8);
            out.extend_from_slice(c.data());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn the_four_cases() {
        assert_eq!(*t0_command(&h("00A4 0000")).unwrap(), h("00A4000000"));
        assert_eq!(*t0_command(&h("00B2 0104 00")).unwrap(), h("00B2010400"));
        assert_eq!(*t0_command(&h("00B2 0104 1A")).unwrap(), h("00B201041A"));
        assert_eq!(
            *t0_command(&h("00A4 0400 02 DF01")).unwrap(),
            h("00A4040002DF01")
        );
        assert_eq!(
            *t0_command(&h("8050 0102 0B 0102030405060708090A0B 10")).unwrap(),
            h("805001020B0102030405060708090A0B")
        );
    }

    #[test]
    fn extended_and_malformed_are_refused() {
        assert!(matches!(
            t0_command(&h("00B0 0000 000200")),
            Err(TransportError::Protocol(_))
        ));
        assert!(matches!(
            t0_command(&h("00B0")),
            Err(TransportError::Apdu(_))
        ));
        assert!(matches!(
            t0_command(&h("00D6 0000 05 0102")),
            Err(TransportError::Apdu(_))
        ));
    }
}
