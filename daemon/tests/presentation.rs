//! The presentation cache (docs/architecture.md), end to end through the in-process
//! daemon's real socket with emulated cards whose commands the test counts: what each
//! call sends to the card, when the cache is believed and when it is dropped, and
//! `CARD_CHANGED` (api.md 1.1) with nothing debited.

mod common;

use common::*;
use serde_json::{json, Value};
use sscard_daemon::readers::sim::SimControl;
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization};
use std::time::Duration;

fn card(serial: &str) -> SharedCard {
    let mut p = Personalization::default_test_card();
    p.chip_serial = serial.into();
    SharedCard::with(&p)
}

fn counts(c: &SharedCard) -> [u32; 256] {
    c.0.lock().unwrap().commands_by_ins()
}

/// The commands sent since `before`, as (INS, how many).
fn sent_since(c: &SharedCard, before: &[u32; 256]) -> Vec<(u8, u32)> {
    let now = counts(c);
    (0..=255u8)
        .map(|i| (i, now[usize::from(i)] - before[usize::from(i)]))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn pay(order: &str, card_id: Option<&Value>) -> Value {
    let mut v = json!({"order_id": order, "amount_fen": 100, "pin": "123456"});
    if let Some(id) = card_id {
        v["card_id"] = id.clone();
    }
    v
}

/// The daemon with one reader holding `c`, once the read at insertion is done.
async fn with_card(c: &SharedCard) -> InProc {
    let sim = SimControl::new();
    sim.add_reader_with_card("r", c.boxed());
    let d = InProc::start_with(sim, |_| {}, None).await;
    // the read at insertion ends with the rest of the records: wait for their commands
    // to stop (EF06 is read only then)
    let mut last = counts(c);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counts(c);
        if now == last && now[0xB2] >= 16 {
            break;
        }
        last = now;
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_is_read_at_insertion_and_a_payment_sends_only_what_money_needs() {
    let c = card("00000000000000A1");
    let d = with_card(&c).await;
    let mut cl = d.login("cashier").await;

    // card.read answers from memory: not one command
    let before = counts(&c);
    let read = cl.call("card.read", json!({})).await.unwrap();
    assert_eq!(read["genuine"], true, "{read}");
    assert_eq!(read["name"], "张三");
    assert_eq!(sent_since(&c, &before), [], "card.read sent commands");

    // the payment: SELECT, INTERNAL AUTHENTICATE, VERIFY, INITIALIZE, DEBIT, once each,
    // and two durable journal commits: the pending row with its terminal sequence, then
    // the outcome with the call's audit entry
    let commits = |h: &Value| h["journal_commits"].as_u64().unwrap();
    let h0 = cl.call("system.health", json!({})).await.unwrap();
    let before = counts(&c);
    let p = cl
        .call("pay.debit", pay("P-1", Some(&read["card_id"])))
        .await
        .unwrap();
    let h1 = cl.call("system.health", json!({})).await.unwrap();
    assert_eq!(commits(&h1) - commits(&h0), 2, "{h0} {h1}");
    let q = cl
        .call("pay.query", json!({"order_id": "P-1"}))
        .await
        .unwrap();
    assert_eq!(q, p, "the journal holds the completed payment");
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(p["card_number"], read["card_number"]);
    assert_eq!(
        sent_since(&c, &before),
        [(0x20, 1), (0x50, 1), (0x54, 1), (0x88, 1), (0xA4, 1)]
    );
    assert_eq!(c.balance(), 100_000 - 100);

    // balance and PIN: SELECT and the command
    let before = counts(&c);
    cl.call("card.balance", json!({})).await.unwrap();
    assert_eq!(sent_since(&c, &before), [(0x5C, 1), (0xA4, 1)]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_card_than_the_pos_showed_is_card_changed_and_nothing_is_debited() {
    let a = card("00000000000000A1");
    let d = with_card(&a).await;
    let mut cl = d.login("cashier").await;
    let shown = card("00000000000000B2")
        .0
        .lock()
        .unwrap()
        .card_id()
        .to_hex();
    let before = counts(&a);
    let e = cl
        .call("pay.debit", pay("P-2", Some(&json!(shown))))
        .await
        .unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(1012), "CARD_CHANGED"),
        "{e}"
    );
    // SELECT at most: no PIN, no purchase
    assert!(
        sent_since(&a, &before).iter().all(|(i, _)| *i == 0xA4),
        "{:02X?}",
        sent_since(&a, &before)
    );
    assert_eq!(a.balance(), 100_000);
    let e = cl.call("pay.query", json!({"order_id": "P-2"})).await;
    assert!(e.is_err(), "no payment was journaled: {e:?}");
    // the cache was dropped: the next call reads the card again, and only what a
    // payment needs (EF05 01, 06, 07 and EF15 22)
    let before = counts(&a);
    let p = cl.call("pay.debit", pay("P-3", None)).await.unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    let sent = sent_since(&a, &before);
    assert!(sent.contains(&(0xB2, 4)), "{sent:02X?}");
    // a malformed card_id is a parameter error
    let e = cl
        .call("pay.debit", pay("P-4", Some(&json!("12"))))
        .await
        .unwrap_err();
    assert_eq!(e["code"].as_i64(), Some(-32602), "{e}");
    assert!(
        e["message"].as_str().unwrap().starts_with("card_id:"),
        "{e}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_the_reader_never_saw_is_caught_by_internal_authenticate() {
    // the card behind the reader changes with no removal the reader could see (same
    // ATR, no event): the presentation is believed until INTERNAL AUTHENTICATE
    let a = card("00000000000000A1");
    let d = with_card(&a).await;
    let mut cl = d.login("cashier").await;
    let read = cl.call("card.read", json!({})).await.unwrap();
    let b = EmulatedCard::new(
        &{
            let mut p = Personalization::default_test_card();
            p.chip_serial = "00000000000000B2".into();
            p
        },
        Knobs::default(),
    )
    .unwrap();
    let b_id = b.card_id().to_hex();
    let old = std::mem::replace(&mut *a.0.lock().unwrap(), b);
    let before = counts(&a);
    let e = cl.call("pay.debit", pay("S-1", None)).await.unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(1012), "CARD_CHANGED"),
        "{e}"
    );
    // SELECT and INTERNAL AUTHENTICATE, then nothing: no PIN try, no purchase
    assert_eq!(sent_since(&a, &before), [(0x88, 1), (0xA4, 1)]);
    assert_eq!(a.balance(), 100_000, "card B untouched");
    assert_eq!(old.image().balance, 100_000, "card A untouched");
    // the next call reads the card that is there
    let now = cl.call("card.read", json!({})).await.unwrap();
    assert_eq!(now["card_id"], b_id.as_str());
    assert_ne!(now["card_id"], read["card_id"]);
    let p = cl
        .call("pay.debit", pay("S-2", Some(&now["card_id"])))
        .await;
    assert_eq!(p.unwrap()["status"], "completed");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_and_a_write_to_the_card_drop_the_cache() {
    let a = card("00000000000000A1");
    let sim = SimControl::new();
    let slot = sim.add_reader_with_card("r", a.boxed());
    let d = InProc::start_with(sim, |_| {}, None).await;
    let mut cl = d.login("cashier").await;
    let first = cl.call("card.read", json!({})).await.unwrap();

    // out and another card in: the next read is of the new card
    slot.remove();
    let b = card("00000000000000B2");
    slot.insert(b.boxed());
    let now = cl.call("card.read", json!({})).await.unwrap();
    assert_ne!(now["card_id"], first["card_id"]);
    assert_eq!(
        now["card_id"],
        b.0.lock().unwrap().card_id().to_hex().as_str()
    );

    // a blacklisted card is blocked on the card (APPLICATION BLOCK): the write drops the
    // cache, and the next read shows the card as it is now
    let mut adm = d.login("admin").await;
    adm.call(
        "blacklist.add",
        json!({"card": now["card_number"], "reason": "lost"}),
    )
    .await
    .unwrap();
    let e = cl.call("pay.debit", pay("L-1", None)).await.unwrap_err();
    assert_eq!(kind(&e), "BLACKLISTED", "{e}");
    let before = counts(&b);
    let after = cl.call("card.read", json!({})).await.unwrap();
    assert_eq!(after["blocked"], true, "{after}");
    assert!(
        sent_since(&b, &before).iter().any(|(i, _)| *i == 0xB2),
        "read again after the write"
    );
    d.stop().await;
}
