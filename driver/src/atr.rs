//! Answer-to-Reset (ISO/IEC 7816-3 §8): TS, T0, the TA/TB/TC/TD interface-byte chains,
//! historical bytes and TCK, with the offered protocols, Fi/Di and the resulting baud
//! rate, and a human description for technicians.

use crate::transport::Protocol;
use std::fmt::Write;

/// Why bytes are not an ATR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AtrError {
    #[error("empty ATR")]
    Empty,
    #[error("TS = {0:02X}: neither 3B (direct) nor 3F (inverse convention)")]
    BadTs(u8),
    #[error("ATR truncated: {expected} bytes announced, {got} present")]
    Truncated { expected: usize, got: usize },
    /// The check byte is wrong: `expected` is the TCK that makes the XOR of T0..TCK
    /// zero (ISO 7816-3 §8.2.5), `got` the byte received.
    #[error("TCK mismatch: expected {expected:02X}, got {got:02X}")]
    TckMismatch { expected: u8, got: u8 },
    #[error("{0} bytes after the ATR")]
    TrailingBytes(usize),
    #[error("ATR of {0} bytes is longer than ISO 7816-3 allows (33)")]
    TooLong(usize),
}

/// One thing wrong with an ATR, as [`Atr::analyse`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtrProblem {
    /// TS is neither `3B` nor `3F` (the rest is read as direct convention).
    BadTs(u8),
    /// More than the 33 bytes ISO 7816-3 allows.
    TooLong(usize),
    /// The ATR ends where T0 or a TDi announces a byte (`T0`, `TB2`…), at offset `at`.
    Missing { byte: String, at: usize },
    /// Fewer historical bytes than T0's K announces.
    HistoricalMissing { announced: usize, present: usize },
    /// A protocol other than T=0 is offered, so TCK must end the ATR, and it does not.
    TckMissing,
    /// TCK is not the XOR of T0 to the byte before it.
    TckMismatch { expected: u8, got: u8 },
    /// Bytes after the end; `looks_like_tck`: one byte after a T=0-only ATR that would
    /// be its TCK (T=0 alone has none).
    TrailingBytes {
        bytes: Vec<u8>,
        looks_like_tck: bool,
    },
}

impl AtrProblem {
    /// The [`AtrError`] of [`Atr::parse`] for this problem in an ATR of `len` bytes.
    fn error(&self, len: usize) -> AtrError {
        match self {
            AtrProblem::BadTs(x) => AtrError::BadTs(*x),
            AtrProblem::TooLong(n) => AtrError::TooLong(*n),
            AtrProblem::Missing { at, .. } => AtrError::Truncated {
                expected: at + 1,
                got: len,
            },
            AtrProblem::HistoricalMissing { announced, present } => AtrError::Truncated {
                expected: len + announced - present,
                got: len,
            },
            AtrProblem::TckMissing => AtrError::Truncated {
                expected: len + 1,
                got: len,
            },
            AtrProblem::TckMismatch { expected, got } => AtrError::TckMismatch {
                expected: *expected,
                got: *got,
            },
            AtrProblem::TrailingBytes { bytes, .. } => AtrError::TrailingBytes(bytes.len()),
        }
    }
}

impl std::fmt::Display for AtrProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AtrProblem::BadTs(x) => write!(
                f,
                "TS = {x:02X} is neither 3B (direct) nor 3F (inverse convention); read as direct"
            ),
            AtrProblem::TooLong(n) => write!(f, "{n} bytes: longer than the 33 ISO 7816-3 allows"),
            AtrProblem::Missing { byte, at } => {
                write!(f, "the ATR ends at byte {at}, where {byte} is announced")
            }
            AtrProblem::HistoricalMissing { announced, present } => write!(
                f,
                "historical bytes missing: T0 announces {announced}, {present} present"
            ),
            AtrProblem::TckMissing => f.write_str(
                "TCK missing: a protocol other than T=0 is offered, so a check byte must end the ATR",
            ),
            AtrProblem::TckMismatch { expected, got } => {
                write!(f, "wrong TCK: {got:02X}, the XOR of T0 onwards needs {expected:02X}")
            }
            AtrProblem::TrailingBytes { bytes, looks_like_tck } => {
                write!(
                    f,
                    "{} byte(s) after the end: {}",
                    bytes.len(),
                    hex::encode_upper(bytes)
                )?;
                if *looks_like_tck {
                    f.write_str(" (a TCK, though only T=0 is offered, which has none)")?;
                }
                Ok(())
            }
        }
    }
}

