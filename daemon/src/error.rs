//! The API's error kinds and codes (api.md "Errors"), and [`from_driver`], the one
//! place where the driver's errors become them.

use serde_json::{json, Value};
use sscard_driver::app::AppError;
use sscard_driver::keyprovider::KeyError;
use sscard_driver::status::PinEntry;
use sscard_driver::TransportError;

macro_rules! kinds {
    ($($(#[$doc:meta])* $v:ident = $name:literal, $code:literal;)*) => {
        /// The stable error kinds of api.md ("Errors" and the 1.1 additions), each with
        /// its code and name (`error.data.kind`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($(#[$doc])* $v,)*
        }

        impl ErrorKind {
            /// Every kind, in the order of api.md.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$v,)*];

            /// The stable name of `error.data.kind`.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorKind::$v => $name,)*
                }
            }

            /// The JSON-RPC error code.
            pub fn code(self) -> i64 {
                match self {
                    $(ErrorKind::$v => $code,)*
                }
            }
        }
    };
}

kinds! {
    NoReader = "NO_READER", 1001;
    NoCard = "NO_CARD", 1002;
    CardRemoved = "CARD_REMOVED", 1003;
    ReaderBusy = "READER_BUSY", 1004;
    AmbiguousReader = "AMBIGUOUS_READER", 1005;
    CardNotSupported = "CARD_NOT_SUPPORTED", 1006;
    CardBlocked = "CARD_BLOCKED", 1007;
    CardExpired = "CARD_EXPIRED", 1008;
    NotGenuine = "NOT_GENUINE", 1009;
    Blacklisted = "BLACKLISTED", 1010;
    /// The card's insured status (EF15 tag 22) is `02`, suspended (api.md 1.1).
    InsuranceSuspended = "INSURANCE_SUSPENDED", 1011;
    /// The card in the reader is not the one the call names (api.md 1.1).
    CardChanged = "CARD_CHANGED", 1012;
    PinWrong = "PIN_WRONG", 2001;
    PinBlocked = "PIN_BLOCKED", 2002;
    PinEntryCancelled = "PIN_ENTRY_CANCELLED", 2003;
    PinEntryTimeout = "PIN_ENTRY_TIMEOUT", 2004;
    PinEntryMismatch = "PIN_ENTRY_MISMATCH", 2005;
    PinEntryLength = "PIN_ENTRY_LENGTH", 2006;
    InsufficientFunds = "INSUFFICIENT_FUNDS", 3001;
    LimitExceeded = "LIMIT_EXCEEDED", 3002;
    DuplicateOrder = "DUPLICATE_ORDER", 3003;
    TransactionUncertain = "TRANSACTION_UNCERTAIN", 3004;
    Unauthenticated = "UNAUTHENTICATED", 4001;
    Forbidden = "FORBIDDEN", 4002;
    OperatorDisabled = "OPERATOR_DISABLED", 4003;
    NotSupported = "NOT_SUPPORTED", 5001;
    KeyUnavailable = "KEY_UNAVAILABLE", 5002;
    JournalUnavailable = "JOURNAL_UNAVAILABLE", 5003;
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// JSON-RPC's own codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// No connection slot is free (in JSON-RPC's range for server errors).
pub const SERVER_BUSY: i64 = -32000;

/// An error answered to a client. Messages never carry a PIN or key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: i64,
    /// `error.data.kind`; `None` for the JSON-RPC protocol errors.
    pub kind: Option<ErrorKind>,
    pub message: String,
    /// More members of `error.data` (`tries_left`, `payment`, …).
    pub extra: Option<Value>,
}

