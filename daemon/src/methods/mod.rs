//! The method table (api.md "Methods") and the one dispatch every call goes through.
//!
//! Each row names a [`Method`], who may call it, its typed params (a serde type with
//! `deny_unknown_fields`, in [`params`]) and its handler. [`dispatch`] runs, for every
//! call: operator check → refusal of notifications → role check → the journal's
//! write probe (an audited call that could not be audited is refused with
//! `JOURNAL_UNAVAILABLE` before it touches a card) → params → handler → exactly one
//! audit entry. The probe of a card method runs on the journal thread while the call
//! is parsed and queued for its reader, and its card job waits for it before the first
//! command ([`Probe`]). Handlers never write the call's audit entry themselves: they say what
//! it should hold ([`Note`]). A pending payment that a call settles adds its own
//! `settle` entry ([`pay`]).
//!
//! Not audited: `system.health` and `reader.list` (they touch no card, money or
//! record), and any call from a connection that never logged in (an anonymous client
//! must not be able to fill the disk); failed logins are audited in bursts
//! ([`crate::throttle`]).

pub mod admin;
pub mod audit;
pub mod card;
pub mod params;
pub mod pay;
pub mod settle;
pub mod system;

use crate::config::Operator;
use crate::error::{ApiError, ErrorKind};
use crate::events::Event;
use crate::journal::{JournalError, Payment};
use crate::ops::{Ctx, PinSource, Seen};
use crate::readers::Card;
use crate::session::{Role, Session};
use crate::state::State;
use crate::throttle::Peer;
use params::*;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::broadcast;

use Role::{Admin, Auditor, Cashier, Supervisor};

const ALL: &[Role] = &[Cashier, Supervisor, Auditor, Admin];
const TILL: &[Role] = &[Cashier, Supervisor];
const QUERY: &[Role] = &[Cashier, Supervisor, Auditor];

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No login needed.
    Anyone,
    /// A logged-in operator of one of these roles.
    Roles(&'static [Role]),
}

/// One row of the method table.
#[derive(Debug)]
pub struct Row {
    pub method: Method,
    pub name: &'static str,
    pub access: Access,
    /// Whether a call leaves an audit entry.
    pub audited: bool,
}

macro_rules! methods {
    ($($v:ident $name:literal, $access:expr, audited: $audited:literal, $p:ty => $handler:path;)*) => {
        /// Every method (api.md's role table; the `blacklist.*` methods are this
        /// daemon's blacklist management for admins).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Method {
            $($v,)*
        }

        /// The method table, in the order of [`Method`].
        pub const TABLE: &[Row] = &[
            $(Row { method: Method::$v, name: $name, access: $access, audited: $audited },)*
        ];

        /// A call's params, read as its method's typed params.
        #[derive(Debug)]
        pub enum Params {
            $($v($p),)*
        }

        impl Params {
            /// Read `raw` as the params of `m`.
            pub fn parse(m: Method, raw: Option<&RawValue>) -> Result<Params, ApiError> {
                Ok(match m {
                    $(Method::$v => Params::$v(params::parse::<$p>(raw)?),)*
                })
            }
        }

        async fn run(c: &mut Call<'_>, p: Params) -> Result<Value, ApiError> {
            match p {
                $(Params::$v(p) => $handler(c, p).await,)*
            }
        }
    };
}

methods! {
    SystemHealth "system.health", Access::Anyone, audited: false, NoParams => system::health;
    SessionLogin "session.login", Access::Anyone, audited: true, LoginParams => system::login;
    ReaderList "reader.list", Access::Roles(ALL), audited: false, NoParams => system::reader_list;
    EventsSubscribe "events.subscribe", Access::Roles(ALL), audited: true, NoParams => system::subscribe;
    CardRead "card.read", Access::Roles(TILL), audited: true, ReaderParams => card::read;
    CardVerifyPin "card.verify_pin", Access::Roles(TILL), audited: true, VerifyPinParams => card::verify_pin;
    CardChangePin "card.change_pin", Access::Roles(TILL), audited: true, ChangePinParams => card::change_pin;
    CardBalance "card.balance", Access::Roles(TILL), audited: true, ReaderParams => card::balance;
    PayDebit "pay.debit", Access::Roles(TILL), audited: true, DebitParams => pay::debit;
    PayQuery "pay.query", Access::Roles(QUERY), audited: true, QueryParams => pay::query;
    PayRefund "pay.refund", Access::Roles(&[Supervisor]), audited: true, RefundParams => pay::refund;
    SettleDay "settle.day", Access::Roles(&[Supervisor, Auditor]), audited: true, SettleParams => settle::day;
    AuditQuery "audit.query", Access::Roles(&[Auditor, Admin]), audited: true, AuditParams => audit::query;
    BlacklistAdd "blacklist.add", Access::Roles(&[Admin]), audited: true, BlacklistAddParams => admin::add;
    BlacklistRemove "blacklist.remove", Access::Roles(&[Admin]), audited: true, BlacklistRemoveParams => admin::remove;
    BlacklistList "blacklist.list", Access::Roles(&[Admin, Auditor]), audited: true, NoParams => admin::list;
}

