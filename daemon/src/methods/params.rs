//! Reading `params`: every error is `-32602` with a message that starts with the field's
//! name. Unknown fields are refused too (a misspelt `amount` must not pass unnoticed).

use crate::error::ApiError;
use chrono::NaiveDate;
use serde_json::{Map, Value};
use sscard_driver::app::Pin;

/// The params object of a request.
pub struct Params<'a> {
    map: &'a Map<String, Value>,
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl<'a> Params<'a> {
    /// `params` as sent: an object, or absent / null (no params).
    pub fn new(v: Option<&'a Value>) -> Result<Params<'a>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(Params {
                map: EMPTY.get_or_init(Map::new),
            }),
            Some(Value::Object(map)) => Ok(Params { map }),
            Some(_) => Err(ApiError::params(
                "params: must be an object (named parameters)",
            )),
        }
    }

    /// Refuse any field not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ApiError::params(format!(
                "{k}: unknown parameter (this method takes {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    pub fn str(&self, k: &str) -> Result<&'a str, ApiError> {
        self.opt_str(k)?
            .ok_or_else(|| ApiError::params(format!("{k}: a string is required")))
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::params(format!("{k}: must be a string"))),
        }
    }

    /// An order id: 1 to 64 printable characters.
    pub fn order_id(&self, k: &str) -> Result<String, ApiError> {
        let s = self.str(k)?;
        if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
            return Err(ApiError::params(format!(
                "{k}: 1 to 64 printable characters"
            )));
        }
        Ok(s.to_string())
    }

    /// A positive whole number of fen that fits the card's 4-byte amounts.
    pub fn fen(&self, k: &str) -> Result<u32, ApiError> {
        self.opt_fen(k)?.ok_or_else(|| {
            ApiError::params(format!("{k}: a positive integer number of fen is required"))
        })
    }

    pub fn opt_fen(&self, k: &str) -> Result<Option<u32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    ApiError::params(format!(
                        "{k}: a positive integer number of fen (at most {}) is required",
                        u32::MAX
                    ))
                }),
        }
    }

    /// A PIN: 4 to 12 digits, as a string. The message never repeats it.
    pub fn pin(&self, k: &str) -> Result<Pin, ApiError> {
        let s = match self.get(k) {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(ApiError::params(format!(
                    "{k}: a string of 4 to 12 digits is required"
                )))
            }
            None => {
                return Err(ApiError::params(format!(
                    "{k}: a string of 4 to 12 digits is required"
                )))
            }
        };
        Pin::new(s).map_err(|_| ApiError::params(format!("{k}: 4 to 12 digits")))
    }

    /// A date `YYYY-MM-DD`.
    pub fn date(&self, k: &str) -> Result<NaiveDate, ApiError> {
        let s = self.str(k)?;
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| ApiError::params(format!("{k}: a date YYYY-MM-DD is required")))
    }

    pub fn opt_date(&self, k: &str) -> Result<Option<NaiveDate>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(_) => self.date(k).map(Some),
        }
    }

    /// A positive count at most `max`.
    pub fn opt_count(&self, k: &str, max: usize) -> Result<Option<usize>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=max).contains(n))
                .map(Some)
                .ok_or_else(|| ApiError::params(format!("{k}: an integer from 1 to {max}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let v = json!({"amount_fen": 12.5, "pin": 123456, "x": 1, "order_id": "", "date": "2026-02-30"});
        let p = Params::new(Some(&v)).unwrap();
        let m = |e: ApiError| {
            assert_eq!(e.code, -32602);
            e.message
        };
        assert!(m(p.fen("amount_fen").unwrap_err()).starts_with("amount_fen:"));
        assert!(m(p.pin("pin").unwrap_err()).starts_with("pin:"));
        assert!(m(p
            .only(&["amount_fen", "pin", "order_id", "date"])
            .unwrap_err())
        .starts_with("x:"));
        assert!(m(p.order_id("order_id").unwrap_err()).starts_with("order_id:"));
        assert!(m(p.date("date").unwrap_err()).starts_with("date:"));
        assert!(m(p.str("missing").unwrap_err()).starts_with("missing:"));
        let v = json!({"amount_fen": 0, "pin": "12ab56"});
        let p = Params::new(Some(&v)).unwrap();
        assert!(p.fen("amount_fen").is_err());
        let e = m(p.pin("pin").unwrap_err());
        assert!(!e.contains("12ab56"), "{e}");
        assert!(Params::new(Some(&json!([1]))).is_err());
        assert!(Params::new(None).unwrap().only(&[]).is_ok());
        let v = json!({"amount_fen": 4294967296u64});
        assert!(Params::new(Some(&v)).unwrap().fen("amount_fen").is_err());
    }
}
