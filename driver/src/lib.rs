//! # sscard-driver
//!
//! The terminal side of China's social-security CPU card (社会保障卡) as profiled by
//! the SSC-AES card profile (`shared/spec/card-profile.md`).
//!
//! Layers, bottom up:
//! - [`apdu`], [`status`], [`atr`], [`tlv`]: ISO 7816 data, parsed without panics.
//! - [`transport`]: a small trait for "a connected card" ([`transport::CardTransport`])
//!   with PC/SC and serial backends; the T=0 rules (`61xx`, `6Cxx`) are applied once,
//!   above the trait, in [`transport::Transaction`].
//! - [`crypto`] and [`keys`]: the key hierarchy (card profile §4) and every purse formula
//!   (§6, §7), on RustCrypto's `aes` and `cmac`; key material zeroizes on drop.
#![forbid(unsafe_code)]

pub mod apdu;
pub mod app;
pub mod atr;
pub mod crypto;
pub mod keyprovider;
pub mod keys;
pub mod personalize;
pub mod status;
pub mod testkeys;
pub mod tlv;
pub mod transport;
pub mod types;

pub use apdu::{ApduError, CommandApdu, ResponseApdu};
pub use atr::{Atr, AtrError};
pub use keys::{Key16, KeyPurpose};
pub use status::StatusWord;
pub use transport::{CardTransport, RawTransaction, Transaction, TransportError};
pub use types::{CardId, Region, TerminalId};