impl Method {
    /// The method of that name.
    pub fn from_name(name: &str) -> Option<Method> {
        TABLE.iter().find(|r| r.name == name).map(|r| r.method)
    }

    /// Its row of [`TABLE`].
    pub fn row(self) -> &'static Row {
        // TABLE is written in the order of the enum (a test checks it)
        &TABLE[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// Whether `role` may call it.
    pub fn allows(self, role: Role) -> bool {
        match self.row().access {
            Access::Anyone => true,
            Access::Roles(r) => r.contains(&role),
        }
    }
}

/// Per-connection state the methods see.
pub struct Connection {
    pub session: Session,
    pub events: Option<broadcast::Receiver<Event>>,
    /// Who is on the other end (the login throttle's key).
    pub peer: Peer,
    /// Failed logins on this connection (it is closed after
    /// [`crate::throttle::MAX_FAILURES_PER_CONNECTION`]).
    pub login_failures: u32,
    /// Set when the server should close the connection after this answer.
    pub close: bool,
}

impl Connection {
    pub fn new(peer: Peer) -> Connection {
        Connection {
            session: Session::default(),
            events: None,
            peer,
            login_failures: 0,
            close: false,
        }
    }
}

/// What a call's audit entry says besides the method and its result.
#[derive(Debug, Default)]
pub struct Note {
    pub reader: String,
    pub card: String,
    /// The outcome's text on success (`ok` when the handler gives none).
    pub detail: Option<String>,
    /// A payment the card completed, recorded with the audit entry in one commit.
    pub settle: Option<Payment>,
}

/// One call in progress.
pub struct Call<'a> {
    pub st: &'a Arc<State>,
    pub conn: &'a mut Connection,
    /// The caller; `None` only for [`Access::Anyone`] methods before login.
    pub op: Option<Operator>,
    pub note: Note,
    /// The journal's write probe of a card method, not yet waited for: its card job
    /// takes it ([`on_card`]); the dispatcher waits for it if no job did.
    probe: Option<Probe>,
}

/// The journal's write probe of one call ([`crate::journal::Journal::probe_write`]),
/// queued on the journal thread ahead of everything else the call does there.
pub struct Probe(tokio::sync::oneshot::Receiver<Result<(), JournalError>>);

impl Probe {
    fn start(st: &State) -> Probe {
        Probe(st.journal.submit(|j| j.probe_write()))
    }

    fn refused(e: impl std::fmt::Display) -> ApiError {
        ApiError::journal(format!("cannot write the audit log: {e}"))
    }

    /// Await the probe: an error means the call must not go on.
    async fn passed(self) -> Result<(), ApiError> {
        match self.0.await {
            Ok(r) => r.map_err(Probe::refused),
            Err(_) => Err(Probe::refused(JournalError::Closed)),
        }
    }

    /// Wait for the probe from a card job (blocking), before the first command.
    fn passed_blocking(self) -> Result<(), ApiError> {
        match self.0.blocking_recv() {
            Ok(r) => r.map_err(Probe::refused),
            Err(_) => Err(Probe::refused(JournalError::Closed)),
        }
    }
}

