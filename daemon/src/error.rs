//! The API's error kinds and codes (api.md "Errors"), and [`from_driver`], the one
//! place where the driver's errors become them.

use serde_json::{json, Value};
use sscard_driver::app::AppError;
use sscard_driver::keyprovider::KeyError;
use sscard_driver::TransportError;

/// The stable error kinds of api.md with their codes.
pub const KINDS: [(&str, i64); 22] = [
    ("NO_READER", 1001),
    ("NO_CARD", 1002),
    ("CARD_REMOVED", 1003),
    ("READER_BUSY", 1004),
    ("AMBIGUOUS_READER", 1005),
    ("CARD_NOT_SUPPORTED", 1006),
    ("CARD_BLOCKED", 1007),
    ("CARD_EXPIRED", 1008),
    ("NOT_GENUINE", 1009),
    ("BLACKLISTED", 1010),
    ("PIN_WRONG", 2001),
    ("PIN_BLOCKED", 2002),
    ("INSUFFICIENT_FUNDS", 3001),
    ("LIMIT_EXCEEDED", 3002),
    ("DUPLICATE_ORDER", 3003),
    ("TRANSACTION_UNCERTAIN", 3004),
    ("UNAUTHENTICATED", 4001),
    ("FORBIDDEN", 4002),
    ("OPERATOR_DISABLED", 4003),
    ("NOT_SUPPORTED", 5001),
    ("KEY_UNAVAILABLE", 5002),
    ("JOURNAL_UNAVAILABLE", 5003),
];

/// JSON-RPC's own codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// An error answered to a client. Messages never carry a PIN or key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: i64,
    /// `error.data.kind`; `None` for the JSON-RPC protocol errors.
    pub kind: Option<&'static str>,
    pub message: String,
    /// More members of `error.data` (`tries_left`, `payment`, …).
    pub extra: Option<Value>,
}

impl ApiError {
    /// An error of one of the kinds of [`KINDS`] (a kind not listed there, a bug, gets
    /// code 5001 rather than a panic).
    pub fn kind(kind: &'static str, message: impl Into<String>) -> Self {
        let code = KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(5001, |(_, c)| *c);
        ApiError {
            code,
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
    pub fn journal(e: impl std::fmt::Display) -> Self {
        ApiError::kind("JOURNAL_UNAVAILABLE", format!("journal: {e}"))
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        let mut data = serde_json::Map::new();
        if let Some(k) = self.kind {
            data.insert("kind".into(), json!(k));
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
            TransportError::NoCard => E::kind("NO_CARD", "no card in the reader"),
            TransportError::NoReader(r) => E::kind("NO_READER", format!("no such reader: {r}")),
            TransportError::ServiceUnavailable(m) => {
                E::kind("NO_READER", format!("smart-card service unavailable: {m}"))
            }
            TransportError::Busy => {
                E::kind("READER_BUSY", "the reader is in use by another program")
            }
            TransportError::Apdu(_) | TransportError::Protocol(_) => {
                E::kind("CARD_NOT_SUPPORTED", t.to_string())
            }
            TransportError::Pcsc(_) => E::kind("NO_READER", t.to_string()),
            // removed, reset, mute, link lost: whatever was in flight may have happened
            _ => E::kind("CARD_REMOVED", t.to_string()),
        },
        DriverError::Key(k) => match k {
            KeyError::WrongRegion { .. } => E::kind("CARD_NOT_SUPPORTED", k.to_string()),
            KeyError::Sequence(_) => E::journal(k),
            _ => E::kind("KEY_UNAVAILABLE", k.to_string()),
        },
        DriverError::App(a) => match a {
            AppError::Transport(t) => from_driver(t),
            AppError::NotSupported(m) => E::kind("CARD_NOT_SUPPORTED", m.clone()),
            AppError::Blocked => E::kind("CARD_BLOCKED", "the application is blocked"),
            AppError::PinWrong { tries_left } => {
                E::kind("PIN_WRONG", format!("wrong PIN, {tries_left} tries left"))
                    .with(json!({"tries_left": tries_left}))
            }
            AppError::PinBlocked => E::kind("PIN_BLOCKED", "the PIN is blocked"),
            AppError::NotGenuine | AppError::AuthFailed | AppError::MacMismatch(_) => {
                E::kind("NOT_GENUINE", a.to_string())
            }
            AppError::InsufficientFunds => E::kind("INSUFFICIENT_FUNDS", "insufficient funds"),
            AppError::Uncertain { .. } => E::kind("TRANSACTION_UNCERTAIN", a.to_string()),
            AppError::KeyUnavailable(p) => {
                E::kind("KEY_UNAVAILABLE", format!("key {p} not available"))
            }
            AppError::Card(sw) => E::kind("CARD_NOT_SUPPORTED", a.to_string())
                .with(json!({"sw": format!("{:04X}", sw.code())})),
            // malformed records, refused security state, data the card rejects
            _ => E::kind("CARD_NOT_SUPPORTED", a.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sscard_driver::StatusWord;

    #[test]
    fn codes_are_those_of_the_contract() {
        for (k, c) in KINDS {
            assert_eq!(ApiError::kind(k, "").code, c);
        }
        let e = ApiError::kind("PIN_WRONG", "m").with(json!({"tries_left": 2}));
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
        assert_eq!(k(AppError::PinWrong { tries_left: 1 }), Some("PIN_WRONG"));
        assert_eq!(k(AppError::PinBlocked), Some("PIN_BLOCKED"));
        assert_eq!(k(AppError::Blocked), Some("CARD_BLOCKED"));
        assert_eq!(k(AppError::NotGenuine), Some("NOT_GENUINE"));
        assert_eq!(k(AppError::InsufficientFunds), Some("INSUFFICIENT_FUNDS"));
        assert_eq!(
            k(AppError::Uncertain {
                step: "DEBIT",
                source: TransportError::CardRemoved
            }),
            Some("TRANSACTION_UNCERTAIN")
        );
        assert_eq!(k(AppError::KeyUnavailable("LOAD")), Some("KEY_UNAVAILABLE"));
        assert_eq!(
            k(AppError::NotSupported("x".into())),
            Some("CARD_NOT_SUPPORTED")
        );
        assert_eq!(
            k(AppError::Transport(TransportError::CardRemoved)),
            Some("CARD_REMOVED")
        );
        assert_eq!(
            k(AppError::Transport(TransportError::NoCard)),
            Some("NO_CARD")
        );
        let e = from_driver(&AppError::Card(StatusWord::from(0x6A86)));
        assert_eq!(e.to_json()["data"]["sw"], "6A86");
        assert_eq!(
            from_driver(&KeyError::Sequence("x".into())).kind,
            Some("JOURNAL_UNAVAILABLE")
        );
        assert_eq!(
            from_driver(&KeyError::Unavailable("LOAD")).kind,
            Some("KEY_UNAVAILABLE")
        );
    }
}
