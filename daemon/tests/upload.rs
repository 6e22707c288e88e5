//! Upload to the settlement centre, against a small local HTTP centre: batches,
//! failures retried with backoff, partial acknowledgements, nothing marked before it is
//! acknowledged nor sent again after, nothing lost across a restart, `settle.day`
//! waking the uploader, the bearer token.

mod common;

use common::centre::{Answer, Centre};
use common::*;
use serde_json::{json, Value};
use sscard_daemon::config::UploadConfig;
use sscard_daemon::readers::sim::SimControl;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn upload(url: &str, every_s: Option<u64>) -> UploadConfig {
    UploadConfig {
        endpoint: url.into(),
        interval_minutes: 20,
        interval_seconds: every_s,
        batch_size: 2,
        retry_min_seconds: 1,
        timeout_seconds: 5,
        token_file: None,
    }
}

async fn start(card: &SharedCard, cfg: UploadConfig, journal: Option<&Path>) -> InProc {
    let sim = SimControl::new();
    sim.add_reader_with_card("r0", card.boxed());
    let j = journal.map(Path::to_path_buf);
    InProc::start_with(
        sim,
        move |c| {
            c.upload = Some(cfg);
            if let Some(j) = j {
                c.journal = j;
            }
        },
        None,
    )
    .await
}