impl Call<'_> {
    /// The caller of a method that needs a login.
    pub fn operator(&self) -> Result<&Operator, ApiError> {
        self.op
            .as_ref()
            .ok_or_else(|| ApiError::kind(ErrorKind::Unauthenticated, "call session.login first"))
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
pub fn outcome(r: &Result<Value, ApiError>, detail: Option<String>) -> String {
    match r {
        Ok(_) => detail.unwrap_or_else(|| "ok".into()),
        Err(e) => error_outcome(e),
    }
}

/// The outcome text of an error.
pub fn error_outcome(e: &ApiError) -> String {
    match e.kind {
        Some(k) => format!("{k}: {}", e.message),
        None => format!("{}: {}", e.code, e.message),
    }
}

/// Run one call. `notification`: the request had no `id` (no answer will be sent).
pub async fn dispatch(
    st: &Arc<State>,
    conn: &mut Connection,
    name: &str,
    raw: Option<&RawValue>,
    notification: bool,
) -> Result<Value, ApiError> {
    let m = Method::from_name(name).ok_or_else(|| ApiError::method_not_found(name))?;
    let row = m.row();
    let config = st.config();
    let op = match conn.session.operator(&config) {
        Ok(op) => Some(op),
        Err(e) => {
            if let Access::Roles(_) = row.access {
                // a session whose operator was disabled or changed is audited; a
                // connection that never logged in is not
                if let Some(who) = conn.session.name() {
                    let who = who.to_string();
                    audit_entry(st, &who, m, &Note::default(), &error_outcome(&e)).await;
                }
                return Err(e);
            }
            None
        }
    };
    let who = op.as_ref().map(|o| o.name.clone()).unwrap_or_default();
    let audited = row.audited && op.is_some();
    if notification {
        let e = ApiError::invalid_request(format!(
            "{name} was sent as a notification (no id): refused, nothing was done"
        ));
        tracing::warn!("{}", e.message);
        if audited {
            audit_entry(st, &who, m, &Note::default(), &error_outcome(&e)).await;
        }
        return Err(e);
    }
    if let Some(op) = &op {
        if !m.allows(op.role) {
            let e = ApiError::kind(
                ErrorKind::Forbidden,
                format!("a {} may not call {name}", op.role.name()),
            );
            audit_entry(st, &who, m, &Note::default(), &error_outcome(&e)).await;
            return Err(e);
        }
    }
    // refuse what could not be audited before it touches anything: a method whose card
    // work goes through a reader job waits for the probe in that job, so that the probe
    // runs while the call is parsed and queued; every other one waits for it now
    let mut probe = row.audited.then(|| Probe::start(st));
    if !probe_in_job(m) {
        if let Some(p) = probe.take() {
            p.passed().await?;
        }
    }
    let p = match Params::parse(m, raw) {
        Ok(p) => p,
        Err(e) => {
            if let Some(p) = probe.take() {
                p.passed().await?;
            }
            if m == Method::SessionLogin {
                return Err(system::login_failed(st, conn, e).await);
            }
            if audited {
                audit_entry(st, &who, m, &Note::default(), &error_outcome(&e)).await;
            }
            return Err(e);
        }
    };
    let mut call = Call {
        st,
        conn,
        op,
        note: Note::default(),
        probe,
    };
    let r = run(&mut call, p).await;
    let Call {
        note, op, probe, ..
    } = call;
    if let Some(p) = probe {
        // no card job ran (the call answered from the journal): the probe decides now
        p.passed().await?;
    }
    if m == Method::SessionLogin {
        return match r {
            Err(e) => Err(system::login_failed(st, conn, e).await),
            Ok(v) => {
                let who = conn.session.name().unwrap_or_default().to_string();
                let text = note.detail.as_deref().unwrap_or("ok");
                if let Err(e) = try_audit(st, &who, m, &note, text).await {
                    // a login that cannot be audited does not stand
                    conn.session = Session::default();
                    return Err(e);
                }
                Ok(v)
            }
        };
    }
    if !row.audited {
        return r;
    }
    let who = op.map(|o| o.name).unwrap_or(who);
    let text = outcome(&r, note.detail.clone());
    match try_audit(st, &who, m, &note, &text).await {
        Ok(()) => r,
        // the probe passed a moment ago; if the entry still could not be written, a
        // call that only answered from the journal is refused, and one whose card
        // acted keeps its answer (the payment row records it)
        Err(e) if !touches_card(m) => Err(e),
        Err(_) => r,
    }
}

/// The methods whose card work is a reader job run through [`on_card`], which waits
/// for the call's write probe before the first command to the card.
/// (`pay.query` settles through [`pay`]'s own jobs, after its probe.)
fn probe_in_job(m: Method) -> bool {
    touches_card(m) && m != Method::PayQuery
}

/// Whether a method sends commands to a card.
pub fn touches_card(m: Method) -> bool {
    matches!(
        m,
        Method::CardRead
            | Method::CardVerifyPin
            | Method::CardChangePin
            | Method::CardBalance
            | Method::PayDebit
            | Method::PayQuery
            | Method::PayRefund
    )
}

async fn try_audit(
    st: &State,
    who: &str,
    m: Method,
    note: &Note,
    outcome: &str,
) -> Result<(), ApiError> {
    let settle = note.settle.clone();
    match st
        .audit_settling(who, m.name(), &note.reader, &note.card, outcome, settle)
        .await
    {
        Ok(true) => {
            if let Some(p) = &note.settle {
                let _ = st.events.send(Event::settled(p));
            }
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            if let Some(p) = &note.settle {
                // the card has paid: the row stays pending and recovery completes it
                tracing::error!(order = %p.order_id, "{} done but not recorded: {e}", p.kind);
            }
            Err(ApiError::journal(format!(
                "cannot write the audit log: {e}"
            )))
        }
    }
}

async fn audit_entry(st: &State, who: &str, m: Method, note: &Note, outcome: &str) {
    // the error the caller gets stands either way; State::audit logs the failure
    let _ = try_audit(st, who, m, note, outcome).await;
}

/// Run a card operation on the reader the call names (or the only one with a card);
/// the reader and the card number go into the call's audit note, and `ok` gives its
/// outcome text on success.
/// The PIN of a call (api.md 1.1): the one sent (`field` names it in errors), or, when
/// none was sent and the reader has a PIN pad, the pad. With `require_pin_pad`, a PIN
/// sent for a reader that has a pad is refused.
pub fn pin_source<T>(
    c: &Call<'_>,
    reader: Option<&ReaderName>,
    pin: Option<T>,
    field: &str,
) -> Result<PinSource<T>, ApiError> {
    let picked = c.st.readers.pick(reader.map(|r| r.0.as_str()));
    match (pin, picked) {
        (Some(_), Ok(r)) if r.pin_pad() && c.st.config().require_pin_pad => {
            Err(ApiError::params(format!(
                "{field}: reader {} has a PIN pad and require_pin_pad is set: send no PIN, \
                 the holder types it on the pad",
                r.name
            )))
        }
        (Some(p), _) => Ok(PinSource::Sent(p)),
        (None, Ok(r)) if r.pin_pad() => Ok(PinSource::Pad { reader: r.name }),
        (None, Ok(r)) => Err(ApiError::params(format!(
            "{field}: required (reader {} has no PIN pad)",
            r.name
        ))),
        // no reader to ask: its error, as the call would have got it
        (None, Err(e)) => Err(e),
    }
}

pub async fn on_card<T: Send + 'static>(
    c: &mut Call<'_>,
    reader: Option<&ReaderName>,
    f: impl FnOnce(&mut Card<'_>, &Ctx) -> Seen<T> + Send + 'static,
    ok: impl FnOnce(&T) -> String,
) -> Result<T, ApiError> {
    let name = reader.map(|r| r.0.as_str());
    c.note.reader = name.unwrap_or("").to_string();
    let r = c.st.readers.pick(name)?;
    c.note.reader = r.name.clone();
    let x = ctx(c.st);
    let probe = c.probe.take();
    let (card, res) = r
        .run(c.st.reader_wait(), move |t| {
            if let Some(p) = probe {
                if let Err(e) = p.passed_blocking() {
                    return Ok((String::new(), Err(e)));
                }
            }
            Ok(f(t, &x))
        })
        .await
        .unwrap_or_else(|e| (String::new(), Err(e)));
    c.note.card = card;
    if let Ok(v) = &res {
        c.note.detail = Some(ok(v));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_the_enum() {
        for (i, r) in TABLE.iter().enumerate() {
            assert_eq!(r.method as usize, i, "{}", r.name);
            assert_eq!(Method::from_name(r.name), Some(r.method));
            assert_eq!(r.method.name(), r.name);
        }
        assert_eq!(Method::from_name("pay.Debit"), None);
    }

    #[test]
    fn roles_follow_api_md() {
        use Method::*;
        assert!(PayRefund.allows(Supervisor) && !PayRefund.allows(Cashier));
        assert!(!PayDebit.allows(Admin) && !PayDebit.allows(Auditor));
        assert!(!CardRead.allows(Admin), "admins never touch money or cards");
        assert!(PayQuery.allows(Auditor) && !PayQuery.allows(Admin));
        assert!(AuditQuery.allows(Auditor) && !AuditQuery.allows(Cashier));
        assert!(SystemHealth.allows(Cashier));
        for r in TABLE {
            if touches_card(r.method) {
                assert!(r.audited, "{} touches a card and must be audited", r.name);
            }
        }
    }
}
