//! Behaviour knobs for tests: protocol, ATR, delays, tears, a mute card.

use serde::{Deserialize, Serialize};

/// Which ATR the card answers with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtrChoice {
    /// Follow the T=0 knob: [`T0_ATR`] in T=0 mode, else [`t1_atr`].
    #[default]
    Auto,
    T0,
    T1,
    /// Any bytes (hex in JSON), e.g. a malformed ATR for reader tests.
    Custom(String),
}

/// T=0 only, Fi=372/Di=1, historical bytes "SSC-AES v1".
pub const T0_ATR: [u8; 14] = [
    0x3B, 0x6A, 0x00, 0x00, b'S', b'S', b'C', b'-', b'A', b'E', b'S', b' ', b'v', b'1',
];

/// T=1 (TD1 = 81, TD2 = 31: T=1 with TA3 IFSC 254 / TB3 BWI 4 CWI 5), historical bytes
/// "SSC-AES v1", TCK.
pub fn t1_atr() -> Vec<u8> {
    // T0 = DA: TA1 TC1 TD1 present (Y1 = D), K = 10 historical bytes;
    // TA1 = 11 (Fi 372, Di 1), TC1 = FF, TD1 = 81 (TD2 follows, T=1),
    // TD2 = 31 (TA3 TB3 follow, T=1), TA3 = FE (IFSC 254), TB3 = 45 (BWI 4, CWI 5)
    let mut a = vec![0x3B, 0xDA, 0x11, 0xFF, 0x81, 0x31, 0xFE, 0x45];
    a.extend_from_slice(b"SSC-AES v1");
    let tck = a[1..].iter().fold(0u8, |x, b| x ^ b);
    a.push(tck);
    a
}

/// Tear the card out after the Nth command with this INS (one-shot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tear {
    pub ins: u8,
    /// 1 = the first such command.
    pub nth: u32,
    /// Process (and commit) the command before leaving, or leave before it.
    pub commit: bool,
}

/// The knobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    /// T=0: case-4 answers become `61xx` and the data comes with GET RESPONSE.
    pub t0: bool,
    pub atr: AtrChoice,
    /// Delay before every answer.
    pub delay_ms: u64,
    pub tear: Option<Tear>,
    /// Never answer.
    pub mute: bool,
}

impl Knobs {
    /// The ATR these knobs choose.
    pub fn atr_bytes(&self) -> Vec<u8> {
        match &self.atr {
            AtrChoice::Auto if self.t0 => T0_ATR.to_vec(),
            AtrChoice::Auto => t1_atr(),
            AtrChoice::T0 => T0_ATR.to_vec(),
            AtrChoice::T1 => t1_atr(),
            AtrChoice::Custom(h) => hex::decode(h).unwrap_or_else(|_| T0_ATR.to_vec()),
        }
    }

    /// Parse a tear spec `INS:N[:commit|nocommit]` (INS in hex), as `sscard-vcard`
    /// takes it.
    pub fn parse_tear(s: &str) -> Result<Tear, String> {
        let mut it = s.split(':');
        let ins = it
            .next()
            .and_then(|x| u8::from_str_radix(x.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| format!("tear {s:?}: INS must be a hex byte"))?;
        let nth = it
            .next()
            .and_then(|x| x.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("tear {s:?}: N must be a number from 1"))?;
        let commit = match it.next() {
            None | Some("commit") => true,
            Some("nocommit") => false,
            Some(x) => return Err(format!("tear {s:?}: {x:?} is not commit or nocommit")),
        };
        Ok(Tear { ins, nth, commit })
    }
}