impl ApiError {
    /// An error of one of the API's kinds.
    pub fn kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            code: kind.code(),
            kind: Some(kind),
            message: message.into(),
            extra: None,
        }
    }

    /// Add members to `error.data`.
    pub fn with(mut self, extra: Value) -> Self {
        match (&mut self.extra, extra) {
            (Some(Value::Object(m)), Value::Object(n)) => m.extend(n),
            (slot, v) => *slot = Some(v),
        }
        self
    }

    fn protocol(code: i64, message: impl Into<String>) -> Self {
        ApiError {
            code,
            kind: None,
            message: message.into(),
            extra: None,
        }
    }
    pub fn parse(message: impl Into<String>) -> Self {
        Self::protocol(PARSE_ERROR, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::protocol(INVALID_REQUEST, message)
    }
    pub fn method_not_found(m: &str) -> Self {
        Self::protocol(METHOD_NOT_FOUND, format!("method not found: {m}"))
    }
    /// Bad params: the message starts with the field's name.
    pub fn params(message: impl Into<String>) -> Self {
        Self::protocol(INVALID_PARAMS, message)
    }
    /// The server has no slot for the connection (JSON-RPC's server-error range).
    pub fn busy(message: impl Into<String>) -> Self {
        Self::protocol(SERVER_BUSY, message)
    }
    pub fn journal(e: impl std::fmt::Display) -> Self {
        ApiError::kind(ErrorKind::JournalUnavailable, format!("journal: {e}"))
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        let mut data = serde_json::Map::new();
        if let Some(k) = self.kind {
            data.insert("kind".into(), json!(k.name()));
        }
        if let Some(Value::Object(m)) = &self.extra {
            for (k, v) in m {
                data.insert(k.clone(), v.clone());
            }
        }
        if data.is_empty() {
            json!({"code": self.code, "message": self.message})
        } else {
            json!({"code": self.code, "message": self.message, "data": data})
        }
    }
}

/// A driver error of any layer, by reference.
#[derive(Debug, Clone, Copy)]
pub enum DriverError<'a> {
    App(&'a AppError),
    Transport(&'a TransportError),
    Key(&'a KeyError),
}

impl<'a> From<&'a AppError> for DriverError<'a> {
    fn from(e: &'a AppError) -> Self {
        DriverError::App(e)
    }
}
impl<'a> From<&'a TransportError> for DriverError<'a> {
    fn from(e: &'a TransportError) -> Self {
        DriverError::Transport(e)
    }
}
impl<'a> From<&'a KeyError> for DriverError<'a> {
    fn from(e: &'a KeyError) -> Self {
        DriverError::Key(e)
    }
}

