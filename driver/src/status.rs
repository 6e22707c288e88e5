//! Status words SW1-SW2 (ISO 7816-4 §5.1.3), named as the card profile §5 uses them.

use std::fmt;

/// A status word. Every status word of card profile §5 has a variant; values the
/// profile does not name stay available as [`StatusWord::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusWord {
    /// `9000`
    Ok,
    /// `61xx`: more data available (T=0), fetch with GET RESPONSE Le = xx (00 = 256).
    MoreData(u8),
    /// `6283`: application blocked.
    ApplicationBlocked,
    /// `6300`: authentication failed.
    AuthenticationFailed,
    /// `63Cx`: wrong PIN, x tries left.
    WrongPin { tries_left: u8 },
    /// `6700`: wrong length.
    WrongLength,
    /// `6982`: security status not satisfied.
    SecurityStatusNotSatisfied,
    /// `6983`: PIN or key blocked.
    AuthMethodBlocked,
    /// `6985`: conditions of use not satisfied.
    ConditionsNotSatisfied,
    /// `6A80`: bad data.
    IncorrectData,
    /// `6A82`: file not found.
    FileNotFound,
    /// `6A83`: record not found.
    RecordNotFound,
    /// `6A86`: bad P1-P2.
    IncorrectP1P2,
    /// `6Cxx`: wrong Le, resend with Le = xx.
    WrongLe(u8),
    /// `6D00`: instruction not supported.
    InsNotSupported,
    /// `6E00`: class not supported.
    ClaNotSupported,
    /// `9302`: MAC invalid.
    MacInvalid,
    /// `9401`: insufficient funds.
    InsufficientFunds,
    /// `9403`: key index not supported.
    KeyIndexNotSupported,
    /// `9406`: requested MAC (transaction proof) not available.
    MacNotAvailable,
    /// `6400`–`6403`: a PIN pad's own answer to a PIN entry (PC/SC part 10 §2.5.2); the
    /// card was not asked.
    PinEntry(PinEntry),
    /// Any other value.
    Other(u16),
}

/// Why a PIN pad gave up a PIN entry (PC/SC part 10 §2.5.2: the reader answers these
/// status words itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinEntry {
    /// `6400`: the holder typed nothing in time.
    Timeout,
    /// `6401`: the holder pressed Cancel.
    Cancelled,
    /// `6402`: the new PIN and its confirmation differ.
    Mismatch,
    /// `6403`: the PIN typed is shorter or longer than allowed.
    Length,
}

impl fmt::Display for PinEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(StatusWord::PinEntry(*self).describe())
    }
}

impl PinEntry {
    fn sw2(self) -> u8 {
        match self {
            PinEntry::Timeout => 0,
            PinEntry::Cancelled => 1,
            PinEntry::Mismatch => 2,
            PinEntry::Length => 3,
        }
    }
}

/// What a caller can do about a status word (card profile §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    /// Success.
    Success,
    /// The transport layer must continue (`61xx`, `6Cxx`).
    Protocol,
    /// The application is blocked.
    Blocked,
    /// A PIN problem: wrong (tries left) or blocked.
    Pin,
    /// Authentication or MAC failure: the card or terminal is not who it claims.
    Security,
    /// Purse refused the amount.
    Funds,
    /// The PIN pad gave up the entry (timeout, cancel, mismatch, length).
    PinEntry,
    /// The command or its data was wrong (a terminal bug or unsupported card).
    Command,
    /// File or record absent.
    NotFound,
    /// A status word the profile does not name.
    Unknown,
}

impl StatusWord {
    /// The two bytes as a `u16` (`SW1 << 8 | SW2`).
    pub fn code(self) -> u16 {
        match self {
            StatusWord::Ok => 0x9000,
            StatusWord::MoreData(n) => 0x6100 | n as u16,
            StatusWord::ApplicationBlocked => 0x6283,
            StatusWord::AuthenticationFailed => 0x6300,
            StatusWord::WrongPin { tries_left } => 0x63C0 | (tries_left as u16 & 0x0F),
            StatusWord::WrongLength => 0x6700,
            StatusWord::SecurityStatusNotSatisfied => 0x6982,
            StatusWord::AuthMethodBlocked => 0x6983,
            StatusWord::ConditionsNotSatisfied => 0x6985,
            StatusWord::IncorrectData => 0x6A80,
            StatusWord::FileNotFound => 0x6A82,
            StatusWord::RecordNotFound => 0x6A83,
            StatusWord::IncorrectP1P2 => 0x6A86,
            StatusWord::WrongLe(n) => 0x6C00 | n as u16,
            StatusWord::InsNotSupported => 0x6D00,
            StatusWord::ClaNotSupported => 0x6E00,
            StatusWord::MacInvalid => 0x9302,
            StatusWord::InsufficientFunds => 0x9401,
            StatusWord::KeyIndexNotSupported => 0x9403,
            StatusWord::MacNotAvailable => 0x9406,
            StatusWord::PinEntry(p) => 0x6400 | p.sw2() as u16,
            StatusWord::Other(v) => v,
        }
    }

    /// SW1 and SW2 as bytes.
    pub fn to_bytes(self) -> [u8; 2] {
        self.code().to_be_bytes()
    }

