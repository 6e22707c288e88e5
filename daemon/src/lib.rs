//! # sscard-daemon
//!
//! `sscardd`: the local JSON-RPC API (`shared/spec/api.md`, documented as implemented
//! in `docs/api.md`) that pharmacy POS and settlement software pays through with
//! China's social-security cards.
//!
//! ```text
//!  clients ── Unix socket / loopback TCP ──> server (one task per connection)
//!                                              │ sessions, roles, params
//!                                              ▼
//!                                         methods ──> journal thread (SQLite, WAL)
//!                                              │         payments, audit chain,
//!                                              │         blacklist, sequence
//!                                              ▼
//!                       readers: one task per reader, jobs in arrival order
//!                              │  (ops: card operations as blocking functions)
//!                              ▼
//!                       ReaderSource: PC/SC (pcscd) or simulated
//! ```
//!
//! Modules: [`config`] (TOML), [`journal`] (the `sscard-journal` crate, which `sscard
//! audit verify` and `sscard backup` share, re-exported, and the blacklist file's
//! parser), [`server`] and [`frame`] (JSON-RPC over lines),
//! [`session`] and [`methods`] (roles and the method table), [`readers`] (reader tasks
//! and sources), [`ops`] (debits, refunds, recovery and policy), [`keys`] (keystore,
//! PSAM or test keys), [`daemon`] (start and shutdown), [`error`] (the error kinds and
//! the one mapping from driver errors), [`upload`] (completed payments to the
//! settlement centre) and [`backup`] (the schedule of the journal's online backups,
//! which are `sscard_journal::backup`). Simulated readers hold the cards of
//! `sscard-emulator`.
#![forbid(unsafe_code)]

pub mod backup;
pub mod config;
pub mod daemon;
pub mod error;
pub mod events;
pub mod frame;
pub mod journal;
pub mod keys;
pub mod methods;
pub mod ops;
pub mod readers;
pub mod rpc;
pub mod server;
pub mod session;
pub mod state;
pub mod text;
pub mod throttle;
pub mod upload;

pub use config::Config;
pub use daemon::{Daemon, Options};
pub use error::ApiError;
pub use state::State;
