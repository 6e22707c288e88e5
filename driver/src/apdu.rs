//! Command and response APDUs (ISO 7816-4 §5.1): cases 1 to 4, short and extended length.

use crate::status::StatusWord;
use std::fmt;
use zeroize::Zeroizing;

/// Why an APDU could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApduError {
    #[error("command APDU shorter than its 4-byte header")]
    TooShort,
    #[error("command data of {0} bytes is longer than 65535")]
    CommandTooLong(usize),
    #[error("Le {0} is larger than 65536")]
    LeTooLarge(usize),
    #[error("the length fields do not match the APDU's {0} bytes")]
    BadLength(usize),
    #[error("response APDU shorter than its 2-byte status word")]
    ResponseTooShort,
}

/// A command APDU. Data is kept in a zeroizing buffer because commands such as VERIFY
/// carry PINs and personalization commands carry (encrypted) keys.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandApdu {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    data: Zeroizing<Vec<u8>>,
    /// Expected response length; `Some(256)` (short) or `Some(65536)` (extended) is the
    /// maximum, encoded as `00` / `0000`.
    pub le: Option<usize>,
    /// Whether the data carries a secret (PIN, key); traces print only its length.
    pub sensitive: bool,
}

/// ISO 7816-4 case of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApduCase {
    /// No data, no Le.
    Case1,
    /// Le only.
    Case2,
    /// Data only.
    Case3,
    /// Data and Le.
    Case4,
}

impl CommandApdu {
    /// A command with no data and no Le (case 1).
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        CommandApdu {
            cla,
            ins,
            p1,
            p2,
            data: Zeroizing::new(Vec::new()),
            le: None,
            sensitive: false,
        }
    }

    /// Set the command data; more than 65535 bytes is an error.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Result<Self, ApduError> {
        let data = data.into();
        if data.len() > 65535 {
            return Err(ApduError::CommandTooLong(data.len()));
        }
        self.data = Zeroizing::new(data);
        Ok(self)
    }

    /// Set Le (1..=65536; 0 means "no Le").
    pub fn with_le(mut self, le: usize) -> Result<Self, ApduError> {
        if le > 65536 {
            return Err(ApduError::LeTooLarge(le));
        }
        self.le = if le == 0 { None } else { Some(le) };
        Ok(self)
    }

    /// Mark the data as secret (PIN, key material) so traces redact it.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// The command data.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The ISO 7816-4 case.
    pub fn case(&self) -> ApduCase {
        match (self.data.is_empty(), self.le.is_some()) {
            (true, false) => ApduCase::Case1,
            (true, true) => ApduCase::Case2,
            (false, false) => ApduCase::Case3,
            (false, true) => ApduCase::Case4,
        }
    }

    /// Whether short encoding cannot carry this command.
    pub fn needs_extended(&self) -> bool {
        self.data.len() > 255 || self.le.is_some_and(|le| le > 256)
    }

    /// Encode; extended length is used only where short cannot carry the command.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.data.len() + 9));
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        let ext = self.needs_extended();
        if !self.data.is_empty() {
            if ext {
                out.push(0);
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
            } else {
                out.push(self.data.len() as u8);
            }
            out.extend_from_slice(&self.data);
        }
        if let Some(le) = self.le {
            if ext {
                if self.data.is_empty() {
                    out.push(0);
                }
                out.extend_from_slice(&((le % 65536) as u16).to_be_bytes());
            } else {
                out.push((le % 256) as u8);
            }
        }
        out
    }

    /// Parse any byte string into a command APDU, or say why it is not one.
    pub fn parse(b: &[u8]) -> Result<Self, ApduError> {
        if b.len() < 4 {
            return Err(ApduError::TooShort);
        }
        let mut c = CommandApdu::new(b[0], b[1], b[2], b[3]);
        let body = &b[4..];
        let bad = || ApduError::BadLength(b.len());
        match body.len() {
            0 => {}
            1 => c.le = Some(if body[0] == 0 { 256 } else { body[0] as usize }),
            _ if body[0] != 0 => {
                let lc = body[0] as usize;
                let rest = &body[1..];
                if rest.len() == lc {
                    c.data = Zeroizing::new(rest.to_vec());
                } else if rest.len() == lc + 1 {
                    c.data = Zeroizing::new(rest[..lc].to_vec());
                    let le = rest[lc];
                    c.le = Some(if le == 0 { 256 } else { le as usize });
                } else {
                    return Err(bad());
                }
            }
            3 => {
                // extended case 2: 00 Le1 Le2
                let le = u16::from_be_bytes([body[1], body[2]]) as usize;
                c.le = Some(if le == 0 { 65536 } else { le });
            }
            n if n >= 3 => {
                let lc = u16::from_be_bytes([body[1], body[2]]) as usize;
                let rest = &body[3..];
                if lc == 0 {
                    return Err(bad());
                }
                if rest.len() == lc {
                    c.data = Zeroizing::new(rest.to_vec());
                } else if rest.len() == lc + 2 {
                    c.data = Zeroizing::new(rest[..lc].to_vec());
                    let le = u16::from_be_bytes([rest[lc], rest[lc + 1]]) as usize;
                    c.le = Some(if le == 0 { 65536 } else { le });
                } else {
                    return Err(bad());
                }
            }
            _ => return Err(bad()),
        }
        Ok(c)
    }
}

