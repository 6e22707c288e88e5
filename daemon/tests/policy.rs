//! The payment policy of api.md, end to end through the in-process daemon's real socket
//! with emulated cards: a suspended insured person (EF15 tag 22 = `02`, card profile
//! §3) is refused `INSURANCE_SUSPENDED` (api.md 1.1) before any PIN or debit.

mod common;

use common::*;
use serde_json::json;
use sscard_daemon::readers::sim::SimControl;
use sscard_firmware_tests::card::Personalization;
use sscard_firmware_tests::{Reply, VirtualCard};
use std::sync::{Arc, Mutex};

/// A shared card that keeps every command APDU it is sent.
#[derive(Clone)]
struct Watched {
    card: SharedCard,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Watched {
    fn new(card: SharedCard) -> Self {
        Watched {
            card,
            seen: Arc::default(),
        }
    }
    /// The instruction bytes sent since the last call.
    fn take_ins(&self) -> Vec<u8> {
        let mut s = self.seen.lock().unwrap();
        let ins = s.iter().filter_map(|c| c.get(1).copied()).collect();
        s.clear();
        ins
    }
    fn pin_tries(&self) -> u8 {
        self.card.0.lock().unwrap().image().pin_tries
    }
    fn counter(&self) -> u16 {
        self.card.0.lock().unwrap().image().counter
    }
}

impl VirtualCard for Watched {
    fn atr(&self) -> Vec<u8> {
        self.card.atr()
    }
    fn power_on(&mut self) {
        self.card.power_on()
    }
    fn power_off(&mut self) {
        self.card.power_off()
    }
    fn reset(&mut self) {
        self.card.reset()
    }
    fn process(&mut self, command: &[u8]) -> Reply {
        self.seen.lock().unwrap().push(command.to_vec());
        self.card.process(command)
    }
}

fn card(serial: &str, insured_status: &str) -> Watched {
    let mut p = Personalization::default_test_card();
    p.chip_serial = serial.into();
    p.insured_status = insured_status.into();
    Watched::new(SharedCard::with(&p))
}

fn pay(reader: &str, order: &str, pin: &str) -> serde_json::Value {
    json!({"order_id": order, "amount_fen": 500, "pin": pin, "reader": reader})
}

/// SELECT, READ RECORD and GET RESPONSE: reading the records, nothing more.
const READING: [u8; 3] = [0xA4, 0xB2, 0xC0];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspended_insured_person_is_refused_before_any_pin_or_debit() {
    let suspended = card("00000000000000C2", "02");
    let active = card("00000000000000C1", "01");
    let sim = SimControl::new();
    sim.add_reader_with_card("suspended", Box::new(suspended.clone()));
    sim.add_reader_with_card("active", Box::new(active.clone()));
    let d = InProc::start_with(sim, |_| {}, None).await;
    let mut c = d.login("cashier").await;

    let read = c
        .call("card.read", json!({"reader": "suspended"}))
        .await
        .unwrap();
    assert_eq!(read["insured_status"], "02", "{read}");
    let (tries, counter, balance) = (
        suspended.pin_tries(),
        suspended.counter(),
        suspended.card.balance(),
    );
    assert_eq!(tries, 3);
    suspended.take_ins();

    // the right PIN would pay; a wrong one would spend a try if VERIFY were sent
    for (order, pin) in [("S-1", "123456"), ("S-2", "000000")] {
        let e = c
            .call("pay.debit", pay("suspended", order, pin))
            .await
            .unwrap_err();
        assert_eq!(
            (e["code"].as_i64(), kind(&e)),
            (Some(1011), "INSURANCE_SUSPENDED"),
            "{e}"
        );
        let sent = suspended.take_ins();
        assert!(!sent.is_empty(), "the records were read");
        assert!(
            sent.iter().all(|i| READING.contains(i)),
            "only the records were read, then nothing: {sent:02X?}"
        );
        assert_eq!(suspended.pin_tries(), tries, "no PIN try spent");
        assert_eq!(suspended.counter(), counter, "no purchase begun");
        assert_eq!(suspended.card.balance(), balance, "nothing debited");
    }
    let b = c
        .call("card.balance", json!({"reader": "suspended"}))
        .await
        .unwrap();
    assert_eq!(b["balance_fen"], i64::from(balance));

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
    let p = c
        .call("pay.debit", pay("active", "A-1", "123456"))
        .await
        .unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(active.card.balance(), balance - 500);
    assert!(
        active.take_ins().contains(&0x20),
        "the active card got VERIFY"
    );

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