/// An ATR read as far as it goes ([`Atr::analyse`]): what could be decoded, and what is
/// wrong with it (nothing, for a valid ATR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtrAnalysis {
    /// The bytes decoded (interface groups up to the first missing byte, the historical
    /// bytes present, the byte read as TCK).
    pub atr: Atr,
    pub problems: Vec<AtrProblem>,
}

impl AtrAnalysis {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// The decode, then what is wrong.
    pub fn describe(&self) -> String {
        let mut s = self.atr.describe_as_read(self.problems.is_empty());
        if !self.problems.is_empty() {
            let _ = write!(s, "\nINVALID ATR:");
            for p in &self.problems {
                let _ = write!(s, "\n- {p}");
            }
        }
        s
    }
}

/// Transmission convention (TS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    Direct,
    Inverse,
}

/// One group of interface bytes TAi, TBi, TCi and the protocol its TDi names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceGroup {
    pub ta: Option<u8>,
    pub tb: Option<u8>,
    pub tc: Option<u8>,
    pub td: Option<u8>,
}

/// A parsed ATR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atr {
    raw: Vec<u8>,
    pub convention: Convention,
    pub t0: u8,
    /// Groups 1, 2, 3…: `groups[0]` holds TA1/TB1/TC1/TD1.
    pub groups: Vec<InterfaceGroup>,
    pub historical: Vec<u8>,
    pub tck: Option<u8>,
}

/// Fi and fmax (MHz ×10) by TA1's high nibble (ISO 7816-3 Table 7); `None` is RFU.
fn fi_fmax(i: u8) -> Option<(u32, u32)> {
    Some(match i {
        0x0 => (372, 40),
        0x1 => (372, 50),
        0x2 => (558, 60),
        0x3 => (744, 80),
        0x4 => (1116, 120),
        0x5 => (1488, 160),
        0x6 => (1860, 200),
        0x9 => (512, 50),
        0xA => (768, 75),
        0xB => (1024, 100),
        0xC => (1536, 150),
        0xD => (2048, 200),
        _ => return None,
    })
}

/// Di by TA1's low nibble (ISO 7816-3 Table 8); `None` is RFU.
fn di(i: u8) -> Option<u32> {
    Some(match i {
        0x1 => 1,
        0x2 => 2,
        0x3 => 4,
        0x4 => 8,
        0x5 => 16,
        0x6 => 32,
        0x7 => 64,
        0x8 => 12,
        0x9 => 20,
        _ => return None,
    })
}

/// The default reader clock used for baud rates when none is given: 3.5712 MHz
/// (the common ISO 7816 clock that gives 9600 baud at Fi=372, Di=1).
pub const DEFAULT_CLOCK_HZ: u32 = 3_571_200;

impl Atr {
    /// Parse bytes received from the card (inverse-convention ATRs as delivered by
    /// PC/SC readers, i.e. already converted, start with 3F). The first thing wrong is
    /// the error; [`Atr::analyse`] reads a malformed ATR as far as it goes.
    pub fn parse(b: &[u8]) -> Result<Atr, AtrError> {
        let a = Atr::analyse(b)?;
        match a.problems.first() {
            None => Ok(a.atr),
            Some(p) => Err(p.error(b.len())),
        }
    }

