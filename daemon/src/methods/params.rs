//! The typed `params` of every method (api.md "Methods" and the 1.1 additions).
//!
//! Each method's params are a serde type with `deny_unknown_fields` (a misspelt
//! `amount` must not pass unnoticed); every value type below reads a JSON value and
//! checks it itself, so that every error is `-32602` with a message that starts with the
//! field's name and never repeats what was sent (a PIN typed into the wrong field must
//! not come back in an error).

use crate::error::ApiError;
use crate::journal::PaymentKind;
use crate::rpc::strip_position;
use chrono::NaiveDate;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;
use sscard_driver::app::Pin;
use sscard_driver::CardId;

/// Read `params` (absent, `null` or an object) as `P`.
pub fn parse<P: DeserializeOwned>(raw: Option<&RawValue>) -> Result<P, ApiError> {
    let text = raw.map_or("null", RawValue::get);
    let text = match text.trim_start().as_bytes().first() {
        Some(b'{') => text,
        Some(b'n') if text.trim() == "null" => "{}",
        _ => {
            return Err(ApiError::params(
                "params: must be an object (named parameters)",
            ))
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let msg = strip_position(e.inner());
        ApiError::params(located(&path, &msg))
    })
}

/// `field: message`, naming the field for serde's own "missing", "unknown" and
/// "duplicate" errors (whose path may or may not already hold the field).
fn located(path: &str, msg: &str) -> String {
    let quoted = |m: &str| {
        let a = m.find('`')?;
        let b = m[a + 1..].find('`')?;
        Some(m[a + 1..a + 1 + b].to_string())
    };
    if let Some(rest) = msg.strip_prefix("missing field ") {
        if let Some(f) = quoted(rest) {
            return format!("{f}: required");
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        if let Some(f) = quoted(rest) {
            let takes = rest
                .split_once(", expected ")
                .map_or("no parameters".to_string(), |(_, e)| e.replace('`', ""));
            return format!("{f}: unknown parameter (this method takes {takes})");
        }
    }
    if let Some(rest) = msg.strip_prefix("duplicate field ") {
        if let Some(f) = quoted(rest) {
            return format!("{f}: given twice");
        }
    }
    if path.is_empty() || path == "." {
        return format!("params: {msg}");
    }
    format!("{path}: {msg}")
}

fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Value::deserialize(d)
}

fn string<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<String, D::Error> {
    match value(d)? {
        Value::String(s) => Ok(s),
        _ => Err(D::Error::custom(format!("{what} is required"))),
    }
}

/// An order id (api.md 1.1): 1 to 64 characters, each a Unicode letter or digit or one
/// of `-_.:/#`. Spaces, control and format characters (U+202E and the like) are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderId(pub String);

/// Whether `s` is an order id of api.md 1.1.
pub fn is_order_id(s: &str) -> bool {
    let n = s.chars().count();
    (1..=64).contains(&n)
        && s.chars()
            .all(|c| c.is_alphanumeric() || "-_.:/#".contains(c))
}

impl<'de> Deserialize<'de> for OrderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "a string")?;
        if !is_order_id(&s) {
            return Err(D::Error::custom(
                "1 to 64 letters, digits and -_.:/# (no spaces, control or format characters)",
            ));
        }
        Ok(OrderId(s))
    }
}

/// A positive whole number of fen that fits the card's 4-byte amounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fen(pub u32);

impl<'de> Deserialize<'de> for Fen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        value(d)?
            .as_u64()
            .filter(|n| *n > 0)
            .and_then(|n| u32::try_from(n).ok())
            .map(Fen)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "a positive integer number of fen (at most {}) is required",
                    u32::MAX
                ))
            })
    }
}

/// A PIN: a string of 4 to 12 digits. Errors never repeat it.
pub struct PinParam(pub Pin);

impl std::fmt::Debug for PinParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinParam(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for PinParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = zeroize::Zeroizing::new(match value(d)? {
            Value::String(s) => s,
            _ => String::new(),
        });
        Pin::new(&v)
            .map(PinParam)
            .map_err(|_| D::Error::custom("a string of 4 to 12 digits is required"))
    }
}

/// A date, exactly `YYYY-MM-DD` (no `2026-1-1`, no `+10000-01-01`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date(pub NaiveDate);

