//! The payment's kind and status (api.md "Payment object"), stored in the journal as the
//! same lowercase words the API answers with.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;
use std::fmt;

/// `debit` (purse purchase, card profile §6) or `refund` (purse load, §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentKind {
    Debit,
    Refund,
}

/// Where a payment stands: `pending` (journaled, outcome not yet known), `completed`
/// or `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Pending,
    Completed,
    Failed,
}

impl PaymentKind {
    pub const ALL: [PaymentKind; 2] = [PaymentKind::Debit, PaymentKind::Refund];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Debit => "debit",
            PaymentKind::Refund => "refund",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 3] = [
        PaymentStatus::Pending,
        PaymentStatus::Completed,
        PaymentStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Completed => "completed",
            PaymentStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

macro_rules! sql_word {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                <$t>::parse(s).ok_or_else(|| {
                    FromSqlError::Other(format!("{s:?} is not a {}", stringify!($t)).into())
                })
            }
        }
    };
}

sql_word!(PaymentKind);
sql_word!(PaymentStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_sqlite_and_json() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for k in PaymentKind::ALL {
            let back: PaymentKind = db.query_row("SELECT ?1", [k], |r| r.get(0)).unwrap();
            assert_eq!(back, k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for s in PaymentStatus::ALL {
            let back: PaymentStatus = db.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let bad: rusqlite::Result<PaymentStatus> =
            db.query_row("SELECT 'settled'", [], |r| r.get(0));
        assert!(bad.is_err());
    }
}