    /// Read `b` as an ATR as far as it goes, as pcsc-tools' `ATR_analysis` does: every
    /// byte that is there is decoded, and every thing wrong (ISO 7816-3 §8.2: TS, the
    /// interface bytes T0 and TDi announce, the K historical bytes, TCK when a
    /// protocol other than T=0 is offered, nothing after) is named. Real cards send
    /// such ATRs, and the technician needs the decode most then. Only an empty ATR
    /// cannot be read at all.
    pub fn analyse(b: &[u8]) -> Result<AtrAnalysis, AtrError> {
        let ts = *b.first().ok_or(AtrError::Empty)?;
        let mut problems = Vec::new();
        let convention = match ts {
            0x3B => Convention::Direct,
            0x3F => Convention::Inverse,
            x => {
                problems.push(AtrProblem::BadTs(x));
                Convention::Direct
            }
        };
        if b.len() > 33 {
            problems.push(AtrProblem::TooLong(b.len()));
        }
        let mut atr = Atr {
            raw: b.to_vec(),
            convention,
            t0: 0,
            groups: Vec::new(),
            historical: Vec::new(),
            tck: None,
        };
        let Some(&t0) = b.get(1) else {
            problems.push(AtrProblem::Missing {
                byte: "T0".into(),
                at: 1,
            });
            return Ok(AtrAnalysis { atr, problems });
        };
        atr.t0 = t0;
        let mut i = 2;
        let mut y = t0 >> 4;
        let mut offers_not_t0 = false;
        'groups: loop {
            let mut g = InterfaceGroup::default();
            let n = atr.groups.len() + 1;
            let mut missing = None;
            for (bit, slot, name) in [
                (1u8, &mut g.ta, 'A'),
                (2, &mut g.tb, 'B'),
                (4, &mut g.tc, 'C'),
                (8, &mut g.td, 'D'),
            ] {
                if y & bit != 0 {
                    let Some(&v) = b.get(i) else {
                        missing = Some(format!("T{name}{n}"));
                        break;
                    };
                    *slot = Some(v);
                    i += 1;
                }
            }
            if let Some(byte) = missing {
                atr.groups.push(g);
                problems.push(AtrProblem::Missing { byte, at: i });
                break 'groups;
            }
            if g.td.is_some_and(|td| td & 0x0F != 0) {
                offers_not_t0 = true;
            }
            atr.groups.push(g);
            match g.td {
                Some(td) => y = td >> 4,
                None => break,
            }
        }
        if problems
            .iter()
            .any(|p| matches!(p, AtrProblem::Missing { .. }))
        {
            return Ok(AtrAnalysis { atr, problems });
        }
        let k = usize::from(t0 & 0x0F);
        let rest = b.get(i..).unwrap_or(&[]);
        let hist = rest.len().min(k);
        atr.historical = rest[..hist].to_vec();
        if hist < k {
            problems.push(AtrProblem::HistoricalMissing {
                announced: k,
                present: hist,
            });
        }
        let after = &rest[hist..];
        let trailing = if offers_not_t0 {
            match after.split_first() {
                None => {
                    problems.push(AtrProblem::TckMissing);
                    &[][..]
                }
                Some((&got, more)) => {
                    let expected = b[1..i + hist].iter().fold(0u8, |a, v| a ^ v);
                    atr.tck = Some(got);
                    if expected != got {
                        problems.push(AtrProblem::TckMismatch { expected, got });
                    }
                    more
                }
            }
        } else {
            after
        };
        if !trailing.is_empty() {
            let xor = b[1..b.len() - 1].iter().fold(0u8, |a, v| a ^ v);
            problems.push(AtrProblem::TrailingBytes {
                bytes: trailing.to_vec(),
                // one byte after a T=0-only ATR that checks as a TCK would
                looks_like_tck: !offers_not_t0 && trailing.len() == 1 && xor == trailing[0],
            });
        }
        Ok(AtrAnalysis { atr, problems })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Protocols offered, in the order the TDi name them, each once (TD1, TD2… low
    /// nibbles; T=0 when none is named). T=15 is global bytes, not a protocol.
    pub fn protocol_numbers(&self) -> Vec<u8> {
        let mut v: Vec<u8> = Vec::new();
        for t in self.groups.iter().filter_map(|g| g.td.map(|td| td & 0x0F)) {
            if t != 15 && !v.contains(&t) {
                v.push(t);
            }
        }
        if v.is_empty() {
            v.push(0);
        }
        v
    }

    /// The transmission protocols this driver speaks, among those offered.
    pub fn protocols(&self) -> Vec<Protocol> {
        self.protocol_numbers()
            .into_iter()
            .filter_map(|t| match t {
                0 => Some(Protocol::T0),
                1 => Some(Protocol::T1),
                _ => None,
            })
            .collect()
    }

    /// TA1, or the default 11 (Fi=372, Di=1).
    pub fn ta1(&self) -> u8 {
        self.groups.first().and_then(|g| g.ta).unwrap_or(0x11)
    }

    /// Fi (clock rate conversion integer), `None` for an RFU value.
    pub fn fi(&self) -> Option<u32> {
        fi_fmax(self.ta1() >> 4).map(|x| x.0)
    }

    /// fmax in Hz.
    pub fn fmax_hz(&self) -> Option<u32> {
        fi_fmax(self.ta1() >> 4).map(|x| x.1 * 100_000)
    }

    /// Di (baud rate adjustment integer), `None` for an RFU value.
    pub fn di(&self) -> Option<u32> {
        di(self.ta1() & 0x0F)
    }

    /// Baud rate at a given clock: `clock × Di / Fi`.
    pub fn baud_rate(&self, clock_hz: u32) -> Option<u32> {
        Some((clock_hz as u64 * self.di()? as u64 / self.fi()? as u64) as u32)
    }

    /// Extra guard time N (TC1).
    pub fn extra_guard_time(&self) -> u8 {
        self.groups.first().and_then(|g| g.tc).unwrap_or(0)
    }

    /// Specific mode (TA2 present): the protocol the card is fixed to, and whether the
    /// Fi/Di of TA1 apply (bit 5 clear) or are implicit.
    pub fn specific_mode(&self) -> Option<(u8, bool)> {
        self.groups
            .get(1)
            .and_then(|g| g.ta)
            .map(|ta2| (ta2 & 0x0F, ta2 & 0x10 == 0))
    }

    /// Waiting time integer WI for T=0 (TC2, default 10).
    pub fn wi(&self) -> u8 {
        self.groups.get(1).and_then(|g| g.tc).unwrap_or(10)
    }

    /// The first group after the TD that names protocol `t` (its TA/TB/TC are
    /// protocol-specific).
    fn group_for(&self, t: u8) -> Option<&InterfaceGroup> {
        self.groups
            .windows(2)
            .skip(1)
            .find(|w| w[0].td.map(|td| td & 0x0F) == Some(t))
            .map(|w| &w[1])
    }

    /// T=1 IFSC (first TA for T=1 from group 3 on, default 32).
    pub fn ifsc(&self) -> u8 {
        self.group_for(1).and_then(|g| g.ta).unwrap_or(32)
    }

    /// T=1 (BWI, CWI) from the first TB for T=1 (defaults 4, 13).
    pub fn bwi_cwi(&self) -> (u8, u8) {
        self.group_for(1)
            .and_then(|g| g.tb)
            .map(|tb| (tb >> 4, tb & 0x0F))
            .unwrap_or((4, 13))
    }

    /// Whether the T=1 epilogue is a CRC (first TC for T=1, bit 1), not the LRC.
    pub fn t1_crc(&self) -> bool {
        self.group_for(1)
            .and_then(|g| g.tc)
            .is_some_and(|tc| tc & 0x01 != 0)
    }

    /// The first TB for T=1 as it is (BWI high nibble, CWI low), if present.
    pub fn tb_t1(&self) -> Option<u8> {
        self.group_for(1).and_then(|g| g.tb)
    }

    /// Clock stop and class indicator (first TA for T=15).
    pub fn clock_stop_and_class(&self) -> Option<(u8, u8)> {
        self.group_for(15)
            .and_then(|g| g.ta)
            .map(|ta| (ta >> 6, ta & 0x3F))
    }

    /// A multi-line description for a technician.
    pub fn describe(&self) -> String {
        self.describe_as_read(true)
    }

    /// The description; of a valid ATR (`valid`), or of the part of one that was read.
    fn describe_as_read(&self, valid: bool) -> String {
        let mut s = String::new();
        let hexs = self
            .raw
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(s, "ATR: {hexs}");
        let ts = self.raw.first().copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "TS = {ts:02X}: {}",
            match ts {
                0x3B => "direct convention",
                0x3F => "inverse convention",
                _ => "undefined",
            }
        );
        if self.raw.len() < 2 {
            return s.trim_end().to_string();
        }
        let _ = writeln!(
            s,
            "T0 = {:02X}: Y1 = {:04b}, K = {} historical bytes",
            self.t0,
            self.t0 >> 4,
            self.t0 & 0x0F
        );
        for (n, g) in self.groups.iter().enumerate() {
            let i = n + 1;
            if let Some(ta) = g.ta {
                let what = match i {
                    1 => match (self.fi(), self.di(), self.fmax_hz()) {
                        (Some(fi), Some(di), Some(fm)) => format!(
                            "Fi = {fi}, Di = {di}, fmax = {:.1} MHz; {} baud at {:.4} MHz",
                            fm as f64 / 1e6,
                            self.baud_rate(DEFAULT_CLOCK_HZ).unwrap_or(0),
                            DEFAULT_CLOCK_HZ as f64 / 1e6
                        ),
                        _ => "Fi/Di: reserved value".into(),
                    },
                    2 => format!(
                        "specific mode, protocol T={}, {}",
                        ta & 0x0F,
                        if ta & 0x10 == 0 {
                            "Fi/Di from TA1"
                        } else {
                            "implicit Fi/Di"
                        }
                    ),
                    _ => self.protocol_specific(i, 'A', ta),
                };
                let _ = writeln!(s, "TA{i} = {ta:02X}: {what}");
            }
            if let Some(tb) = g.tb {
                let what = match i {
                    1 | 2 => "programming voltage (deprecated)".to_string(),
                    _ => self.protocol_specific(i, 'B', tb),
                };
                let _ = writeln!(s, "TB{i} = {tb:02X}: {what}");
            }
            if let Some(tc) = g.tc {
                let what = match i {
                    1 => format!(
                        "extra guard time N = {tc}{}",
                        if tc == 255 { " (minimum)" } else { "" }
                    ),
                    2 => format!("T=0 waiting time integer WI = {tc}"),
                    _ => self.protocol_specific(i, 'C', tc),
                };
                let _ = writeln!(s, "TC{i} = {tc:02X}: {what}");
            }
            if let Some(td) = g.td {
                let _ = writeln!(
                    s,
                    "TD{i} = {td:02X}: protocol T={}, next group: {:04b}",
                    td & 0x0F,
                    td >> 4
                );
            }
        }
        let hist = String::from_utf8_lossy(&self.historical)
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '.'
                }
            })
            .collect::<String>();
        let _ = writeln!(
            s,
            "historical bytes: {} (\"{hist}\")",
            self.historical
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        match (self.tck, valid) {
            (Some(t), true) => {
                let _ = writeln!(s, "TCK = {t:02X} (correct)");
            }
            (Some(t), false) => {
                let _ = writeln!(s, "TCK = {t:02X}");
            }
            (None, true) => {
                let _ = writeln!(s, "no TCK (T=0 only)");
            }
            (None, false) => {}
        }
        let protos: Vec<String> = self
            .protocol_numbers()
            .iter()
            .map(|t| format!("T={t}"))
            .collect();
        let _ = write!(s, "protocols offered: {}", protos.join(", "));
        s
    }

    fn protocol_specific(&self, i: usize, which: char, v: u8) -> String {
        let t = self
            .groups
            .get(i - 2)
            .and_then(|g| g.td)
            .map(|td| td & 0x0F);
        match (t, which) {
            (Some(1), 'A') => format!("T=1 IFSC = {v}"),
            (Some(1), 'B') => format!("T=1 BWI = {}, CWI = {}", v >> 4, v & 0x0F),
            (Some(1), 'C') => format!(
                "T=1 error detection: {}",
                if v & 1 == 1 { "CRC" } else { "LRC" }
            ),
            (Some(15), 'A') => format!("clock stop {}, class {:06b}", v >> 6, v & 0x3F),
            (Some(t), _) => format!("specific to T={t}"),
            (None, _) => "unknown".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn t0_atr() {
        let a = Atr::parse(&h("3B 6A 00 00 53 53 43 2D 41 45 53 20 76 31")).unwrap();
        assert_eq!(a.protocols(), vec![Protocol::T0]);
        assert_eq!(a.tck, None);
        assert_eq!(a.historical, b"SSC-AES v1");
        assert_eq!((a.fi(), a.di()), (Some(372), Some(1)));
        assert_eq!(a.baud_rate(DEFAULT_CLOCK_HZ), Some(9600));
    }

    #[test]
    fn t1_atr_with_tck_and_protocol_bytes() {
        let mut b = h("3B DA 18 FF 81 31 FE 45 53 53 43 2D 41 45 53 20 76 31");
        b.push(b[1..].iter().fold(0, |x, y| x ^ y));
        let a = Atr::parse(&b).unwrap();
        assert_eq!(a.protocols(), vec![Protocol::T1]);
        assert_eq!((a.fi(), a.di()), (Some(372), Some(12)));
        assert_eq!(a.baud_rate(DEFAULT_CLOCK_HZ), Some(115_200));
        assert_eq!(a.ifsc(), 254);
        assert_eq!(a.bwi_cwi(), (4, 5));
        assert_eq!(a.extra_guard_time(), 255);
        let d = a.describe();
        assert!(d.contains("T=1 IFSC = 254"), "{d}");
        assert!(d.contains("115200 baud"), "{d}");
        // a flipped byte breaks the TCK
        let tck = b[b.len() - 1];
        b[5] ^= 1;
        assert_eq!(
            Atr::parse(&b),
            Err(AtrError::TckMismatch {
                expected: tck ^ 1,
                got: tck
            })
        );
    }

    #[test]
    fn dual_protocol_and_t15() {
        // T=0 with T=15 global bytes (clock stop, class A and B)
        let mut c = h("3B 9F 95 80 1F C3 80 31 E0 73 FE 21 1B 64 07 68 9A 00 82 90 00");
        c.push(c[1..].iter().fold(0, |x, y| x ^ y));
        let a = Atr::parse(&c).unwrap();
        assert_eq!(a.protocol_numbers(), vec![0]);
        assert_eq!(a.clock_stop_and_class(), Some((3, 3)));
    }

    #[test]
    fn protocols_listed_once_in_order() {
        // TD1 = 81 (T=1), TD2 = 80 (T=0), TD3 = 01 (T=1 again)
        let mut b = h("3B 80 81 80 01");
        b.push(b[1..].iter().fold(0, |x, y| x ^ y));
        let a = Atr::parse(&b).unwrap();
        assert_eq!(a.protocol_numbers(), vec![1, 0]);
        assert_eq!(a.protocols(), vec![Protocol::T1, Protocol::T0]);
    }

    #[test]
    fn errors() {
        assert_eq!(Atr::parse(&[]), Err(AtrError::Empty));
        assert_eq!(Atr::parse(&[0x3C, 0]), Err(AtrError::BadTs(0x3C)));
        assert!(matches!(
            Atr::parse(&h("3B 6A 00 00 53")),
            Err(AtrError::Truncated { .. })
        ));
        assert!(matches!(
            Atr::parse(&h("3B 00 00")),
            Err(AtrError::TrailingBytes(1))
        ));
        assert!(matches!(
            Atr::parse(&[0x3B; 40]),
            Err(AtrError::TooLong(40))
        ));
        // inverse convention is recognised
        assert_eq!(
            Atr::parse(&h("3F 00")).unwrap().convention,
            Convention::Inverse
        );
    }

    fn problems(hexs: &str) -> Vec<AtrProblem> {
        Atr::analyse(&h(hexs)).unwrap().problems
    }

    #[test]
    fn a_malformed_atr_is_read_as_far_as_it_goes() {
        // historical bytes cut short: what is there is still decoded
        let a = Atr::analyse(&h("3B 6A 00 00 53 53 43")).unwrap();
        assert_eq!(
            a.problems,
            [AtrProblem::HistoricalMissing {
                announced: 10,
                present: 3
            }]
        );
        assert_eq!(a.atr.historical, b"SSC");
        let d = a.describe();
        assert!(d.contains("TA1 = 00") || d.contains("T0 = 6A"), "{d}");
        assert!(
            d.contains("INVALID ATR:\n- historical bytes missing: T0 announces 10, 3 present"),
            "{d}"
        );
        // T=1 offered and no TCK
        assert_eq!(problems("3B 80 01"), [AtrProblem::TckMissing]);
        // a wrong TCK
        assert_eq!(
            problems("3B 80 01 00"),
            [AtrProblem::TckMismatch {
                expected: 0x81,
                got: 0x00
            }]
        );
        // an interface byte announced and not there
        assert_eq!(
            problems("3B F0 11 22"),
            [AtrProblem::Missing {
                byte: "TC1".into(),
                at: 4
            }]
        );
        // bytes after the end; one that checks as a TCK of a T=0-only ATR says so
        assert_eq!(
            problems("3B 01 41 40"),
            [AtrProblem::TrailingBytes {
                bytes: vec![0x40],
                looks_like_tck: true
            }]
        );
        assert_eq!(
            problems("3B 00 12 34"),
            [AtrProblem::TrailingBytes {
                bytes: vec![0x12, 0x34],
                looks_like_tck: false
            }]
        );
        // TS undefined: named, and the rest still decoded
        let a = Atr::analyse(&h("3C 00")).unwrap();
        assert_eq!(a.problems, [AtrProblem::BadTs(0x3C)]);
        assert!(a.describe().contains("TS = 3C: undefined"));
        assert_eq!(Atr::analyse(&h("3B")).unwrap().problems.len(), 1);
        assert_eq!(Atr::analyse(&[]), Err(AtrError::Empty));
    }

    proptest::proptest! {
        #[test]
        fn analyse_never_panics_and_agrees_with_parse(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            match Atr::analyse(&b) {
                Err(e) => proptest::prop_assert_eq!(e, AtrError::Empty),
                Ok(a) => {
                    let _ = a.describe();
                    proptest::prop_assert_eq!(Atr::parse(&b).is_ok(), a.is_valid());
                    if a.is_valid() {
                        proptest::prop_assert_eq!(Atr::parse(&b).ok(), Some(a.atr));
                    }
                }
            }
        }
    }
}
