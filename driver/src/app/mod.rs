//! The card application of the SSC-AES profile (card profile §3 to §7) over any
//! [`Transaction`]: typed records, PIN, authentication and the purse.
//!
//! Every function takes the caller's transaction, so a multi-command operation runs
//! inside one PC/SC transaction and nothing interleaves with it.

mod error;
mod pin;
mod purse;
mod records;

pub use error::AppError;
pub use pin::{
    block_application, change_pin, change_pin_on_pad, external_authenticate, internal_authenticate,
    pin_tries_left, reload_pin, unblock_application, update_record, verify_pin, verify_pin_on_pad,
    Pin,
};
pub use purse::{
    balance, bcd_datetime, initialize_load, initialize_purchase, load, recover_purchase,
    transaction_log, LoadProof, LogRecord, PreparedLoad, PreparedPurchase, PurchaseProof, Recovery,
};
pub use records::{read_card, read_policy, read_rest, CardRecord, PolicyRecords};

use crate::apdu::CommandApdu;
use crate::status::StatusWord;
use crate::transport::{Transaction, TransportError};

/// The application identifier: `"sx1.sh."` ‖ GBK("社会保障") (card profile §3).
pub const AID: [u8; 15] = [
    0x73, 0x78, 0x31, 0x2E, 0x73, 0x68, 0x2E, 0xC9, 0xE7, 0xBB, 0xE1, 0xB1, 0xA3, 0xD5, 0xCF,
];

/// What SELECT said about the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The card answered `6283`: application blocked (card profile §5).
    pub blocked: bool,
}

fn cmd(cla: u8, ins: u8, p1: u8, p2: u8) -> CommandApdu {
    CommandApdu::new(cla, ins, p1, p2)
}

/// Build a command with data and Le; the sizes here are fixed by the profile.
pub(crate) fn apdu(
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &[u8],
    le: usize,
) -> Result<CommandApdu, AppError> {
    cmd(cla, ins, p1, p2)
        .with_data(data.to_vec())
        .and_then(|c| c.with_le(le))
        .map_err(|e| AppError::Transport(TransportError::Apdu(e)))
}

/// SELECT the social-security application by name (card profile §3).
pub fn select_application(tx: &mut Transaction<'_>) -> Result<Selected, AppError> {
    let r = tx.transmit(&apdu(0x00, 0xA4, 0x04, 0x00, &AID, 0)?)?;
    match r.sw {
        StatusWord::Ok => Ok(Selected { blocked: false }),
        StatusWord::ApplicationBlocked => Ok(Selected { blocked: true }),
        StatusWord::FileNotFound => Err(AppError::NotSupported(
            "no social-security application (blank or foreign card)".into(),
        )),
        sw => Err(AppError::Card(sw)),
    }
}

/// SELECT an EF of the application by FID (card profile §3).
pub fn select_ef(tx: &mut Transaction<'_>, fid: u16) -> Result<(), AppError> {
    let r = tx.transmit(&apdu(0x00, 0xA4, 0x02, 0x00, &fid.to_be_bytes(), 0)?)?;
    match r.sw {
        StatusWord::Ok => Ok(()),
        StatusWord::FileNotFound => Err(AppError::NotSupported(format!("EF {fid:04X} not found"))),
        sw => Err(AppError::Card(sw)),
    }
}

/// GET DATA chip serial (card profile §5), readable in every life-cycle state.
pub fn chip_serial(tx: &mut Transaction<'_>) -> Result<[u8; 8], AppError> {
    let d = tx
        .transmit_ok(
            &cmd(0x80, 0xCA, 0x00, 0x01)
                .with_le(8)
                .map_err(TransportError::from)?,
        )
        .map_err(AppError::from)?;
    d.try_into()
        .map_err(|_| AppError::Card(StatusWord::WrongLength))
}
