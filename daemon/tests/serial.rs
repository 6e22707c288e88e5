//! Serial readers in the daemon (`[[serial]]`, api.md 1.1), end to end: the daemon
//! in-process drives an emulated GemCore POS Pro on a real pseudo-terminal through the
//! driver's serial backend (no pcscd): one reader a slot, named `<model> <path> <slot>`,
//! a card read and paid, pulled out and put back (events, a new presentation), and the
//! device unplugged (its readers removed); a PSAM in its SAM slot as the terminal's keys.

mod common;

use common::*;
use serde_json::{json, Value};
use sscard_daemon::config::{Config, KeysConfig, SerialConfig};
use sscard_daemon::keys::KeySource;
use sscard_daemon::readers::serial::{psam_port, reader_name};
use sscard_daemon::readers::sim::SimControl;
use sscard_driver::transport::serial::model::Model;
use sscard_firmware_tests::testbed::SerialVcard;
use std::time::Duration;

async fn list(c: &mut Client) -> Vec<Value> {
    c.call("reader.list", json!({}))
        .await
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Poll `reader.list` until `f` holds (at most 10 s).
async fn until_listed(c: &mut Client, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let l = list(c).await;
        if f(&l) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 10 s: {:?}", list(c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serial_reader_is_one_reader_a_slot_and_pays() {
    let v = SerialVcard::start("GemCorePOSPro", &[]);
    let cfg = SerialConfig::from_arg(&format!("{}:GemCorePOSPro", v.pty.display())).unwrap();
    assert_eq!(cfg.model, Model::GemCorePosPro);
    let card_reader = format!("GemCorePOSPro {} 0", v.pty.display());
    let d = InProc::start_with(SimControl::new(), |c| c.serial = vec![cfg], None).await;
    let mut c = d.login("cashier").await;
    let mut w = d.login("audit").await;
    w.call("events.subscribe", json!({})).await.unwrap();

    let l = until_listed(&mut c, "the card in slot 0", |l| {
        l.iter()
            .any(|r| r["name"] == card_reader.as_str() && r["card_present"] == true)
    })
    .await;
    let serial: Vec<&Value> = l.iter().filter(|r| r["backend"] == "serial").collect();
    assert_eq!(serial.len(), 5, "five slots: {l:?}");
    let slots: Vec<i64> = serial.iter().filter_map(|r| r["slot"].as_i64()).collect();
    assert_eq!(slots, [0, 1, 2, 3, 4], "{l:?}");

    // read and pay on slot 0, naming the reader
    let card = c
        .call("card.read", json!({"reader": card_reader}))
        .await
        .unwrap();
    assert_eq!(card["genuine"], true, "{card}");
    let pay = |order: &str, card_id: &Value| {
        json!({"order_id": order, "amount_fen": 250, "pin": "123456",
               "reader": card_reader, "card_id": card_id})
    };
    let p = c
        .call("pay.debit", pay("SER-1", &card["card_id"]))
        .await
        .unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    assert_eq!(p["tac"].as_str().unwrap().len(), 8);
    let b = c
        .call("card.balance", json!({"reader": card_reader}))
        .await
        .unwrap();
    assert_eq!(b["balance_fen"], p["balance_after_fen"]);

    // the card pulled out and put back: events, and a payment on the new presentation
    v.signal("USR1");
    let n = w.notification("card.removed").await;
    assert_eq!(n["params"]["reader"], card_reader.as_str());
    let e = c
        .call("card.balance", json!({"reader": card_reader}))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "NO_CARD", "{e}");
    v.signal("USR2");
    let n = w.notification("card.inserted").await;
    assert_eq!(n["params"]["reader"], card_reader.as_str());
    let p = c
        .call("pay.debit", pay("SER-2", &card["card_id"]))
        .await
        .unwrap();
    assert_eq!(p["status"], "completed", "{p}");

    // unplugged: every slot's reader goes
    drop(v);
    until_listed(&mut c, "the readers removed", |l| {
        !l.iter().any(|r| r["backend"] == "serial")
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_psam_in_a_sam_slot_is_the_keys_and_not_a_reader() {
    let v = SerialVcard::start("GemCorePOSPro", &["--with-psam"]);
    let cfg = SerialConfig::from_arg(&format!("{}:GemCorePOSPro", v.pty.display())).unwrap();
    let psam = reader_name(&cfg, 1);
    let card_reader = reader_name(&cfg, 0);
    let edit = |c: &mut Config| {
        c.serial = vec![cfg.clone()];
        c.keys = Some(KeysConfig::Psam {
            reader: psam.clone(),
        });
    };
    let mut config = Config::test("650200".parse().unwrap(), "650200000001".parse().unwrap());
    edit(&mut config);
    let (port, slot) = psam_port(&config).unwrap().expect("the PSAM's port");
    assert_eq!(slot, 1);
    let keys = KeySource::psam(Box::new(port.connect(slot).unwrap()), &config).unwrap();
    let d = InProc::start_serial(SimControl::new(), edit, Some(keys), vec![port]).await;
    let mut c = d.login("cashier").await;
    let l = until_listed(&mut c, "the card in slot 0", |l| {
        l.iter()
            .any(|r| r["name"] == card_reader.as_str() && r["card_present"] == true)
    })
    .await;
    let names: Vec<&str> = l.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 4, "the PSAM's slot is not offered: {names:?}");
    assert!(!names.contains(&psam.as_str()));
    let h = c.call("system.health", json!({})).await.unwrap();
    assert_eq!(h["keys"], "psam");
    // MAC1 from the PSAM, MAC2 checked by it, on the same port as the card
    let card = c
        .call("card.read", json!({"reader": card_reader}))
        .await
        .unwrap();
    assert_eq!(card["genuine"], true, "{card}");
    let p = c
        .call(
            "pay.debit",
            json!({"order_id": "PSAM-1", "amount_fen": 300, "pin": "123456",
                   "reader": card_reader, "card_id": card["card_id"]}),
        )
        .await
        .unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    d.stop().await;
}

/// Unplugged mid-command (the emulator's `--unplug-on-xfr`: the first XfrBlock, here
/// the read at insertion, makes the device go away and come back 500 ms later behind
/// the same path): the readers go, come back by themselves, and the card pays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_unplugged_comes_back_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyGEM");
    let link_s = link.to_string_lossy().to_string();
    // the card comes in once the watcher has subscribed: its read unplugs the reader
    let v = SerialVcard::start(
        "GemPCTwin",
        &[
            "--link",
            &link_s,
            "--unplug-on-xfr",
            "1:500",
            "--start-absent",
        ],
    );
    for _ in 0..100 {
        if link.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cfg = SerialConfig::from_arg(&format!("{link_s}:GemPCTwin")).unwrap();
    let card_reader = reader_name(&cfg, 0);
    let d = InProc::start_with(SimControl::new(), |c| c.serial = vec![cfg], None).await;
    let mut w = d.login("audit").await;
    w.call("events.subscribe", json!({})).await.unwrap();
    let mut c = d.login("cashier").await;
    until_listed(&mut c, "the empty reader", |l| {
        l.iter().any(|r| r["name"] == card_reader.as_str())
    })
    .await;
    v.signal("USR2");
    // the read at insertion unplugs it: the reader goes, and comes back
    let gone = w.notification("reader.removed").await;
    assert_eq!(gone["params"]["reader"], card_reader.as_str());
    let back = w.notification("reader.added").await;
    assert_eq!(back["params"]["reader"], card_reader.as_str());
    until_listed(&mut c, "the card back", |l| {
        l.iter()
            .any(|r| r["name"] == card_reader.as_str() && r["card_present"] == true)
    })
    .await;
    let card = c
        .call("card.read", json!({"reader": card_reader}))
        .await
        .unwrap();
    let p = c
        .call(
            "pay.debit",
            json!({"order_id": "BACK-1", "amount_fen": 100, "pin": "123456",
                   "reader": card_reader, "card_id": card["card_id"]}),
        )
        .await
        .unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    d.stop().await;
}

/// What the holder types next on the emulated pad (`--keypad-file`, docs/emulator.md).
fn keypad(path: &std::path::Path, line: &str) {
    std::fs::write(path, format!("{line}\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_typed_on_the_pad_pays_and_the_pads_answers_are_errors_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let pad = dir.path().join("keypad");
    keypad(&pad, "123456");
    let pad_arg = pad.to_string_lossy().to_string();
    let v = SerialVcard::start("GemPCPinPad", &["--keypad-file", &pad_arg]);
    let cfg = SerialConfig::from_arg(&format!("{}:GemPCPinPad", v.pty.display())).unwrap();
    let reader = reader_name(&cfg, 0);
    let d = InProc::start_with(SimControl::new(), |c| c.serial = vec![cfg], None).await;
    let mut c = d.login("cashier").await;
    let mut w = d.login("audit").await;
    w.call("events.subscribe", json!({})).await.unwrap();
    let l = until_listed(&mut c, "the card in the pad reader", |l| {
        l.iter()
            .any(|r| r["name"] == reader.as_str() && r["card_present"] == true)
    })
    .await;
    let me = l.iter().find(|r| r["name"] == reader.as_str()).unwrap();
    assert_eq!(me["pin_pad"], true, "{me}");

    // no pin in the call: the holder types on the pad, the POS is told when
    let card = c.call("card.read", json!({})).await.unwrap();
    let debit =
        |order: &str| json!({"order_id": order, "amount_fen": 300, "card_id": card["card_id"]});
    let p = c.call("pay.debit", debit("PAD-1")).await.unwrap();
    assert_eq!(p["status"], "completed", "{p}");
    let n = w.notification("pin.prompt").await;
    assert_eq!(n["params"], json!({"reader": reader, "purpose": "verify"}));
    let n = w.notification("pin.done").await;
    assert_eq!(n["params"], json!({"reader": reader}));
    let before = c.call("card.balance", json!({})).await.unwrap()["balance_fen"].clone();

    // the pad's own answers: no try used, nothing debited
    for (typed, want) in [
        ("cancel", "PIN_ENTRY_CANCELLED"),
        ("timeout", "PIN_ENTRY_TIMEOUT"),
        ("12", "PIN_ENTRY_LENGTH"),
    ] {
        keypad(&pad, typed);
        let e = c
            .call("pay.debit", debit(&format!("PAD-{typed}")))
            .await
            .unwrap_err();
        assert_eq!(kind(&e), want, "{typed}: {e}");
        let n = w.notification("pin.done").await;
        assert_eq!(n["params"]["reader"], reader.as_str());
    }
    keypad(&pad, "000000");
    let e = c.call("card.verify_pin", json!({})).await.unwrap_err();
    assert_eq!(kind(&e), "PIN_WRONG", "{e}");
    assert_eq!(e["data"]["tries_left"], 2, "a pad answer used no try: {e}");
    let after = c.call("card.balance", json!({})).await.unwrap()["balance_fen"].clone();
    assert_eq!(after, before);

    // a PIN change on the pad: current, new, new again; a confirmation that differs
    keypad(&pad, "123456 2468 2469");
    let e = c.call("card.change_pin", json!({})).await.unwrap_err();
    assert_eq!(kind(&e), "PIN_ENTRY_MISMATCH", "{e}");
    keypad(&pad, "123456 2468 2468");
    let ok = c.call("card.change_pin", json!({})).await.unwrap();
    assert_eq!(ok["changed"], true);
    // one prompt an entry, in order: four verifications, then the two changes
    let mut purposes = Vec::new();
    for _ in 0..6 {
        let n = w.notification("pin.prompt").await;
        purposes.push(n["params"]["purpose"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(
        purposes,
        ["verify", "verify", "verify", "verify", "change", "change"]
    );
    // a PIN sent over the socket still works where require_pin_pad is not set
    let ok = c
        .call("card.verify_pin", json!({"pin": "2468"}))
        .await
        .unwrap();
    assert_eq!(ok["verified"], true);
    let audit = d.audit_log(Some("cashier")).await;
    assert!(
        audit
            .iter()
            .any(|e| e["method"] == "card.change_pin" && e["outcome"] == "ok (PIN pad)"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e["method"] == "card.verify_pin" && e["outcome"] == "ok"),
        "{audit:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn require_pin_pad_refuses_a_pin_sent_for_a_pad_reader() {
    let dir = tempfile::tempdir().unwrap();
    let pad = dir.path().join("keypad");
    keypad(&pad, "123456");
    let pad_arg = pad.to_string_lossy().to_string();
    let v = SerialVcard::start("GemPCPinPad", &["--keypad-file", &pad_arg]);
    let cfg = SerialConfig::from_arg(&format!("{}:GemPCPinPad", v.pty.display())).unwrap();
    let reader = reader_name(&cfg, 0);
    let d = InProc::start_with(
        SimControl::new(),
        |c| {
            c.serial = vec![cfg];
            c.require_pin_pad = true;
        },
        None,
    )
    .await;
    let mut c = d.login("cashier").await;
    until_listed(&mut c, "the card in the pad reader", |l| {
        l.iter()
            .any(|r| r["name"] == reader.as_str() && r["card_present"] == true)
    })
    .await;
    for (method, params) in [
        ("card.verify_pin", json!({"pin": "123456"})),
        (
            "card.change_pin",
            json!({"old_pin": "123456", "new_pin": "1111"}),
        ),
        (
            "pay.debit",
            json!({"order_id": "REQ-1", "amount_fen": 1, "pin": "123456"}),
        ),
    ] {
        let e = c.call(method, params).await.unwrap_err();
        assert_eq!(e["code"], -32602, "{method}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("require_pin_pad"),
            "{e}"
        );
    }
    let ok = c.call("card.verify_pin", json!({})).await.unwrap();
    assert_eq!(ok["verified"], true);
    d.stop().await;
}