/// The one mapping of driver errors to API errors.
pub fn from_driver<'a>(e: impl Into<DriverError<'a>>) -> ApiError {
    use ApiError as E;
    match e.into() {
        DriverError::Transport(t) => match t {
            TransportError::NoCard => E::kind(ErrorKind::NoCard, "no card in the reader"),
            TransportError::NoReader(r) => {
                E::kind(ErrorKind::NoReader, format!("no such reader: {r}"))
            }
            TransportError::ServiceUnavailable(m) => E::kind(
                ErrorKind::NoReader,
                format!("smart-card service unavailable: {m}"),
            ),
            TransportError::Busy => E::kind(
                ErrorKind::ReaderBusy,
                "the reader is in use by another program",
            ),
            TransportError::Apdu(_) | TransportError::Protocol(_) => {
                E::kind(ErrorKind::CardNotSupported, t.to_string())
            }
            TransportError::Pcsc(_) => E::kind(ErrorKind::NoReader, t.to_string()),
            TransportError::Unsupported(_) => E::kind(ErrorKind::NotSupported, t.to_string()),
            // removed, reset, mute, link lost: whatever was in flight may have happened
            _ => E::kind(ErrorKind::CardRemoved, t.to_string()),
        },
        DriverError::Key(k) => from_key(k),
        DriverError::App(a) => match a {
            AppError::Transport(t) => from_driver(t),
            AppError::Key(k) => from_key(k),
            AppError::NotSupported(m) => E::kind(ErrorKind::CardNotSupported, m.clone()),
            AppError::Blocked => E::kind(ErrorKind::CardBlocked, "the application is blocked"),
            AppError::PinWrong { tries_left } => E::kind(
                ErrorKind::PinWrong,
                format!("wrong PIN, {tries_left} tries left"),
            )
            .with(json!({"tries_left": tries_left})),
            AppError::PinBlocked => E::kind(ErrorKind::PinBlocked, "the PIN is blocked"),
            AppError::PinEntry(p) => E::kind(
                match p {
                    PinEntry::Timeout => ErrorKind::PinEntryTimeout,
                    PinEntry::Cancelled => ErrorKind::PinEntryCancelled,
                    PinEntry::Mismatch => ErrorKind::PinEntryMismatch,
                    PinEntry::Length => ErrorKind::PinEntryLength,
                },
                a.to_string(),
            ),
            AppError::NotGenuine | AppError::AuthFailed | AppError::MacMismatch(_) => {
                E::kind(ErrorKind::NotGenuine, a.to_string())
            }
            AppError::InsufficientFunds => {
                E::kind(ErrorKind::InsufficientFunds, "insufficient funds")
            }
            AppError::Uncertain { .. } => E::kind(ErrorKind::TransactionUncertain, a.to_string()),
            AppError::KeyUnavailable(p) => {
                E::kind(ErrorKind::KeyUnavailable, format!("key {p} not available"))
            }
            AppError::Card(sw) => E::kind(ErrorKind::CardNotSupported, a.to_string())
                .with(json!({"sw": format!("{:04X}", sw.code())})),
            // malformed records, refused security state, data the card rejects
            _ => E::kind(ErrorKind::CardNotSupported, a.to_string()),
        },
    }
}

