//! The purse (card profile §6, §7): balance, log, two-phase purchase with tear
//! recovery, and load.

use super::{apdu, AppError};
use crate::crypto::{LoadContext, TXN_PURCHASE};
use crate::keyprovider::{KeyProvider, PurchaseInit, PurchaseSession};
use crate::keys::KeyPurpose;
use crate::status::StatusWord;
use crate::transport::Transaction;
use crate::types::{CardId, TerminalId};
use chrono::{Datelike, NaiveDateTime, Timelike};
use serde::Serialize;

/// BCD date and time of a moment (card profile §1).
pub fn bcd_datetime(t: NaiveDateTime) -> ([u8; 4], [u8; 3]) {
    let b = |v: u32| (((v / 10 % 10) << 4) | (v % 10)) as u8;
    let y = t.year().clamp(0, 9999) as u32;
    (
        [b(y / 100), b(y % 100), b(t.month()), b(t.day())],
        [b(t.hour()), b(t.minute()), b(t.second())],
    )
}

/// GET BALANCE (§5), in fen.
pub fn balance(tx: &mut Transaction<'_>) -> Result<u32, AppError> {
    let r = tx.transmit(&apdu(0x80, 0x5C, 0x00, 0x02, &[], 4)?)?;
    match r.sw {
        StatusWord::Ok => {
            let b: [u8; 4] = r
                .data
                .try_into()
                .map_err(|_| AppError::Card(StatusWord::WrongLength))?;
            Ok(u32::from_be_bytes(b))
        }
        StatusWord::ConditionsNotSatisfied => Err(AppError::Blocked),
        sw => Err(AppError::Card(sw)),
    }
}

/// One transaction log record (§3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    pub counter: u16,
    pub amount: u32,
    /// 06 purchase, 02 load.
    pub kind: u8,
    pub terminal_id: String,
    pub date: String,
    pub time: String,
}

/// The transaction log, newest first (stops at the first absent record).
pub fn transaction_log(tx: &mut Transaction<'_>) -> Result<Vec<LogRecord>, AppError> {
    let mut out = Vec::new();
    for n in 1..=10u8 {
        let r = tx.transmit(&apdu(0x00, 0xB2, n, 0xC4, &[], 0x17)?)?;
        match r.sw {
            StatusWord::Ok if r.data.len() == 23 => {
                let d = &r.data;
                out.push(LogRecord {
                    counter: u16::from_be_bytes([d[0], d[1]]),
                    amount: u32::from_be_bytes([d[5], d[6], d[7], d[8]]),
                    kind: d[9],
                    terminal_id: hex::encode_upper(&d[10..16]),
                    date: hex::encode(&d[16..20]),
                    time: hex::encode(&d[20..23]),
                });
            }
            StatusWord::Ok => {
                return Err(AppError::BadRecord {
                    ef: 0x0018,
                    tag: n,
                    reason: format!("log record of {} bytes", r.data.len()),
                })
            }
            StatusWord::RecordNotFound => break,
            StatusWord::ConditionsNotSatisfied => return Err(AppError::Blocked),
            sw => return Err(AppError::Card(sw)),
        }
    }
    Ok(out)
}

/// A purchase after INITIALIZE FOR PURCHASE and MAC1, before DEBIT (card profile §6):
/// what the journal writes before the debit goes to the card. It carries its own
/// purchase session, and [`PreparedPurchase::debit`] consumes it: a prepared purchase
/// is debited at most once. Not `Clone`; `Debug` redacts the session.
#[derive(Debug, Serialize)]
pub struct PreparedPurchase {
    #[serde(serialize_with = "ser_id")]
    pub card_id: CardId,
    pub amount: u32,
    pub balance_before: u32,
    pub counter: u16,
    #[serde(serialize_with = "ser_tid")]
    pub terminal_id: TerminalId,
    pub terminal_seq: u32,
    pub date: [u8; 4],
    pub time: [u8; 3],
    #[serde(skip)]
    mac1: [u8; 4],
    #[serde(skip)]
    session: PurchaseSession,
}

fn ser_id<S: serde::Serializer>(id: &CardId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}
fn ser_tid<S: serde::Serializer>(id: &TerminalId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// A completed purchase (§6 step 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PurchaseProof {
    pub counter: u16,
    pub terminal_seq: u32,
    pub amount: u32,
    pub balance_before: u32,
    pub balance_after: u32,
    /// 8 hex digits.
    pub tac: String,
}

