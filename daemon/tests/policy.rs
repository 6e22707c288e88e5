//! The payment policy of api.md, end to end through the in-process daemon's real socket
//! with emulated cards: a suspended insured person (EF15 tag 22 = `02`, card profile
//! §3) is refused `INSURANCE_SUSPENDED` (api.md 1.1) before any PIN or debit.

mod common;

use common::*;
use serde_json::json;
use sscard_daemon::readers::sim::SimControl;
use sscard_firmware_tests::card::Personalization;

/// A test card with its insured status, kept by the test while a reader holds it.
fn card(serial: &str, insured_status: &str) -> SharedCard {
    let mut p = Personalization::default_test_card();
    p.chip_serial = serial.into();
    p.insured_status = insured_status.into();
    SharedCard::with(&p)
}

/// What a terminal could change on the card: PIN tries, purse counter, balance.
fn state(c: &SharedCard) -> (u8, u16, u32) {
    let g = c.0.lock().unwrap();
    let i = g.image();
    (i.pin_tries, i.counter, i.balance)
}

fn counts(c: &SharedCard) -> [u32; 256] {
    c.0.lock().unwrap().commands_by_ins()
}

/// The instructions the card was sent since `before` (a [`counts`] snapshot).
fn sent_since(c: &SharedCard, before: &[u32; 256]) -> Vec<u8> {
    let now = counts(c);
    (0..=255u8)
        .filter(|&i| now[usize::from(i)] > before[usize::from(i)])
        .collect()
}

fn pay(reader: &str, order: &str, pin: &str) -> serde_json::Value {
    json!({"order_id": order, "amount_fen": 500, "pin": pin, "reader": reader})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspended_insured_person_is_refused_before_any_pin_or_debit() {
    let suspended = card("00000000000000C2", "02");
    let active = card("00000000000000C1", "01");
    let sim = SimControl::new();
    sim.add_reader_with_card("suspended", suspended.boxed());
    sim.add_reader_with_card("active", active.boxed());
    let d = InProc::start_with(sim, |_| {}, None).await;
    let mut c = d.login("cashier").await;

    let read = c
        .call("card.read", json!({"reader": "suspended"}))
        .await
        .unwrap();
    assert_eq!(read["insured_status"], "02", "{read}");
    let before = state(&suspended);
    assert_eq!(before.0, 3, "three PIN tries");

    // the right PIN would pay; a wrong one would spend a try if VERIFY were sent
    for (order, pin) in [("S-1", "123456"), ("S-2", "000000")] {
        let seen = counts(&suspended);
        let e = c
            .call("pay.debit", pay("suspended", order, pin))
            .await
            .unwrap_err();
        assert_eq!(
            (e["code"].as_i64(), kind(&e)),
            (Some(1011), "INSURANCE_SUSPENDED"),
            "{e}"
        );
        let sent = sent_since(&suspended, &seen);
        // the records were read by card.read (the presentation cache): SELECT, then
        // nothing
        assert_eq!(sent, [0xA4], "only SELECT: {sent:02X?}");
        assert_eq!(state(&suspended), before, "no PIN try, purchase or debit");
    }
    let b = c
        .call("card.balance", json!({"reader": "suspended"}))
        .await
        .unwrap();
    assert_eq!(b["balance_fen"], i64::from(before.2));

    // no payment exists for those orders
    for order in ["S-1", "S-2"] {
        let e = c
            .call("pay.query", json!({"order_id": order}))
            .await
            .unwrap_err();
        assert_eq!(e["code"].as_i64(), Some(-32602), "{e}");
    }
    let mut s = d.login("super").await;
    let day = s
        .call("settle.day", json!({"date": today()}))
        .await
        .unwrap();
    assert_eq!(day["count"], 0, "{day}");

    // an active card is paid as before: the refusal is the status, not the terminal
    let seen = counts(&active);
    let p = c
        .call("pay.debit", pay("active", "A-1", "123456"))
        .await
        .unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(active.balance(), before.2 - 500);
    let sent = sent_since(&active, &seen);
    assert!(sent.contains(&0x20) && sent.contains(&0x54), "{sent:02X?}");

    // each refusal is audited with the card and its kind
    let mut a = d.login("audit").await;
    let log = a
        .call("audit.query", json!({"operator": "cashier"}))
        .await
        .unwrap();
    let refused = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["method"] == "pay.debit"
                && e["card_number"] == "A65020001"
                && e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.contains("INSURANCE_SUSPENDED"))
        })
        .count();
    assert_eq!(refused, 2, "{log}");
    d.stop().await;
}
