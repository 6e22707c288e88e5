//! The daemon started in-process (library `Daemon`) with simulated readers, driven
//! through its real Unix socket: every error kind simulation can reach, tears and
//! settlement, refunds, events, key sources, reloads, concurrency and shutdown.

mod common;

use chrono::NaiveDate;
use common::*;
use serde_json::json;
use sscard_daemon::config::Config;
use sscard_daemon::journal::{verify_chain, Journal};
use sscard_daemon::keys::KeySource;
use sscard_daemon::readers::sim::SimControl;
use sscard_driver::keys::{CardKeys, Key16, KeyPurpose};
use sscard_driver::testkeys::{test_manufacturer_key, test_master_keys};
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization, Tear};
use sscard_firmware_tests::psam::Psam;
use sscard_firmware_tests::sim::SimReader;
use std::time::Duration;

fn debit(order: &str, amount: u32) -> serde_json::Value {
    json!({"order_id": order, "amount_fen": amount, "pin": "123456"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reader_no_card_and_ambiguous_reader() {
    let sim = SimControl::new();
    let d = InProc::start_with(sim.clone(), |_| {}, None).await;
    let mut c = d.login("cashier").await;
    let e = c.call("card.read", json!({})).await.unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1001), "NO_READER"));
    let a = sim.add_reader("a");
    let b = sim.add_reader("b");
    until(|| d.state.readers.list().len() == 2).await;
    let e = c.call("card.balance", json!({})).await.unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1002), "NO_CARD"));
    let e = c
        .call("card.balance", json!({"reader": "b"}))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "NO_CARD", "a named reader without a card");
    a.insert(Box::new(EmulatedCard::default_test_card()));
    b.insert(Box::new(EmulatedCard::default_test_card()));
    let e = c.call("card.balance", json!({})).await.unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(1005), "AMBIGUOUS_READER")
    );
    let ok = c
        .call("card.balance", json!({"reader": "b"}))
        .await
        .unwrap();
    assert_eq!(ok["balance_fen"], 100000);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blank_foreign_expired_and_fake_cards() {
    let sim = SimControl::new();
    sim.add_reader_with_card(
        "blank",
        Box::new(EmulatedCard::blank(
            [9; 8],
            &test_manufacturer_key(),
            Knobs::default(),
        )),
    );
    let mut expired = Personalization::default_test_card();
    expired.chip_serial = "00000000000000E1".into();
    expired.issue_date = NaiveDate::from_ymd_opt(2010, 1, 1).unwrap();
    expired.expiry_date = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    sim.add_reader_with_card("expired", SharedCard::with(&expired).boxed());
    let mut foreign = Personalization::default_test_card();
    foreign.region = "110100".into();
    foreign.chip_serial = "00000000000000F1".into();
    sim.add_reader_with_card("foreign", SharedCard::with(&foreign).boxed());
    let mut fake = Personalization::default_test_card();
    fake.chip_serial = "00000000000000FA".into();
    let fake_card = EmulatedCard::with_keys(
        &fake,
        &CardKeys::new(|_| Key16::from_bytes([7; 16])),
        Knobs::default(),
    )
    .unwrap();
    sim.add_reader_with_card("fake", Box::new(fake_card));
    let d = InProc::start_with(sim, |_| {}, None).await;
    let mut c = d.login("cashier").await;
    let pay =
        |r: &str, o: &str| json!({"order_id": o, "amount_fen": 100, "pin": "123456", "reader": r});

    let e = c
        .call("card.read", json!({"reader": "blank"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(1006), "CARD_NOT_SUPPORTED")
    );

    let card = c
        .call("card.read", json!({"reader": "expired"}))
        .await
        .unwrap();
    assert_eq!(card["expiry_date"], "2020-01-01");
    let e = c
        .call("pay.debit", pay("expired", "E-1"))
        .await
        .unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1008), "CARD_EXPIRED"));

    let e = c
        .call("pay.debit", pay("foreign", "F-1"))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "CARD_NOT_SUPPORTED", "{e}");

    let card = c
        .call("card.read", json!({"reader": "fake"}))
        .await
        .unwrap();
    assert_eq!(card["genuine"], false);
    let e = c.call("pay.debit", pay("fake", "G-1")).await.unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1009), "NOT_GENUINE"));

    // none of them left a payment behind
    let mut s = d.login("super").await;
    let day = s
        .call("settle.day", json!({"date": today()}))
        .await
        .unwrap();
    assert_eq!(day["transactions"], json!([]));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blacklisted_card_is_refused_and_blocked_on_the_card() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut admin = d.login("admin").await;
    let mut c = d.login("cashier").await;
    let e = c
        .call("blacklist.add", json!({"card": "A65020001", "reason": "x"}))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "FORBIDDEN");
    admin
        .call(
            "blacklist.add",
            json!({"card": "A65020001", "reason": "reported lost"}),
        )
        .await
        .unwrap();
    let list = admin.call("blacklist.list", json!({})).await.unwrap();
    assert_eq!(list[0]["card"], "A65020001");
    let e = c.call("pay.debit", debit("B-1", 100)).await.unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1010), "BLACKLISTED"));
    assert!(e["message"].as_str().unwrap().contains("reported lost"));
    assert!(
        card.0.lock().unwrap().image().blocked,
        "blocked with the MAINT key"
    );
    assert_eq!(
        c.call("card.read", json!({})).await.unwrap()["blocked"],
        true
    );
    admin
        .call("blacklist.remove", json!({"card": "A65020001"}))
        .await
        .unwrap();
    let e = c.call("pay.debit", debit("B-2", 100)).await.unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1007), "CARD_BLOCKED"));
    let e = c.call("card.balance", json!({})).await.unwrap_err();
    assert_eq!(kind(&e), "CARD_BLOCKED");
    assert_eq!(card.balance(), 100000);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blacklist_file_is_imported() {
    let sim = SimControl::new();
    sim.add_reader_with_card("r0", Box::new(EmulatedCard::default_test_card()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bl.csv");
    std::fs::write(
        &file,
        "# card,reason,until\n650200D1560000050011223344556677,stolen,2099-12-31\n",
    )
    .unwrap();
    let f = file.clone();
    let d = InProc::start_with(sim, move |c| c.blacklist_file = Some(f), None).await;
    let mut c = d.login("cashier").await;
    let e = c.call("pay.debit", debit("L-1", 1)).await.unwrap_err();
    assert_eq!(kind(&e), "BLACKLISTED");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pin_blocked_and_insufficient_funds() {
    let mut p = Personalization::default_test_card();
    p.balance = 300;
    let card = SharedCard::with(&p);
    let d = InProc::with_card(&card).await;
    let mut c = d.login("cashier").await;
    let e = c.call("pay.debit", debit("I-1", 301)).await.unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(3001), "INSUFFICIENT_FUNDS")
    );
    let mut tries = Vec::new();
    for _ in 0..3 {
        let e = c
            .call("card.verify_pin", json!({"pin": "000000"}))
            .await
            .unwrap_err();
        tries.push((kind(&e).to_string(), e["data"]["tries_left"].as_i64()));
    }
    assert_eq!(tries[0], ("PIN_WRONG".to_string(), Some(2)));
    assert_eq!(tries[1], ("PIN_WRONG".to_string(), Some(1)));
    let e = c
        .call("card.verify_pin", json!({"pin": "123456"}))
        .await
        .unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(2002), "PIN_BLOCKED"));
    let e = c.call("pay.debit", debit("I-2", 10)).await.unwrap_err();
    assert_eq!(kind(&e), "PIN_BLOCKED");
    assert_eq!(card.balance(), 300);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_reader_answers_reader_busy_after_the_wait_limit() {
    let card = SharedCard::default_card();
    let sim = SimControl::new();
    sim.add_reader_with_card("r0", card.boxed());
    let d = InProc::start_with(sim, |c| c.reader_wait_ms = 200, None).await;
    let mut c = d.login("cashier").await;
    // the reader is idle once the card is read (the read at insertion is done)
    c.call("card.read", json!({})).await.unwrap();
    card.knobs(Knobs {
        delay_ms: 150,
        ..Knobs::default()
    });
    let mut slow = d.login("cashier").await;
    // five commands at 150 ms each (card.read would answer from the presentation cache)
    let first = tokio::spawn(async move {
        slow.call(
            "pay.debit",
            json!({"order_id": "BUSY-1", "amount_fen": 1, "pin": "123456"}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = c.call("card.balance", json!({})).await.unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1004), "READER_BUSY"));
    let p = first.await.unwrap().unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_pulled_mid_command_is_card_removed() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    card.knobs(Knobs {
        tear: Some(Tear {
            ins: 0x20,
            nth: 1,
            commit: false,
        }),
        ..Knobs::default()
    });
    let mut c = d.login("cashier").await;
    let e = c
        .call("card.verify_pin", json!({"pin": "123456"}))
        .await
        .unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(1003), "CARD_REMOVED"));
    d.stop().await;
}