/// A key provider's failure, whether it came alone or inside an [`AppError::Key`]: a
/// terminal sequence the journal could not reserve is the journal's, a card of another
/// city is the card's, anything else is the keys'.
fn from_key(k: &KeyError) -> ApiError {
    match k {
        KeyError::WrongRegion { .. } => ApiError::kind(ErrorKind::CardNotSupported, k.to_string()),
        KeyError::Sequence(_) => ApiError::journal(k),
        _ => ApiError::kind(ErrorKind::KeyUnavailable, k.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sscard_driver::StatusWord;

    #[test]
    fn codes_are_those_of_the_contract() {
        // every `NAME` (code) pair that api.md fixes is a kind with that code, and no
        // kind is missing from the contract
        let spec = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/spec/api.md"
        ))
        .expect("api.md beside the repository");
        let spec = spec.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut fixed = Vec::new();
        for (i, _) in spec.match_indices('`') {
            let rest = &spec[i + 1..];
            let Some(end) = rest.find('`') else { continue };
            let name = &rest[..end];
            let after = &rest[end + 1..];
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                && after.starts_with(" (")
            {
                if let Ok(code) = after[2..]
                    .chars()
                    .take(4)
                    .collect::<String>()
                    .parse::<i64>()
                {
                    fixed.push((name.to_string(), code));
                }
            }
        }
        fixed.dedup();
        assert!(fixed.len() >= 28, "{fixed:?}");
        for (name, code) in &fixed {
            let k = ErrorKind::ALL
                .iter()
                .find(|k| k.name() == name)
                .unwrap_or_else(|| panic!("{name} has no ErrorKind"));
            assert_eq!(k.code(), *code, "{name}");
            assert_eq!(ApiError::kind(*k, "").code, *code);
        }
        assert_eq!(fixed.len(), ErrorKind::ALL.len());
        let e = ApiError::kind(ErrorKind::PinWrong, "m").with(json!({"tries_left": 2}));
        assert_eq!(
            e.to_json(),
            json!({"code": 2001, "message": "m", "data": {"kind": "PIN_WRONG", "tries_left": 2}})
        );
        assert_eq!(
            ApiError::params("pin: x").to_json(),
            json!({"code": -32602, "message": "pin: x"})
        );
    }

    #[test]
    fn driver_errors_map_to_kinds() {
        let k = |e: AppError| from_driver(&e).kind;
        assert_eq!(
            k(AppError::PinWrong { tries_left: 1 }),
            Some(ErrorKind::PinWrong)
        );
        assert_eq!(k(AppError::PinBlocked), Some(ErrorKind::PinBlocked));
        for (p, kind) in [
            (PinEntry::Timeout, ErrorKind::PinEntryTimeout),
            (PinEntry::Cancelled, ErrorKind::PinEntryCancelled),
            (PinEntry::Mismatch, ErrorKind::PinEntryMismatch),
            (PinEntry::Length, ErrorKind::PinEntryLength),
        ] {
            assert_eq!(k(AppError::PinEntry(p)), Some(kind));
        }
        assert_eq!(
            k(AppError::Transport(TransportError::Unsupported("x".into()))),
            Some(ErrorKind::NotSupported)
        );
        assert_eq!(k(AppError::Blocked), Some(ErrorKind::CardBlocked));
        assert_eq!(k(AppError::NotGenuine), Some(ErrorKind::NotGenuine));
        assert_eq!(
            k(AppError::InsufficientFunds),
            Some(ErrorKind::InsufficientFunds)
        );
        assert_eq!(
            k(AppError::Uncertain {
                step: "DEBIT",
                source: TransportError::CardRemoved
            }),
            Some(ErrorKind::TransactionUncertain)
        );
        assert_eq!(
            k(AppError::KeyUnavailable("LOAD")),
            Some(ErrorKind::KeyUnavailable)
        );
        assert_eq!(
            k(AppError::NotSupported("x".into())),
            Some(ErrorKind::CardNotSupported)
        );
        assert_eq!(
            k(AppError::Transport(TransportError::CardRemoved)),
            Some(ErrorKind::CardRemoved)
        );
        assert_eq!(
            k(AppError::Transport(TransportError::NoCard)),
            Some(ErrorKind::NoCard)
        );
        let e = from_driver(&AppError::Card(StatusWord::from(0x6A86)));
        assert_eq!(e.to_json()["data"]["sw"], "6A86");
        assert_eq!(
            from_driver(&KeyError::Sequence("x".into())).kind,
            Some(ErrorKind::JournalUnavailable)
        );
        assert_eq!(
            from_driver(&KeyError::Unavailable("LOAD")).kind,
            Some(ErrorKind::KeyUnavailable)
        );
    }

    #[test]
    fn key_errors_keep_their_kind_inside_app_errors() {
        let full = || KeyError::Sequence("database or disk is full".into());
        let region = || KeyError::WrongRegion {
            card: "110100".into(),
            keys: "650200".into(),
        };
        let cases: [(fn() -> KeyError, ErrorKind); 4] = [
            (full, ErrorKind::JournalUnavailable),
            (
                || KeyError::Unavailable("PURCHASE"),
                ErrorKind::KeyUnavailable,
            ),
            (
                || KeyError::Psam("VERIFY MAC2: 6F00".into()),
                ErrorKind::KeyUnavailable,
            ),
            (region, ErrorKind::CardNotSupported),
        ];
        for (make, want) in cases {
            let alone = from_driver(&make());
            let wrapped = from_driver(&AppError::Key(make()));
            assert_eq!(alone.kind, Some(want), "{}", alone.message);
            assert_eq!(wrapped.kind, Some(want), "{}", wrapped.message);
            assert_eq!(wrapped.code, want.code());
        }
        // the disk-full debit: the journal's kind, and the cause in the message
        let e = from_driver(&AppError::Key(full()));
        assert_eq!(e.code, ErrorKind::JournalUnavailable.code());
        assert!(e.message.contains("disk is full"), "{}", e.message);
        assert!(!e.message.contains("bad input"), "{}", e.message);
    }
}