impl fmt::Debug for CommandApdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CommandApdu({:02X} {:02X} {:02X} {:02X}",
            self.cla, self.ins, self.p1, self.p2
        )?;
        if !self.data.is_empty() {
            if self.sensitive {
                write!(f, " data=<{} bytes redacted>", self.data.len())?;
            } else {
                write!(f, " data={}", hex::encode_upper(&*self.data))?;
            }
        }
        if let Some(le) = self.le {
            write!(f, " le={le}")?;
        }
        write!(f, ")")
    }
}

/// A response APDU: data then SW1-SW2.
#[derive(Clone, PartialEq, Eq)]
pub struct ResponseApdu {
    pub data: Vec<u8>,
    pub sw: StatusWord,
}

impl ResponseApdu {
    pub fn new(data: Vec<u8>, sw: StatusWord) -> Self {
        ResponseApdu { data, sw }
    }

    /// A response with only a status word.
    pub fn status(sw: StatusWord) -> Self {
        ResponseApdu {
            data: Vec::new(),
            sw,
        }
    }

    /// Parse; fewer than 2 bytes is an error.
    pub fn parse(b: &[u8]) -> Result<Self, ApduError> {
        if b.len() < 2 {
            return Err(ApduError::ResponseTooShort);
        }
        let (data, sw) = b.split_at(b.len() - 2);
        Ok(ResponseApdu {
            data: data.to_vec(),
            sw: StatusWord::from_bytes(sw[0], sw[1]),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.sw.to_bytes());
        v
    }

    /// `Ok(data)` on `9000`, else `Err(sw)`.
    pub fn into_result(self) -> Result<Vec<u8>, StatusWord> {
        if self.sw.is_ok() {
            Ok(self.data)
        } else {
            Err(self.sw)
        }
    }
}

impl fmt::Debug for ResponseApdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ResponseApdu({} sw={:04X})",
            hex::encode_upper(&self.data),
            self.sw.code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn cases_short() {
        let c1 = CommandApdu::new(0, 0xA4, 4, 0);
        assert_eq!(&*c1.to_bytes(), &h("00A40400"));
        let c2 = CommandApdu::new(0x80, 0xCA, 0, 1).with_le(8).unwrap();
        assert_eq!(&*c2.to_bytes(), &h("80CA000108"));
        assert_eq!(c2.case(), ApduCase::Case2);
        let c4 = CommandApdu::new(0, 0x88, 0, 2)
            .with_data(h("0102030405060708"))
            .unwrap()
            .with_le(16)
            .unwrap();
        assert_eq!(&*c4.to_bytes(), &h("00880002080102030405060708 10"));
        assert_eq!(CommandApdu::parse(&c4.to_bytes()).unwrap(), c4);
        let le256 = CommandApdu::new(0, 0xB2, 1, 0).with_le(256).unwrap();
        assert_eq!(&*le256.to_bytes(), &h("00B2010000"));
    }

    #[test]
    fn cases_extended() {
        let data = vec![0xAB; 300];
        let c = CommandApdu::new(0, 0xD6, 0, 0)
            .with_data(data.clone())
            .unwrap();
        let b = c.to_bytes();
        assert_eq!(&b[4..7], &[0, 0x01, 0x2C]);
        assert_eq!(CommandApdu::parse(&b).unwrap(), c);
        let c2 = CommandApdu::new(0, 0xB0, 0, 0).with_le(65536).unwrap();
        assert_eq!(&*c2.to_bytes(), &h("00B00000000000"));
        assert_eq!(CommandApdu::parse(&c2.to_bytes()).unwrap(), c2);
        let c4 = CommandApdu::new(0, 1, 2, 3)
            .with_data(data)
            .unwrap()
            .with_le(1000)
            .unwrap();
        assert_eq!(CommandApdu::parse(&c4.to_bytes()).unwrap(), c4);
    }

    #[test]
    fn errors() {
        assert_eq!(CommandApdu::parse(&[0, 1]), Err(ApduError::TooShort));
        assert!(matches!(
            CommandApdu::parse(&h("00A4040005AABB")),
            Err(ApduError::BadLength(_))
        ));
        assert!(CommandApdu::new(0, 0, 0, 0)
            .with_data(vec![0; 70000])
            .is_err());
        assert!(CommandApdu::new(0, 0, 0, 0).with_le(70000).is_err());
        assert_eq!(
            ResponseApdu::parse(&[0x90]),
            Err(ApduError::ResponseTooShort)
        );
    }

    #[test]
    fn sensitive_data_is_not_printed() {
        let c = CommandApdu::new(0, 0x20, 0, 0)
            .with_data(h("123456"))
            .unwrap()
            .sensitive();
        let s = format!("{c:?}");
        assert!(!s.contains("123456"), "{s}");
        assert!(s.contains("redacted"));
    }

    proptest! {
        #[test]
        fn parse_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(c) = CommandApdu::parse(&b) {
                // parse ∘ encode is the identity on what parses
                let again = CommandApdu::parse(&c.to_bytes()).unwrap();
                prop_assert_eq!(again, c);
            }
            let _ = ResponseApdu::parse(&b);
        }

        #[test]
        fn encode_parse(cla: u8, ins: u8, p1: u8, p2: u8,
                        data in proptest::collection::vec(any::<u8>(), 0..400),
                        le in 0usize..=65536) {
            let c = CommandApdu::new(cla, ins, p1, p2).with_data(data).unwrap().with_le(le).unwrap();
            prop_assert_eq!(CommandApdu::parse(&c.to_bytes()).unwrap(), c);
        }
    }
}