    /// Build from SW1, SW2.
    pub fn from_bytes(sw1: u8, sw2: u8) -> Self {
        Self::from(u16::from_be_bytes([sw1, sw2]))
    }

    /// `9000`.
    pub fn is_ok(self) -> bool {
        self == StatusWord::Ok
    }

    /// The error kind a caller acts on.
    pub fn kind(self) -> StatusKind {
        use StatusWord::*;
        match self {
            Ok => StatusKind::Success,
            MoreData(_) | WrongLe(_) => StatusKind::Protocol,
            ApplicationBlocked | ConditionsNotSatisfied => StatusKind::Blocked,
            WrongPin { .. } | AuthMethodBlocked => StatusKind::Pin,
            AuthenticationFailed | SecurityStatusNotSatisfied | MacInvalid => StatusKind::Security,
            InsufficientFunds => StatusKind::Funds,
            WrongLength | IncorrectData | IncorrectP1P2 | InsNotSupported | ClaNotSupported
            | KeyIndexNotSupported | MacNotAvailable => StatusKind::Command,
            FileNotFound | RecordNotFound => StatusKind::NotFound,
            PinEntry(_) => StatusKind::PinEntry,
            Other(_) => StatusKind::Unknown,
        }
    }

    /// A short English description, for technicians.
    pub fn describe(self) -> &'static str {
        use StatusWord::*;
        match self {
            Ok => "ok",
            MoreData(_) => "more data available (GET RESPONSE)",
            ApplicationBlocked => "application blocked",
            AuthenticationFailed => "authentication failed",
            WrongPin { .. } => "wrong PIN",
            WrongLength => "wrong length",
            SecurityStatusNotSatisfied => "security status not satisfied",
            AuthMethodBlocked => "PIN or key blocked",
            ConditionsNotSatisfied => "conditions of use not satisfied",
            IncorrectData => "incorrect data",
            FileNotFound => "file not found",
            RecordNotFound => "record not found",
            IncorrectP1P2 => "incorrect P1-P2",
            WrongLe(_) => "wrong Le",
            InsNotSupported => "instruction not supported",
            ClaNotSupported => "class not supported",
            MacInvalid => "MAC invalid",
            InsufficientFunds => "insufficient funds",
            KeyIndexNotSupported => "key index not supported",
            MacNotAvailable => "requested MAC not available",
            PinEntry(self::PinEntry::Timeout) => "PIN entry timed out on the pad",
            PinEntry(self::PinEntry::Cancelled) => "PIN entry cancelled on the pad",
            PinEntry(self::PinEntry::Mismatch) => "the new PINs typed on the pad differ",
            PinEntry(self::PinEntry::Length) => "PIN of the wrong length typed on the pad",
            Other(_) => "unknown status word",
        }
    }
}

impl From<u16> for StatusWord {
    fn from(v: u16) -> Self {
        use StatusWord::*;
        match v {
            0x9000 => Ok,
            0x6283 => ApplicationBlocked,
            0x6300 => AuthenticationFailed,
            0x6700 => WrongLength,
            0x6982 => SecurityStatusNotSatisfied,
            0x6983 => AuthMethodBlocked,
            0x6985 => ConditionsNotSatisfied,
            0x6A80 => IncorrectData,
            0x6A82 => FileNotFound,
            0x6A83 => RecordNotFound,
            0x6A86 => IncorrectP1P2,
            0x6D00 => InsNotSupported,
            0x6E00 => ClaNotSupported,
            0x9302 => MacInvalid,
            0x9401 => InsufficientFunds,
            0x9403 => KeyIndexNotSupported,
            0x9406 => MacNotAvailable,
            0x6400 => PinEntry(self::PinEntry::Timeout),
            0x6401 => PinEntry(self::PinEntry::Cancelled),
            0x6402 => PinEntry(self::PinEntry::Mismatch),
            0x6403 => PinEntry(self::PinEntry::Length),
            v if v & 0xFF00 == 0x6100 => MoreData(v as u8),
            v if v & 0xFF00 == 0x6C00 => WrongLe(v as u8),
            v if v & 0xFFF0 == 0x63C0 => WrongPin {
                tries_left: (v & 0x0F) as u8,
            },
            v => Other(v),
        }
    }
}

impl From<StatusWord> for u16 {
    fn from(sw: StatusWord) -> u16 {
        sw.code()
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X} ({})", self.code(), self.describe())?;
        if let StatusWord::WrongPin { tries_left } = self {
            write!(f, ", {tries_left} tries left")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for v in 0..=u16::MAX {
            assert_eq!(StatusWord::from(v).code(), v, "{v:04X}");
        }
    }

    #[test]
    fn named_words_of_the_profile() {
        assert_eq!(
            StatusWord::from(0x63C2),
            StatusWord::WrongPin { tries_left: 2 }
        );
        assert_eq!(StatusWord::from(0x6110), StatusWord::MoreData(0x10));
        assert_eq!(StatusWord::from(0x6C17), StatusWord::WrongLe(0x17));
        assert_eq!(StatusWord::from(0x9406).kind(), StatusKind::Command);
        assert_eq!(StatusWord::from(0x9401).kind(), StatusKind::Funds);
        assert_eq!(StatusWord::from(0x1234), StatusWord::Other(0x1234));
        assert_eq!(StatusWord::from_bytes(0x90, 0x00), StatusWord::Ok);
    }
}
