//! The method table (api.md "Methods") in one place: who may call what, and the
//! handler of each method group (`card`, `pay`, `settle`, `audit`, `admin`, `system`).
//!
//! `session.login` and `events.subscribe` change the connection and are handled by the
//! server; their rows are here for the role check.

pub mod admin;
pub mod audit;
pub mod card;
pub mod params;
pub mod pay;
pub mod settle;
pub mod system;

use crate::config::Operator;
use crate::error::{ApiError, ErrorKind};
use crate::ops::{Ctx, Seen};
use crate::session::Role;
use crate::state::State;
use params::Params;
use serde_json::Value;
use sscard_driver::transport::CardTransport;
use std::sync::Arc;

use Role::{Admin, Auditor, Cashier, Supervisor};

const ALL: &[Role] = &[Cashier, Supervisor, Auditor, Admin];
const TILL: &[Role] = &[Cashier, Supervisor];

/// A method: its name and the roles that may call it (`None`: no login needed).
pub struct Method {
    pub name: &'static str,
    pub roles: Option<&'static [Role]>,
}

/// Every method (api.md's role table; the `blacklist.*` methods are this daemon's
/// "blacklist management" for admins).
pub const METHODS: &[Method] = &[
    Method {
        name: "system.health",
        roles: None,
    },
    Method {
        name: "session.login",
        roles: None,
    },
    Method {
        name: "reader.list",
        roles: Some(ALL),
    },
    Method {
        name: "events.subscribe",
        roles: Some(ALL),
    },
    Method {
        name: "card.read",
        roles: Some(TILL),
    },
    Method {
        name: "card.verify_pin",
        roles: Some(TILL),
    },
    Method {
        name: "card.change_pin",
        roles: Some(TILL),
    },
    Method {
        name: "card.balance",
        roles: Some(TILL),
    },
    Method {
        name: "pay.debit",
        roles: Some(TILL),
    },
    Method {
        name: "pay.query",
        roles: Some(&[Cashier, Supervisor, Auditor]),
    },
    Method {
        name: "pay.refund",
        roles: Some(&[Supervisor]),
    },
    Method {
        name: "settle.day",
        roles: Some(&[Supervisor, Auditor]),
    },
    Method {
        name: "audit.query",
        roles: Some(&[Auditor, Admin]),
    },
    Method {
        name: "blacklist.add",
        roles: Some(&[Admin]),
    },
    Method {
        name: "blacklist.remove",
        roles: Some(&[Admin]),
    },
    Method {
        name: "blacklist.list",
        roles: Some(&[Admin, Auditor]),
    },
];

/// The method of that name.
pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Whether `role` may call `m`.
pub fn allowed(m: &Method, role: Role) -> bool {
    match m.roles {
        None => true,
        Some(r) => r.contains(&role),
    }
}

/// Refuse a role the table does not list.
pub fn authorize(m: &Method, op: &Operator) -> Result<(), ApiError> {
    if allowed(m, op.role) {
        Ok(())
    } else {
        Err(ApiError::kind(
            ErrorKind::Forbidden,
            format!("a {} may not call {}", op.role.name(), m.name),
        ))
    }
}

/// Run an authorized call (everything but `session.login` and `events.subscribe`).
pub async fn call(
    st: &Arc<State>,
    op: &Operator,
    m: &Method,
    p: &Params<'_>,
) -> Result<Value, ApiError> {
    match m.name {
        "reader.list" => system::reader_list(st, p),
        "card.read" | "card.verify_pin" | "card.change_pin" | "card.balance" => {
            card::call(st, op, m.name, p).await
        }
        "pay.debit" => pay::debit(st, op, p).await,
        "pay.query" => pay::query(st, op, p).await,
        "pay.refund" => pay::refund(st, op, p).await,
        "settle.day" => settle::day(st, op, p).await,
        "audit.query" => audit::query(st, p).await,
        "blacklist.add" | "blacklist.remove" | "blacklist.list" => {
            admin::call(st, op, m.name, p).await
        }
        other => Err(ApiError::method_not_found(other)),
    }
}

/// The context card jobs get.
pub fn ctx(st: &State) -> Ctx {
    Ctx {
        journal: st.journal.clone(),
        keys: st.keys.clone(),
        config: st.config(),
        events: st.events.clone(),
    }
}

/// An audit outcome: `ok …` or the error's kind (or code) and message.
pub fn outcome<T>(r: &Result<T, ApiError>, ok: impl FnOnce(&T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => match e.kind {
            Some(k) => format!("{k}: {}", e.message),
            None => format!("{}: {}", e.code, e.message),
        },
    }
}

/// Run a card operation on the reader the call names (or the only one with a card),
/// and write the audit entry.
pub async fn on_card<T: Send + 'static>(
    st: &Arc<State>,
    op: &Operator,
    method: &str,
    reader: Option<&str>,
    f: impl FnOnce(&mut dyn CardTransport, &Ctx) -> Seen<T> + Send + 'static,
    ok: impl FnOnce(&T) -> String,
) -> Result<T, ApiError> {
    let r = match st.readers.pick(reader) {
        Ok(r) => r,
        Err(e) => {
            st.audit(
                &op.name,
                method,
                reader.unwrap_or(""),
                "",
                &outcome::<()>(&Err(e.clone()), |_| String::new()),
            )
            .await;
            return Err(e);
        }
    };
    let c = ctx(st);
    let (card, res) = r
        .run(st.reader_wait(), move |t| Ok(f(t, &c)))
        .await
        .unwrap_or_else(|e| (String::new(), Err(e)));
    st.audit(&op.name, method, &r.name, &card, &outcome(&res, ok))
        .await;
    res
}