/// Parse exactly `YYYY-MM-DD`.
pub fn strict_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "a date YYYY-MM-DD")?;
        strict_date(&s)
            .map(Date)
            .ok_or_else(|| D::Error::custom("a date YYYY-MM-DD is required"))
    }
}

/// Text from a client that goes into the journal: at most `N` characters, no control
/// or format characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text<const N: usize>(pub String);

impl<'de, const N: usize> Deserialize<'de> for Text<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "a string")?;
        if s.chars().count() > N {
            return Err(D::Error::custom(format!("at most {N} characters")));
        }
        if s.chars().any(crate::text::is_hidden) {
            return Err(D::Error::custom("control or format characters are refused"));
        }
        Ok(Text(s))
    }
}

/// A reader name as `reader.list` gives it.
pub type ReaderName = Text<256>;

/// A count from 1 to `MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count<const MAX: usize>(pub usize);

impl<'de, const MAX: usize> Deserialize<'de> for Count<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        value(d)?
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX).contains(n))
            .map(Count)
            .ok_or_else(|| D::Error::custom(format!("an integer from 1 to {MAX}")))
    }
}

/// A payment kind, `debit` or `refund`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind(pub PaymentKind);

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "debit or refund")?;
        PaymentKind::parse(&s)
            .map(Kind)
            .ok_or_else(|| D::Error::custom("debit or refund"))
    }
}

/// A card identification code (32 hex digits, card profile §2): the card the POS
/// showed the holder (api.md 1.1 `card_id`).
#[derive(Debug, Clone, Copy)]
pub struct CardIdParam(pub CardId);

impl<'de> Deserialize<'de> for CardIdParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "a card id (32 hex digits)")?;
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(D::Error::custom("a card id (32 hex digits)"));
        }
        s.parse()
            .map(CardIdParam)
            .map_err(|_| D::Error::custom("not a card identification code (card profile §2)"))
    }
}

/// A blacklist entry's card: a card number (letters and digits, at most 32) or a card
/// id (32 hex digits, kept upper-case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlacklistCard(pub String);

impl<'de> Deserialize<'de> for BlacklistCard {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "a card number or a card id")?;
        let c = s.trim();
        if c.is_empty() || c.len() > 32 || !c.chars().all(|x| x.is_ascii_alphanumeric()) {
            return Err(D::Error::custom(
                "a card number or a card id (letters and digits)",
            ));
        }
        Ok(BlacklistCard(if c.len() == 32 {
            c.to_ascii_uppercase()
        } else {
            c.to_string()
        }))
    }
}

/// A blacklist reason, checked by [`crate::text::check_reason`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason(pub String);

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string(d, "a string")?;
        crate::text::check_reason(&s)
            .map(Reason)
            .map_err(D::Error::custom)
    }
}

// ---- each method's params ----

/// No params at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginParams {
    pub token: Text<256>,
}