/// INITIALIZE FOR PURCHASE, then MAC1 and the terminal sequence from the provider
/// (§6 steps 1–2). The PIN must have been verified in this selection.
pub fn initialize_purchase(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
    amount: u32,
    when: NaiveDateTime,
) -> Result<PreparedPurchase, AppError> {
    if amount == 0 {
        return Err(AppError::BadInput("amount must be positive".into()));
    }
    if !keys.supports(KeyPurpose::Purchase) {
        return Err(AppError::KeyUnavailable("PURCHASE"));
    }
    let tid = keys.terminal_id();
    let mut data = vec![KeyPurpose::Purchase.id()];
    data.extend_from_slice(&amount.to_be_bytes());
    data.extend_from_slice(&tid.0);
    let r = tx.transmit(&apdu(0x80, 0x50, 0x01, 0x02, &data, 0x0F)?)?;
    let d = match r.sw {
        StatusWord::Ok if r.data.len() == 15 => r.data,
        StatusWord::Ok => return Err(AppError::Card(StatusWord::WrongLength)),
        StatusWord::InsufficientFunds => return Err(AppError::InsufficientFunds),
        StatusWord::SecurityStatusNotSatisfied => return Err(AppError::SecurityNotSatisfied),
        StatusWord::ConditionsNotSatisfied => return Err(AppError::Blocked),
        sw => return Err(AppError::Card(sw)),
    };
    let (date, time) = bcd_datetime(when);
    let init = PurchaseInit {
        card_id: *card_id,
        amount,
        counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[11], d[12], d[13], d[14]],
        key_version: d[9],
        algorithm: d[10],
        date,
        time,
    };
    let (seq, mac1, session) = keys.purchase_mac1(&init).map_err(AppError::Key)?;
    Ok(PreparedPurchase {
        card_id: *card_id,
        amount,
        balance_before: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        counter: init.counter,
        terminal_id: tid,
        terminal_seq: seq,
        date,
        time,
        mac1,
        session,
    })
}

impl PreparedPurchase {
    /// DEBIT (§6 step 3): the card commits; MAC2 is checked by the provider with this
    /// purchase's own session. A transport failure after the command left is
    /// [`AppError::Uncertain`]: recover with [`recover_purchase`] when the card is back.
    ///
    /// `debit` takes the prepared purchase by value, so it cannot be sent twice:
    ///
    /// ```compile_fail
    /// # use sscard_driver::app::PreparedPurchase;
    /// # use sscard_driver::keyprovider::KeyProvider;
    /// # use sscard_driver::transport::Transaction;
    /// fn twice(p: PreparedPurchase, tx: &mut Transaction<'_>, k: &mut dyn KeyProvider) {
    ///     let _ = p.debit(tx, k);
    ///     let _ = p.debit(tx, k); // error[E0382]: use of moved value: `p`
    /// }
    /// ```
    pub fn debit(
        self,
        tx: &mut Transaction<'_>,
        keys: &mut dyn KeyProvider,
    ) -> Result<PurchaseProof, AppError> {
        let mut data = self.terminal_seq.to_be_bytes().to_vec();
        data.extend_from_slice(&self.date);
        data.extend_from_slice(&self.time);
        data.extend_from_slice(&self.mac1);
        let r = match tx.transmit(&apdu(0x80, 0x54, 0x01, 0x00, &data, 0x08)?) {
            Ok(r) => r,
            Err(e) if e.outcome_unknown() => {
                return Err(AppError::Uncertain {
                    step: "DEBIT",
                    source: e,
                })
            }
            Err(e) => return Err(AppError::Transport(e)),
        };
        match r.sw {
            StatusWord::Ok if r.data.len() == 8 => {}
            StatusWord::Ok => return Err(AppError::Card(StatusWord::WrongLength)),
            StatusWord::MacInvalid => return Err(AppError::MacMismatch("card refused MAC1")),
            sw => return Err(AppError::Card(sw)),
        }
        let proof = self.proof(hex::encode_upper(&r.data[..4]));
        let ok = keys
            .verify_purchase_mac2(self.session, &r.data[4..8])
            .map_err(AppError::Key)?;
        if !ok {
            return Err(AppError::MacMismatch("MAC2 from the card does not verify"));
        }
        Ok(proof)
    }

    fn proof(&self, tac: String) -> PurchaseProof {
        PurchaseProof {
            counter: self.counter,
            terminal_seq: self.terminal_seq,
            amount: self.amount,
            balance_before: self.balance_before,
            balance_after: self.balance_before - self.amount.min(self.balance_before),
            tac,
        }
    }
}

