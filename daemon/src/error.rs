//! The API's error kinds and codes (api.md "Errors"), and the one place where driver
//! errors become them.

use serde_json::{json, Value};
use sscard_driver::app::AppError;
use sscard_driver::TransportError;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: i64,
    pub kind: Option<&'static str>,
    pub message: String,
    pub extra: Option<Value>,
}

impl ApiError {
    pub fn kind(kind: &'static str, message: impl Into<String>) -> Self {
        let code = match kind {
            "NO_READER" => 1001,
            "NO_CARD" => 1002,
            "CARD_REMOVED" => 1003,
            "READER_BUSY" => 1004,
            "AMBIGUOUS_READER" => 1005,
            "CARD_NOT_SUPPORTED" => 1006,
            "CARD_BLOCKED" => 1007,
            "CARD_EXPIRED" => 1008,
            "NOT_GENUINE" => 1009,
            "BLACKLISTED" => 1010,
            "PIN_WRONG" => 2001,
            "PIN_BLOCKED" => 2002,
            "INSUFFICIENT_FUNDS" => 3001,
            "LIMIT_EXCEEDED" => 3002,
            "DUPLICATE_ORDER" => 3003,
            "TRANSACTION_UNCERTAIN" => 3004,
            "UNAUTHENTICATED" => 4001,
            "FORBIDDEN" => 4002,
            "OPERATOR_DISABLED" => 4003,
            "NOT_SUPPORTED" => 5001,
            "KEY_UNAVAILABLE" => 5002,
            _ => 5003, // JOURNAL_UNAVAILABLE
        };
        ApiError {
            code,
            kind: Some(kind),
            message: message.into(),
            extra: None,
        }
    }
    pub fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
    pub fn parse(message: impl Into<String>) -> Self {
        ApiError {
            code: -32700,
            kind: None,
            message: message.into(),
            extra: None,
        }
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError {
            code: -32600,
            kind: None,
            message: message.into(),
            extra: None,
        }
    }
    pub fn method_not_found(m: &str) -> Self {
        ApiError {
            code: -32601,
            kind: None,
            message: format!("method not found: {m}"),
            extra: None,
        }
    }
    pub fn params(message: impl Into<String>) -> Self {
        ApiError {
            code: -32602,
            kind: None,
            message: message.into(),
            extra: None,
        }
    }
    pub fn journal(e: impl std::fmt::Display) -> Self {
        ApiError::kind("JOURNAL_UNAVAILABLE", format!("journal: {e}"))
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        let mut data = json!({});
        if let Some(k) = self.kind {
            data["kind"] = json!(k);
        }
        if let Some(Value::Object(m)) = &self.extra {
            for (k, v) in m {
                data[k] = v.clone();
            }
        }
        if data.as_object().is_some_and(|m| m.is_empty()) {
            json!({"code": self.code, "message": self.message})
        } else {
            json!({"code": self.code, "message": self.message, "data": data})
        }
    }
}

/// Transport errors as API errors.
pub fn from_transport(e: &TransportError) -> ApiError {
    match e {
        TransportError::NoCard => ApiError::kind("NO_CARD", "no card in the reader"),
        TransportError::NoReader(r) => ApiError::kind("NO_READER", format!("no such reader: {r}")),
        TransportError::ServiceUnavailable(m) => {
            ApiError::kind("NO_READER", format!("smart-card service unavailable: {m}"))
        }
        TransportError::Busy => ApiError::kind("READER_BUSY", "reader in use by another program"),
        e if e.outcome_unknown() => ApiError::kind("CARD_REMOVED", e.to_string()),
        e => ApiError::kind("CARD_REMOVED", e.to_string()),
    }
}

/// Card-application errors as API errors: the one mapping of the daemon.
pub fn from_app(e: &AppError) -> ApiError {
    match e {
        AppError::Transport(t) => from_transport(t),
        AppError::NotSupported(m) => ApiError::kind("CARD_NOT_SUPPORTED", m.clone()),
        AppError::Blocked => ApiError::kind("CARD_BLOCKED", "application blocked"),
        AppError::PinWrong { tries_left } => {
            ApiError::kind("PIN_WRONG", format!("wrong PIN, {tries_left} tries left"))
                .with(json!({"tries_left": tries_left}))
        }
        AppError::PinBlocked => ApiError::kind("PIN_BLOCKED", "PIN blocked"),
        AppError::NotGenuine | AppError::AuthFailed | AppError::MacMismatch(_) => {
            ApiError::kind("NOT_GENUINE", e.to_string())
        }
        AppError::InsufficientFunds => ApiError::kind("INSUFFICIENT_FUNDS", "insufficient funds"),
        AppError::Uncertain { .. } => ApiError::kind("TRANSACTION_UNCERTAIN", e.to_string()),
        AppError::KeyUnavailable(p) => {
            ApiError::kind("KEY_UNAVAILABLE", format!("key {p} not available"))
        }
        AppError::BadInput(m) => ApiError::params(m.clone()),
        other => ApiError::kind("CARD_NOT_SUPPORTED", other.to_string()),
    }
}
