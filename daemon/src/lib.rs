//! # sscard-daemon
//!
//! `sscardd`: the local JSON-RPC API (`shared/spec/api.md`) that pharmacy POS and
//! hospital settlement software pays through. One thread owns each reader (PC/SC calls
//! block), one task serves each connection, and the journal (SQLite, WAL,
//! `synchronous=FULL`) records every payment before its DEBIT and every call in a
//! SHA-256-chained audit log.

pub mod config;
pub mod error;
pub mod journal;
pub mod methods;
pub mod readers;
pub mod server;