/// What recovery found out about a purchase whose DEBIT answer was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The card committed it; the TAC is the card's.
    Happened { tac: String },
    /// The card committed it (its log holds it), but a later purchase replaced the
    /// proof, so the card can no longer give its TAC.
    HappenedWithoutProof,
    /// The card did not commit it.
    NotHappened,
    /// The card cannot tell any more: its log (ten records) no longer reaches back to
    /// that counter. The payment must stay pending for manual settlement.
    Unknown,
}

/// Decide whether the purchase that used `counter` for `amount` happened (§6 step 4):
/// GET TRANSACTION PROOF for that counter gives its TAC, and the newest log record must
/// then hold the same counter, amount and terminal, so a proof is never taken for
/// another purchase. `9406` (no proof for that counter) is settled by the log, which a
/// later purchase may have pushed past the counter: then [`Recovery::Unknown`]. The
/// application must be selected.
pub fn recover_purchase(
    tx: &mut Transaction<'_>,
    counter: u16,
    amount: u32,
    terminal_id: &TerminalId,
) -> Result<Recovery, AppError> {
    let r = tx.transmit(&apdu(0x80, 0x5A, 0x00, 0x06, &counter.to_be_bytes(), 0x08)?)?;
    match r.sw {
        StatusWord::Ok if r.data.len() == 8 => {
            let log = transaction_log(tx)?;
            match log.first() {
                Some(l)
                    if l.counter == counter
                        && l.amount == amount
                        && l.kind == TXN_PURCHASE
                        && l.terminal_id == terminal_id.to_hex() =>
                {
                    Ok(Recovery::Happened {
                        tac: hex::encode_upper(&r.data[..4]),
                    })
                }
                // the counter was committed once, by another purchase: ours never was
                Some(l) if l.counter == counter && l.kind == TXN_PURCHASE => {
                    Ok(Recovery::NotHappened)
                }
                _ => Err(AppError::BadInput(format!(
                    "card proof for counter {counter} does not match its log"
                ))),
            }
        }
        StatusWord::MacNotAvailable => {
            // no proof for that counter: either ours never committed, or a later
            // purchase replaced the proof. The log decides: a purchase record with that
            // counter, amount and terminal is ours; if the log still reaches back to the
            // counter and holds no such record, ours did not happen.
            let log = transaction_log(tx)?;
            let ours = log.iter().any(|l| {
                l.kind == TXN_PURCHASE
                    && l.counter == counter
                    && l.amount == amount
                    && l.terminal_id == terminal_id.to_hex()
            });
            let reaches_back = log.len() < 10
                || log
                    .iter()
                    .filter(|l| l.kind == TXN_PURCHASE)
                    .any(|l| l.counter <= counter);
            Ok(if ours {
                Recovery::HappenedWithoutProof
            } else if reaches_back {
                Recovery::NotHappened
            } else {
                Recovery::Unknown
            })
        }
        StatusWord::ConditionsNotSatisfied => Err(AppError::Blocked),
        sw => Err(AppError::Card(sw)),
    }
}

/// A completed load (§7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadProof {
    pub online_counter: u16,
    pub amount: u32,
    pub balance_before: u32,
    pub balance_after: u32,
    pub tac: String,
}

/// A load after INITIALIZE FOR LOAD, the card's MAC1 checked and MAC2 computed, before
/// CREDIT FOR LOAD (§7): what an office journals `pending` before the credit goes to the
/// card. [`PreparedLoad::credit`] consumes it, so it is credited at most once. Not
/// `Clone`; `Debug` redacts MAC2.
#[derive(Serialize)]
pub struct PreparedLoad {
    #[serde(serialize_with = "ser_id")]
    pub card_id: CardId,
    pub amount: u32,
    pub balance_before: u32,
    /// The card's online counter before this load; the CREDIT that commits it writes a
    /// log record with this counter and moves the card's counter one up.
    pub online_counter: u16,
    #[serde(serialize_with = "ser_tid")]
    pub terminal_id: TerminalId,
    pub date: [u8; 4],
    pub time: [u8; 3],
    #[serde(skip)]
    mac2: [u8; 4],
}

impl std::fmt::Debug for PreparedLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedLoad")
            .field("card_id", &self.card_id.to_hex())
            .field("amount", &self.amount)
            .field("balance_before", &self.balance_before)
            .field("online_counter", &self.online_counter)
            .finish_non_exhaustive()
    }
}