/// `txn_id` → `uploaded` of every payment, read from the journal file.
fn uploaded(journal: &Path) -> HashMap<String, Option<String>> {
    let db = rusqlite::Connection::open(journal).unwrap();
    let mut st = db.prepare("SELECT txn_id, uploaded FROM payments").unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

async fn pay(c: &mut Client, order: &str, fen: u32) -> Value {
    c.call(
        "pay.debit",
        json!({"order_id": order, "amount_fen": fen, "pin": "123456"}),
    )
    .await
    .unwrap()
}

/// Poll `system.health` until the upload backlog is empty (30 s at most).
async fn drained(c: &mut Client) -> Value {
    for _ in 0..300 {
        let h = c.call("system.health", json!({})).await.unwrap();
        if h["upload"]["backlog"] == 0 {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the upload backlog did not drain in 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_are_sent_until_acknowledged_and_never_after() {
    let centre = Centre::start(vec![
        Answer::Status(503),
        Answer::Garbage,
        Answer::AckFirst(1),
    ]);
    let card = SharedCard::default_card();
    let d = start(&card, upload(&centre.url, Some(1)), None).await;
    let mut c = d.login("cashier").await;
    let mut txns = Vec::new();
    for i in 0..3 {
        txns.push(pay(&mut c, &format!("U-{i}"), 100 + i).await["txn_id"].clone());
    }
    let h = drained(&mut c).await;
    assert_eq!(h["upload"]["failures"], 0, "{h}");
    assert_eq!(h["upload"]["last_error"], Value::Null);
    assert_eq!(h["upload"]["acknowledged"], 3);
    let marks = uploaded(&d.journal);
    assert_eq!(marks.len(), 3);
    assert!(marks.values().all(Option::is_some), "{marks:?}");

    // no acknowledged payment is sent again: let a few more rounds pass
    let before = centre.received().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = centre.received();
    assert_eq!(
        got.len(),
        before,
        "rounds with nothing to send send nothing"
    );

    // every payment was sent until a request acknowledged it, and not after
    for t in &txns {
        let t = t.as_str().unwrap();
        let carrying: Vec<_> = got
            .iter()
            .filter(|r| r.txn_ids().iter().any(|x| x == t))
            .collect();
        let (last, earlier) = carrying.split_last().expect("sent at least once");
        let acked = |r: &common::centre::Received| match r.answer {
            Answer::AckAll => true,
            Answer::AckFirst(n) => r.txn_ids().iter().take(n).any(|x| x == t),
            _ => false,
        };
        assert!(
            acked(last),
            "{t}: the last request carrying it acknowledged it"
        );
        assert!(
            earlier.iter().all(|r| !acked(r)),
            "{t}: sent again after its ack"
        );
    }
    // the failures were retried with the same payments
    assert!(matches!(got[0].answer, Answer::Status(503)));
    assert!(matches!(got[1].answer, Answer::Garbage));
    assert_eq!(got[1].txn_ids()[0], got[0].txn_ids()[0]);
    assert!(got.iter().all(|r| r.txn_ids().len() <= 2), "batch_size 2");

    let mut a = d.login("audit").await;
    let log = a
        .call("audit.query", json!({"operator": "sscardd"}))
        .await
        .unwrap();
    let n = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["method"] == "upload")
        .count();
    assert!(n >= 2, "acknowledged batches are in the audit log: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_while_the_centre_is_down_across_a_restart() {
    // a port nothing listens on
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/settle", l.local_addr().unwrap())
    };
    let card = SharedCard::default_card();
    let d = start(&card, upload(&dead, Some(1)), None).await;
    let mut c = d.login("cashier").await;
    let p = pay(&mut c, "DOWN-1", 250).await;
    let mut h = Value::Null;
    for _ in 0..100 {
        h = c.call("system.health", json!({})).await.unwrap();
        if h["upload"]["failures"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h["upload"]["failures"].as_u64().unwrap() >= 2, "{h}");
    assert!(
        h["upload"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{h}"
    );
    assert_eq!(h["upload"]["backlog"], 1);
    drop(c);
    let journal = d.journal.clone();
    let dir = d.stop().await;
    assert_eq!(uploaded(&journal)[p["txn_id"].as_str().unwrap()], None);

    let centre = Centre::start(vec![]);
    let d = start(&card, upload(&centre.url, Some(1)), Some(&journal)).await;
    let mut c = d.login("cashier").await;
    drained(&mut c).await;
    let got = centre.received();
    assert_eq!(got.len(), 1, "one batch after the restart");
    assert_eq!(got[0].txn_ids(), [p["txn_id"].as_str().unwrap()]);
    assert!(uploaded(&journal)[p["txn_id"].as_str().unwrap()].is_some());
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settling_the_day_uploads_now_with_the_terminal_token() {
    let centre = Centre::start(vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("centre.token");
    std::fs::write(&token, "s3cret-terminal-token\n").unwrap();
    let mut cfg = upload(&centre.url, None); // every 20 minutes
    cfg.token_file = Some(token);
    let card = SharedCard::default_card();
    let d = start(&card, cfg, None).await;
    let mut c = d.login("cashier").await;
    let p = pay(&mut c, "DAY-1", 1234).await;
    // the round at start found nothing; the next scheduled one is 20 minutes away
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(centre.received().is_empty());
    let mut s = d.login("super").await;
    s.call("settle.day", json!({"date": today()}))
        .await
        .unwrap();
    drained(&mut c).await;
    let got = centre.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(
        r.header("authorization"),
        Some("Bearer s3cret-terminal-token")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body["terminal_id"], "650200000001");
    assert_eq!(r.body["payments"], json!([p]), "the API's payment object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_batch_carries_the_audit_chain_head() {
    let centre = Centre::start(vec![Answer::AckFirst(1)]);
    let card = SharedCard::default_card();
    let d = start(&card, upload(&centre.url, Some(1)), None).await;
    let mut c = d.login("cashier").await;
    for i in 0..3 {
        pay(&mut c, &format!("H-{i}"), 10 + i).await;
    }
    drained(&mut c).await;
    let got = centre.received();
    assert!(got.len() >= 2, "{} batches", got.len());
    let db = rusqlite::Connection::open(&d.journal).unwrap();
    let mut last = 0;
    for r in &got {
        let head = &r.body["audit_head"];
        let seq = head["seq"].as_i64().unwrap_or_else(|| panic!("{head}"));
        // the centre's copy names an entry of the journal's chain, with its hash
        let hash: String = db
            .query_row("SELECT hash FROM audit WHERE seq=?1", [seq], |r| r.get(0))
            .unwrap();
        assert_eq!(head["hash"], hash);
        assert_eq!(hash.len(), 64);
        assert!(
            seq > last,
            "the chain grew between batches: {seq} after {last}"
        );
        last = seq;
    }
    // the chain and the payments' anchors hold after the uploads marked the rows
    let v = sscard_daemon::journal::verify(&d.journal).unwrap();
    assert_eq!(v.findings, []);
    assert!(v.payments >= 3);
}