impl std::fmt::Debug for LoginParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginParams { token: <redacted> }")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderParams {
    #[serde(default)]
    pub reader: Option<ReaderName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyPinParams {
    #[serde(default)]
    pub reader: Option<ReaderName>,
    /// Optional on a reader with a PIN pad (api.md 1.1).
    #[serde(default)]
    pub pin: Option<PinParam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePinParams {
    #[serde(default)]
    pub reader: Option<ReaderName>,
    /// Both, or neither on a reader with a PIN pad (api.md 1.1).
    #[serde(default)]
    pub old_pin: Option<PinParam>,
    #[serde(default)]
    pub new_pin: Option<PinParam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitParams {
    pub order_id: OrderId,
    pub amount_fen: Fen,
    /// Optional on a reader with a PIN pad (api.md 1.1).
    #[serde(default)]
    pub pin: Option<PinParam>,
    #[serde(default)]
    pub reader: Option<ReaderName>,
    #[serde(default)]
    pub card_id: Option<CardIdParam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    pub order_id: OrderId,
    #[serde(default)]
    pub kind: Option<Kind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundParams {
    pub order_id: OrderId,
    #[serde(default)]
    pub amount_fen: Option<Fen>,
    /// Optional on a reader with a PIN pad (api.md 1.1).
    #[serde(default)]
    pub pin: Option<PinParam>,
    #[serde(default)]
    pub reader: Option<ReaderName>,
    #[serde(default)]
    pub card_id: Option<CardIdParam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleParams {
    pub date: Date,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    #[serde(default)]
    pub since: Option<Text<40>>,
    #[serde(default)]
    pub until: Option<Text<40>>,
    #[serde(default)]
    pub operator: Option<Text<128>>,
    #[serde(default)]
    pub limit: Option<Count<{ super::audit::MAX_LIMIT }>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistAddParams {
    pub card: BlacklistCard,
    pub reason: Reason,
    #[serde(default)]
    pub until: Option<Date>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistRemoveParams {
    pub card: BlacklistCard,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn err<P: DeserializeOwned + std::fmt::Debug>(s: &str) -> String {
        let e = parse::<P>(Some(&raw(s))).unwrap_err();
        assert_eq!(e.code, -32602);
        e.message
    }

    #[test]
    fn errors_name_the_field_and_never_echo_a_pin() {
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":12.5,"pin":"123456"}"#);
        assert!(e.starts_with("amount_fen:"), "{e}");
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":1,"pin":123456}"#);
        assert!(e.starts_with("pin:") && !e.contains("123456"), "{e}");
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":1,"pin":"12ab56"}"#);
        assert!(e.starts_with("pin:") && !e.contains("12ab56"), "{e}");
        // without a pin: the reader decides (its pad, or "pin: required")
        let ok: DebitParams = parse(Some(&raw(r#"{"order_id":"A","amount_fen":1}"#))).unwrap();
        assert!(ok.pin.is_none());
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":1,"pin":"1234","x":1}"#);
        assert!(e.starts_with("x: unknown parameter"), "{e}");
        assert!(e.contains("order_id"), "{e}");
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":4294967296,"pin":"1234"}"#);
        assert!(e.starts_with("amount_fen:"), "{e}");
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":0,"pin":"1234"}"#);
        assert!(e.starts_with("amount_fen:"), "{e}");
        let e = err::<DebitParams>(r#"{"order_id":"A","amount_fen":1,"pin":"1234","pin":"5678"}"#);
        assert!(
            e.starts_with("pin: given twice") && !e.contains("5678"),
            "{e}"
        );
        let e = err::<NoParams>(r#"{"a":1}"#);
        assert!(e.starts_with("a: unknown parameter"), "{e}");
        assert!(parse::<NoParams>(None).is_ok());
        assert!(parse::<NoParams>(Some(&raw("null"))).is_ok());
        let e = parse::<NoParams>(Some(&raw("[1]"))).unwrap_err();
        assert!(e.message.starts_with("params:"), "{}", e.message);
        let ok: DebitParams = parse(Some(&raw(
            r#"{"order_id":"A-1","amount_fen":1,"pin":"1234","reader":null}"#,
        )))
        .unwrap();
        assert!(ok.reader.is_none());
        assert!(format!("{:?}", ok.pin).contains("redacted"));
    }

    #[test]
    fn order_ids_are_the_set_of_api_1_1() {
        for good in ["A", "订单-2026/11:23#7", "a.b_c", &"x".repeat(64), "٣٤"] {
            assert!(is_order_id(good), "{good:?}");
        }
        for bad in [
            "",
            " ",
            "a b",
            "a\u{202E}b",
            "a\u{200B}",
            "a\u{0007}",
            "a\tb",
            &"x".repeat(65),
            "a+b",
            "a\u{FEFF}",
        ] {
            assert!(!is_order_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn dates_are_exactly_yyyy_mm_dd() {
        assert!(strict_date("2026-01-01").is_some());
        for bad in [
            "2026-1-1",
            "+10000-01-01",
            "2026-02-30",
            "20260101",
            "2026-01-01 ",
        ] {
            assert!(strict_date(bad).is_none(), "{bad}");
        }
        let e = err::<SettleParams>(r#"{"date":"2026-1-1"}"#);
        assert!(e.starts_with("date:"), "{e}");
    }

    #[test]
    fn text_is_bounded_and_clean() {
        let e = err::<AuditParams>(r#"{"operator":"a\u202eb"}"#);
        assert!(e.starts_with("operator:"), "{e}");
        let long = format!(r#"{{"operator":"{}"}}"#, "x".repeat(129));
        assert!(err::<AuditParams>(&long).starts_with("operator:"));
        let e = err::<AuditParams>(r#"{"limit":0}"#);
        assert!(e.starts_with("limit:"), "{e}");
    }
}