/// INITIALIZE FOR LOAD (§7 step 1) and the card's MAC1 checked by the provider, which
/// computes MAC2. The PIN must have been verified in this selection. Nothing changes
/// on the card until [`PreparedLoad::credit`].
pub fn initialize_load(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
    amount: u32,
    when: NaiveDateTime,
) -> Result<PreparedLoad, AppError> {
    if amount == 0 {
        return Err(AppError::BadInput("amount must be positive".into()));
    }
    if !keys.supports(KeyPurpose::Load) {
        return Err(AppError::KeyUnavailable("LOAD"));
    }
    let tid = keys.terminal_id();
    let mut data = vec![KeyPurpose::Load.id()];
    data.extend_from_slice(&amount.to_be_bytes());
    data.extend_from_slice(&tid.0);
    let r = tx.transmit(&apdu(0x80, 0x50, 0x00, 0x02, &data, 0x10)?)?;
    let d = match r.sw {
        StatusWord::Ok if r.data.len() == 16 => r.data,
        StatusWord::Ok => return Err(AppError::Card(StatusWord::WrongLength)),
        StatusWord::IncorrectData => {
            return Err(AppError::BadInput("balance would pass 2^31 - 1".into()))
        }
        StatusWord::SecurityStatusNotSatisfied => return Err(AppError::SecurityNotSatisfied),
        StatusWord::ConditionsNotSatisfied => return Err(AppError::Blocked),
        sw => return Err(AppError::Card(sw)),
    };
    let (date, time) = bcd_datetime(when);
    let ctx = LoadContext {
        card_id: *card_id,
        amount,
        balance: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        online_counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[8], d[9], d[10], d[11]],
        terminal_id: tid,
        date,
        time,
    };
    let mac2 = keys
        .load_mac2(&ctx, &d[12..16])
        .map_err(AppError::Key)?
        .ok_or(AppError::MacMismatch("card's load MAC1 does not verify"))?;
    Ok(PreparedLoad {
        card_id: *card_id,
        amount,
        balance_before: ctx.balance,
        online_counter: ctx.online_counter,
        terminal_id: tid,
        date,
        time,
        mac2,
    })
}

impl PreparedLoad {
    /// CREDIT FOR LOAD (§7 step 2) with the provider's MAC2; the card answers its TAC.
    /// A transport failure after the command left is [`AppError::Uncertain`]: the card
    /// decides, through its online counter and its log ([`transaction_log`]), once it
    /// is back.
    pub fn credit(self, tx: &mut Transaction<'_>) -> Result<LoadProof, AppError> {
        let mut data = self.date.to_vec();
        data.extend_from_slice(&self.time);
        data.extend_from_slice(&self.mac2);
        let r = match tx.transmit(&apdu(0x80, 0x52, 0x00, 0x00, &data, 0x04)?) {
            Ok(r) => r,
            Err(e) if e.outcome_unknown() => {
                return Err(AppError::Uncertain {
                    step: "CREDIT",
                    source: e,
                })
            }
            Err(e) => return Err(AppError::Transport(e)),
        };
        match r.sw {
            StatusWord::Ok if r.data.len() == 4 => Ok(LoadProof {
                online_counter: self.online_counter,
                amount: self.amount,
                balance_before: self.balance_before,
                balance_after: self.balance_before.saturating_add(self.amount),
                tac: hex::encode_upper(&r.data),
            }),
            StatusWord::Ok => Err(AppError::Card(StatusWord::WrongLength)),
            StatusWord::MacInvalid => Err(AppError::MacMismatch("card refused load MAC2")),
            sw => Err(AppError::Card(sw)),
        }
    }
}

/// Load (credit) `amount` (§7): [`initialize_load`] then [`PreparedLoad::credit`], for
/// a caller with nothing to write between the two. PIN verified first. A transport
/// failure after CREDIT left is [`AppError::Uncertain`].
pub fn load(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
    amount: u32,
    when: NaiveDateTime,
) -> Result<LoadProof, AppError> {
    initialize_load(tx, keys, card_id, amount, when)?.credit(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn bcd_of_a_moment() {
        let t = NaiveDate::from_ymd_opt(2026, 11, 22)
            .unwrap()
            .and_hms_opt(9, 30, 15)
            .unwrap();
        assert_eq!(
            bcd_datetime(t),
            ([0x20, 0x26, 0x11, 0x22], [0x09, 0x30, 0x15])
        );
    }
}