async fn torn_debit(commit: bool) {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut watcher = d.login("audit").await;
    watcher.call("events.subscribe", json!({})).await.unwrap();
    let mut c = d.login("cashier").await;
    card.knobs(Knobs {
        tear: Some(Tear {
            ins: 0x54,
            nth: 1,
            commit,
        }),
        ..Knobs::default()
    });
    let e = c.call("pay.debit", debit("T-1", 1234)).await.unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(3004), "TRANSACTION_UNCERTAIN")
    );
    let pending = &e["data"]["payment"];
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["amount_fen"], 1234);
    // no card: the order stays pending, whoever asks
    let q = c
        .call("pay.query", json!({"order_id": "T-1"}))
        .await
        .unwrap();
    assert_eq!(q["status"], "pending");
    let e = c.call("pay.debit", debit("T-1", 1234)).await.unwrap_err();
    assert_eq!(kind(&e), "TRANSACTION_UNCERTAIN");
    let h = c.call("system.health", json!({})).await.unwrap();
    assert_eq!(h["pending"], 1);
    // the card comes back: the daemon settles the order by itself
    watcher.notification("card.removed").await;
    assert!(d.sim.slot("r0").unwrap().reinsert());
    watcher.notification("card.inserted").await;
    let n = watcher.notification("payment.settled").await;
    let want = if commit { "completed" } else { "failed" };
    assert_eq!(
        n["params"],
        json!({"order_id": "T-1", "kind": "debit", "status": want})
    );
    let q = c
        .call("pay.query", json!({"order_id": "T-1"}))
        .await
        .unwrap();
    assert_eq!(q["status"], want);
    assert_eq!(q["txn_id"], pending["txn_id"]);
    if commit {
        assert_eq!(q["tac"].as_str().unwrap().len(), 8, "the card's TAC");
        assert_eq!(card.balance(), 100000 - 1234);
        // a repeat returns the recorded payment and debits nothing
        let again = c.call("pay.debit", debit("T-1", 1234)).await.unwrap();
        assert_eq!(again, q);
        assert_eq!(card.balance(), 100000 - 1234);
    } else {
        assert_eq!(q["tac"], "");
        assert_eq!(q["balance_after_fen"], q["balance_before_fen"]);
        assert_eq!(card.balance(), 100000);
    }
    let mut a = d.login("audit").await;
    let log = a
        .call("audit.query", json!({"operator": "sscardd"}))
        .await
        .unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["method"] == "settle"),
        "{log}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_debit_torn_after_commit_settles_completed_when_the_card_returns() {
    torn_debit(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_debit_torn_before_commit_settles_failed_when_the_card_returns() {
    torn_debit(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_orders_settle_through_pay_query_on_any_reader() {
    let card = SharedCard::default_card();
    let sim = SimControl::new();
    sim.add_reader_with_card("r0", card.boxed());
    sim.add_reader("r1");
    let d = InProc::start_with(sim, |_| {}, None).await;
    let mut c = d.login("cashier").await;
    card.knobs(Knobs {
        tear: Some(Tear {
            ins: 0x54,
            nth: 1,
            commit: true,
        }),
        ..Knobs::default()
    });
    let e = c.call("pay.debit", debit("Q-1", 500)).await.unwrap_err();
    assert_eq!(kind(&e), "TRANSACTION_UNCERTAIN");
    // the cardholder takes the card to the other reader
    let torn = d.sim.slot("r0").unwrap().take_torn().unwrap();
    d.sim.slot("r1").unwrap().insert(torn);
    let q = c
        .call("pay.query", json!({"order_id": "Q-1"}))
        .await
        .unwrap();
    assert_eq!(q["status"], "completed");
    assert_eq!(card.balance(), 99500);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_put_money_back_once() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut s = d.login("super").await;
    let p = s.call("pay.debit", debit("R-1", 1000)).await.unwrap();
    assert_eq!(p["status"], "completed");
    let mut c = d.login("cashier").await;
    let e = c
        .call("pay.refund", json!({"order_id": "R-1", "pin": "123456"}))
        .await
        .unwrap_err();
    assert_eq!((e["code"].as_i64(), kind(&e)), (Some(4002), "FORBIDDEN"));
    let e = s
        .call(
            "pay.refund",
            json!({"order_id": "R-1", "amount_fen": 1001, "pin": "123456"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e["code"], -32602);
    assert!(e["message"].as_str().unwrap().starts_with("amount_fen"));
    let e = s
        .call("pay.refund", json!({"order_id": "nope", "pin": "123456"}))
        .await
        .unwrap_err();
    assert!(e["message"].as_str().unwrap().starts_with("order_id"));
    let r = s
        .call(
            "pay.refund",
            json!({"order_id": "R-1", "amount_fen": 400, "pin": "123456"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r["kind"].as_str(),
            r["status"].as_str(),
            r["amount_fen"].as_i64()
        ),
        (Some("refund"), Some("completed"), Some(400))
    );
    assert_eq!(
        (
            r["balance_before_fen"].as_i64(),
            r["balance_after_fen"].as_i64()
        ),
        (Some(99000), Some(99400))
    );
    assert_eq!(r["tac"].as_str().unwrap().len(), 8);
    assert_eq!(card.balance(), 99400);
    let again = s
        .call(
            "pay.refund",
            json!({"order_id": "R-1", "amount_fen": 400, "pin": "123456"}),
        )
        .await
        .unwrap();
    assert_eq!(again, r);
    let e = s
        .call(
            "pay.refund",
            json!({"order_id": "R-1", "amount_fen": 300, "pin": "123456"}),
        )
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "DUPLICATE_ORDER");
    assert_eq!(card.balance(), 99400);
    let q = s
        .call("pay.query", json!({"order_id": "R-1", "kind": "refund"}))
        .await
        .unwrap();
    assert_eq!(q, r);
    let day = s
        .call("settle.day", json!({"date": today()}))
        .await
        .unwrap();
    assert_eq!(
        (
            day["count"].as_i64(),
            day["total_fen"].as_i64(),
            day["refund_count"].as_i64(),
            day["refund_total_fen"].as_i64()
        ),
        (Some(1), Some(1000), Some(1), Some(400))
    );
    d.stop().await;
}

fn keys_without(missing: KeyPurpose) -> KeySource {
    let m = test_master_keys();
    let region = "650200".parse().unwrap();
    KeySource::Software {
        region,
        terminal_id: "650200000001".parse().unwrap(),
        k3: [
            KeyPurpose::Ext,
            KeyPurpose::Int,
            KeyPurpose::Purchase,
            KeyPurpose::Maint,
        ]
        .into_iter()
        .filter(|p| *p != missing)
        .map(|p| (p, m.k3(p, region)))
        .collect(),
        origin: "keystore",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_keys_are_not_supported_or_unavailable() {
    let sim = SimControl::new();
    sim.add_reader_with_card("r0", Box::new(EmulatedCard::default_test_card()));
    let d = InProc::start_with(sim, |_| {}, Some(keys_without(KeyPurpose::Purchase))).await;
    let mut s = d.login("super").await;
    let e = s.call("pay.debit", debit("K-1", 100)).await.unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(5002), "KEY_UNAVAILABLE")
    );
    let e = s
        .call("pay.refund", json!({"order_id": "K-1", "pin": "123456"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(5001), "NOT_SUPPORTED")
    );
    assert_eq!(
        s.call("system.health", json!({})).await.unwrap()["keys"],
        "keystore"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_journal_is_journal_unavailable_and_nothing_is_debited() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut c = d.login("cashier").await;
    d.state.journal.close().await;
    let e = c.call("pay.debit", debit("J-1", 100)).await.unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(5003), "JOURNAL_UNAVAILABLE")
    );
    assert_eq!(card.balance(), 100000);
    let h = c.call("system.health", json!({})).await.unwrap();
    assert_eq!(h["journal"], "unavailable");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_follow_readers_and_cards() {
    let sim = SimControl::new();
    let d = InProc::start_with(sim.clone(), |_| {}, None).await;
    let mut c = d.login("cashier").await;
    let r = c.call("events.subscribe", json!({})).await.unwrap();
    assert_eq!(r["subscribed"], true);
    let slot = sim.add_reader("r9");
    let n = c.notification("reader.added").await;
    assert_eq!(n["params"], json!({"reader": "r9", "backend": "sim"}));
    assert!(n.get("id").is_none());
    slot.insert(Box::new(EmulatedCard::default_test_card()));
    let n = c.notification("card.inserted").await;
    assert_eq!(n["params"]["reader"], "r9");
    assert!(n["params"]["atr"].as_str().unwrap().starts_with("3B"));
    // calls still work between notifications
    assert_eq!(
        c.call("card.balance", json!({})).await.unwrap()["balance_fen"],
        100000
    );
    slot.remove();
    c.notification("card.removed").await;
    sim.remove_reader("r9");
    assert_eq!(
        c.notification("reader.removed").await["params"],
        json!({"reader": "r9"})
    );
    let mut other = d.login("cashier").await;
    assert_eq!(
        kind(&other.call("card.read", json!({})).await.unwrap_err()),
        "NO_READER"
    );
    assert!(
        other.notifications.is_empty(),
        "only subscribers get events"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_operator_is_stopped_at_once() {
    let d = InProc::with_card(&SharedCard::default_card()).await;
    let mut c = d.login("cashier").await;
    assert!(c.call("card.balance", json!({})).await.is_ok());
    // a subscriber of the same operator, and another operator who keeps paying
    let mut sub = d.login("cashier").await;
    sub.call("events.subscribe", json!({})).await.unwrap();
    let mut boss = d.login("super").await;
    let mut cfg: Config = (*d.state.config()).clone();
    cfg.operators
        .iter_mut()
        .find(|o| o.name == "cashier")
        .unwrap()
        .enabled = false;
    d.state.reload(cfg.clone()).await.unwrap();
    // both of the cashier's connections end with the reload, without a call
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert!(sub.closed_within(Duration::from_secs(5)).await);
    boss.call(
        "pay.debit",
        json!({"order_id": "AFTER-1", "amount_fen": 10, "pin": "123456"}),
    )
    .await
    .unwrap();
    assert!(
        !sub.notifications
            .iter()
            .any(|n| n["method"] == "payment.settled"),
        "no event reached the disabled operator: {:?}",
        sub.notifications
    );
    let mut again = d.client().await;
    let e = again
        .call("session.login", json!({"token": "tok-cashier"}))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "OPERATOR_DISABLED");
    // the disabled operator's refused calls are audited under their name
    let entries = d.audit_log(Some("cashier")).await;
    assert!(entries.iter().any(|e| e["method"] == "card.balance"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_through_a_psam() {
    let sim = SimControl::new();
    let card = SharedCard::default_card();
    sim.add_reader_with_card("r0", card.boxed());
    let region = "650200".parse().unwrap();
    let tid = "650200000001".parse().unwrap();
    let psam = Psam::test_psam(region, tid);
    let reader = SimReader::with_card(
        "sam",
        Box::new(psam) as Box<dyn sscard_firmware_tests::VirtualCard>,
    );
    let keys = KeySource::psam(Box::new(reader), &Config::test(region, tid)).unwrap();
    let d = InProc::start_with(sim, |_| {}, Some(keys)).await;
    let mut c = d.login("super").await;
    assert_eq!(
        c.call("card.read", json!({})).await.unwrap()["genuine"],
        true
    );
    let p1 = c.call("pay.debit", debit("P-1", 100)).await.unwrap();
    let p2 = c.call("pay.debit", debit("P-2", 100)).await.unwrap();
    assert_eq!(p1["status"], "completed");
    assert_eq!(
        p2["terminal_seq"].as_i64().unwrap(),
        p1["terminal_seq"].as_i64().unwrap() + 1,
        "the PSAM's sequence"
    );
    assert_eq!(card.balance(), 99800);
    let e = c
        .call("pay.refund", json!({"order_id": "P-1", "pin": "123456"}))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "NOT_SUPPORTED", "a PSAM holds no LOAD key");
    assert_eq!(
        c.call("system.health", json!({})).await.unwrap()["keys"],
        "psam"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_on_one_reader_are_serialized() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut c = d.login("cashier").await;
        tasks.push(tokio::spawn(async move {
            c.call("pay.debit", debit(&format!("C-{i}"), 100 + i)).await
        }));
    }
    let mut seqs = Vec::new();
    let mut counters = Vec::new();
    for t in tasks {
        let p = t.await.unwrap().unwrap();
        assert_eq!(p["status"], "completed");
        seqs.push(p["terminal_seq"].as_i64().unwrap());
        counters.push(p["counter"].as_i64().unwrap());
    }
    seqs.sort();
    counters.sort();
    seqs.dedup();
    counters.dedup();
    assert_eq!((seqs.len(), counters.len()), (12, 12), "no interleaving");
    let spent: u32 = (0..12).map(|i| 100 + i).sum();
    assert_eq!(card.balance(), 100000 - spent);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_order_sent_twice_at_once_is_paid_once() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let (mut a, mut b) = (d.login("cashier").await, d.login("cashier").await);
    let (ra, rb) = tokio::join!(
        a.call("pay.debit", debit("O-1", 700)),
        b.call("pay.debit", debit("O-1", 700))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra, rb);
    assert_eq!(ra["status"], "completed");
    assert_eq!(card.balance(), 100000 - 700);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loopback_tcp_speaks_the_same_protocol() {
    let sim = SimControl::new();
    let d = InProc::start_with(sim, |c| c.tcp = Some("127.0.0.1:0".parse().unwrap()), None).await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let s = tokio::net::TcpStream::connect(d.tcp.unwrap())
        .await
        .unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"session.login\",\"params\":{\"token\":\"tok-audit\"}}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"reader.list\"}\n")
        .await
        .unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"]["role"], "auditor");
    line.clear();
    rd.read_line(&mut line).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["id"].as_i64(), v["result"].clone()),
        (Some(2), json!([]))
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_the_debit_in_flight_finish_and_closes_the_journal() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut c = d.login("cashier").await;
    card.knobs(Knobs {
        delay_ms: 20,
        ..Knobs::default()
    });
    let journal = d.journal.clone();
    let call = tokio::spawn(async move { c.call("pay.debit", debit("S-1", 250)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _dir = d.stop().await;
    let p = call.await.unwrap().unwrap();
    assert_eq!(p["status"], "completed");
    assert_eq!(card.balance(), 100000 - 250);
    // closed cleanly: the WAL was checkpointed, the payment and the audit chain are there
    assert!(std::fs::metadata(journal.with_extension("db-wal")).map_or(true, |m| m.len() == 0));
    let j = Journal::open(&journal).unwrap();
    assert_eq!(
        j.payment("S-1", sscard_daemon::journal::PaymentKind::Debit)
            .unwrap()
            .unwrap()
            .status,
        sscard_daemon::journal::PaymentStatus::Completed
    );
    assert!(verify_chain(&journal).unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_pin_pad_the_pin_is_required_and_nothing_is_asked_of_the_card() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut c = d.login("cashier").await;
    let l = c.call("reader.list", json!({})).await.unwrap();
    assert_eq!(l[0]["pin_pad"], false, "{l}");
    let before = card.balance();
    for (method, params) in [
        ("card.verify_pin", json!({})),
        ("card.change_pin", json!({})),
        (
            "pay.debit",
            json!({"order_id": "NOPIN-1", "amount_fen": 100}),
        ),
    ] {
        let e = c.call(method, params).await.unwrap_err();
        assert_eq!(e["code"], -32602, "{method}: {e}");
        let m = e["message"].as_str().unwrap_or("");
        assert!(
            m.contains("required") && m.contains("no PIN pad"),
            "{method}: {m}"
        );
    }
    for half in [json!({"old_pin": "123456"}), json!({"new_pin": "654321"})] {
        let e = c.call("card.change_pin", half).await.unwrap_err();
        assert_eq!(e["code"], -32602, "{e}");
    }
    assert_eq!(card.balance(), before);
    let e = c
        .call("pay.query", json!({"order_id": "NOPIN-1"}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], -32602, "no payment row: {e}");
    // the PIN still works as before, and a try was never used by the refusals
    let ok = c
        .call("card.verify_pin", json!({"pin": "123456"}))
        .await
        .unwrap();
    assert_eq!(ok["verified"], true);
    d.stop().await;
}
