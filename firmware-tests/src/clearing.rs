//! What the clearing centre checks of a purchase (card profile §6): its TAC, from the
//! test master keys' Kc[TAC] over the purchase as the terminal records it.

use chrono::NaiveDateTime;
use sscard_driver::app::{bcd_datetime, PurchaseProof};
use sscard_driver::crypto::PurchaseContext;
use sscard_driver::keys::KeyPurpose;
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::{CardId, TerminalId};

/// The TAC (8 hex digits, upper case) the centre expects for `proof`: card `card_id`,
/// terminal `terminal_id`, the date and time `when` sent in DEBIT.
pub fn purchase_tac(
    card_id: CardId,
    terminal_id: TerminalId,
    proof: &PurchaseProof,
    when: NaiveDateTime,
) -> String {
    let (date, time) = bcd_datetime(when);
    let ctx = PurchaseContext {
        card_id,
        amount: proof.amount,
        counter: proof.counter,
        // the TAC does not cover the card's random
        random: [0; 4],
        terminal_id,
        terminal_seq: proof.terminal_seq,
        date,
        time,
    };
    let kc = test_master_keys().card_keys(&card_id);
    hex::encode_upper(ctx.tac(kc.get(KeyPurpose::Tac)))
}
