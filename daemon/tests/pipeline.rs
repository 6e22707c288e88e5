//! The typed pipeline through the real Unix socket: the method table walked to prove
//! one audit entry per call on success and on every error path, notifications
//! refused, exact ids, strict params, the throttle, connection slots and timeouts,
//! and a journal on a full disk refusing calls before they touch a card.

mod common;

use common::*;
use serde_json::{json, Value};
use sscard_daemon::error::ErrorKind;
use sscard_daemon::journal::PaymentKind;
use sscard_daemon::methods::{Access, Method, TABLE};
use sscard_daemon::session::Role;
use sscard_firmware_tests::card::{Knobs, Tear};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

async fn entries(d: &InProc) -> Vec<Value> {
    d.audit_log(None).await
}

/// The operator of `OPERATORS` whose role `m` allows (`allowed`) or refuses.
fn who(m: Method, allowed: bool) -> Option<&'static str> {
    OPERATORS
        .iter()
        .find(|(_, r)| m.allows(*r) == allowed)
        .map(|(n, _)| *n)
}

/// Params that succeed for `m` (in the table's order: the debit comes before the
/// query and the refund of its order).
fn example(m: Method) -> Value {
    match m {
        Method::CardVerifyPin => json!({"pin": "123456"}),
        Method::CardChangePin => json!({"old_pin": "123456", "new_pin": "123456"}),
        Method::PayDebit => json!({"order_id": "W-1", "amount_fen": 100, "pin": "123456"}),
        Method::PayQuery => json!({"order_id": "W-1"}),
        Method::PayRefund => json!({"order_id": "W-1", "amount_fen": 10, "pin": "123456"}),
        Method::SettleDay => json!({"date": today()}),
        Method::AuditQuery => json!({"limit": 5}),
        Method::BlacklistAdd => json!({"card": "X123", "reason": "lost, reported"}),
        Method::BlacklistRemove => json!({"card": "X123"}),
        Method::SessionLogin => json!({"token": "tok-cashier"}),
        _ => json!({}),
    }
}

/// Call and return the audit entries the call added.
async fn call_counted(
    d: &InProc,
    c: &mut Client,
    m: &str,
    p: Value,
) -> (Result<Value, Value>, Vec<Value>) {
    let before = entries(d).await.len();
    let r = c.call(m, p).await;
    let after = entries(d).await;
    (r, after[before..].to_vec())
}

fn one_entry(added: &[Value], method: &str, operator: &str, what: &str) {
    assert_eq!(added.len(), 1, "{method} {what}: {added:?}");
    assert_eq!(added[0]["method"], method, "{what}");
    assert_eq!(added[0]["operator"], operator, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_audited_call_leaves_exactly_one_entry() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    for row in TABLE
        .iter()
        .filter(|r| r.audited && r.method != Method::SessionLogin)
    {
        let m = row.method;
        let name = row.name;
        let ok_who = who(m, true).unwrap();
        let mut c = d.login(ok_who).await;
        // success
        let (r, added) = call_counted(&d, &mut c, name, example(m)).await;
        assert!(r.is_ok(), "{name}: {r:?}");
        one_entry(&added, name, ok_who, "success");
        let out = added[0]["outcome"].as_str().unwrap();
        assert!(
            !out.starts_with('-') && !ErrorKind::ALL.iter().any(|k| out.starts_with(k.name())),
            "{name}: a success recorded as {out}"
        );
        // a misspelt parameter
        let mut bad = example(m);
        bad["bogus"] = json!(1);
        let (r, added) = call_counted(&d, &mut c, name, bad).await;
        assert_eq!(r.unwrap_err()["code"], -32602, "{name}");
        one_entry(&added, name, ok_who, "bad params");
        // a role the table refuses
        if let Some(no) = who(m, false) {
            let mut f = d.login(no).await;
            let (r, added) = call_counted(&d, &mut f, name, example(m)).await;
            assert_eq!(kind(&r.unwrap_err()), "FORBIDDEN", "{name} by {no}");
            one_entry(&added, name, no, "forbidden");
            assert!(added[0]["outcome"]
                .as_str()
                .unwrap()
                .starts_with("FORBIDDEN"));
        }
        // no card in the reader (methods that need one)
        if matches!(
            m,
            Method::CardRead | Method::CardVerifyPin | Method::CardChangePin | Method::CardBalance
        ) {
            let slot = d.sim.slot("r0").unwrap();
            let held = slot.remove().unwrap();
            until(|| !d.state.readers.list()[0].presence().0).await;
            let (r, added) = call_counted(&d, &mut c, name, example(m)).await;
            assert_eq!(kind(&r.unwrap_err()), "NO_CARD", "{name}");
            one_entry(&added, name, ok_who, "no card");
            slot.insert(held);
            until(|| d.state.readers.list()[0].presence().0).await;
        }
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_from_the_journal_are_audited_too() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut c = d.login("cashier").await;
    let mut s = d.login("super").await;
    let done = json!({"order_id": "J-1", "amount_fen": 50, "pin": "123456"});
    c.call("pay.debit", done.clone()).await.unwrap();
    // a torn debit leaves order J-2 pending
    card.knobs(Knobs {
        tear: Some(Tear {
            ins: 0x54,
            nth: 1,
            commit: true,
        }),
        ..Knobs::default()
    });
    let torn = json!({"order_id": "J-2", "amount_fen": 70, "pin": "123456"});
    let e = c.call("pay.debit", torn.clone()).await.unwrap_err();
    assert_eq!(kind(&e), "TRANSACTION_UNCERTAIN");
    until(|| !d.state.readers.list()[0].presence().0).await;
    // no card anywhere: the repeat of a completed order answers from the journal
    let (r, added) = call_counted(&d, &mut c, "pay.debit", done.clone()).await;
    assert_eq!(r.unwrap()["status"], "completed");
    one_entry(&added, "pay.debit", "cashier", "repeat with no card");
    let (r, added) = call_counted(&d, &mut c, "pay.debit", torn).await;
    assert_eq!(kind(&r.unwrap_err()), "TRANSACTION_UNCERTAIN");
    one_entry(&added, "pay.debit", "cashier", "repeat of a pending order");
    // a refund of the pending order is refused from the journal, audited
    let refund = json!({"order_id": "J-2", "pin": "123456"});
    let (r, added) = call_counted(&d, &mut s, "pay.refund", refund).await;
    assert_eq!(kind(&r.unwrap_err()), "TRANSACTION_UNCERTAIN");
    one_entry(&added, "pay.refund", "super", "refund of a pending order");
    // another amount for a recorded order
    let (r, added) = call_counted(
        &d,
        &mut c,
        "pay.debit",
        json!({"order_id": "J-1", "amount_fen": 51, "pin": "123456"}),
    )
    .await;
    assert_eq!(kind(&r.unwrap_err()), "DUPLICATE_ORDER");
    one_entry(&added, "pay.debit", "cashier", "duplicate order");
    // the card comes back: a query settles the pending order, adding its own entry
    assert!(d.sim.slot("r0").unwrap().reinsert());
    let mut q = None;
    for _ in 0..100 {
        let (r, added) = call_counted(&d, &mut c, "pay.query", json!({"order_id": "J-2"})).await;
        let r = r.unwrap();
        if r["status"] == "completed" {
            q = Some(added);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let added = q.expect("the pending order settled");
    let calls: Vec<_> = added
        .iter()
        .filter(|e| e["method"] == "pay.query")
        .collect();
    assert_eq!(calls.len(), 1, "{added:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_are_refused_audited_and_do_nothing() {
    let card = SharedCard::default_card();
    let d = InProc::with_card(&card).await;
    let mut c = d.login("cashier").await;
    let before = entries(&d).await.len();
    let n = json!({"jsonrpc": "2.0", "method": "pay.debit",
        "params": {"order_id": "N-1", "amount_fen": 100, "pin": "123456"}});
    let line = format!(
        "{n}\n{}\n",
        json!({"jsonrpc": "2.0", "id": "sync", "method": "system.health"})
    );
    // the only answer is the health call's: the notification got none
    let r = c.raw(line.as_bytes()).await;
    assert_eq!(r["id"], "sync");
    let added = &entries(&d).await[before..];
    one_entry(added, "pay.debit", "cashier", "notification");
    assert!(added[0]["outcome"]
        .as_str()
        .unwrap()
        .contains("notification"));
    assert_eq!(card.balance(), 100_000, "nothing was debited");
    let p = d
        .state
        .journal
        .call(|j| j.payment("N-1", PaymentKind::Debit))
        .await
        .unwrap();
    assert!(p.is_none(), "no payment row");
    // a client that never logged in leaves no entry
    let mut anon = d.client().await;
    let before = entries(&d).await.len();
    let e = anon.call("card.read", json!({})).await.unwrap_err();
    assert_eq!(kind(&e), "UNAUTHENTICATED");
    assert_eq!(entries(&d).await.len(), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_come_back_exactly_and_params_are_strict() {
    let d = InProc::with_card(&SharedCard::default_card()).await;
    let mut c = d.login("super").await;
    // the id as written, byte for byte
    let line = r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"system.health"}"#;
    c.wr_line(line).await;
    let raw = c.read_line().await;
    assert!(
        raw.starts_with(r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"#),
        "{raw}"
    );
    for bad in ["a\u{202E}b", "a\u{200B}", " ", "", "a b", &"x".repeat(65)] {
        let e = c
            .call("pay.query", json!({"order_id": bad}))
            .await
            .unwrap_err();
        assert_eq!(e["code"], -32602, "{bad:?}");
        assert!(e["message"].as_str().unwrap().starts_with("order_id:"));
    }
    for bad in ["2026-1-1", "+10000-01-01", "2026-02-30"] {
        let e = c
            .call("settle.day", json!({"date": bad}))
            .await
            .unwrap_err();
        assert_eq!(e["code"], -32602, "{bad}");
    }
    let mut admin = d.login("admin").await;
    let long = "x".repeat(60_000);
    for bad in [long.as_str(), "lost\u{1b}[2J", "a\u{202E}b"] {
        let e = admin
            .call("blacklist.add", json!({"card": "X1", "reason": bad}))
            .await
            .unwrap_err();
        assert_eq!(e["code"], -32602);
        assert!(e["message"].as_str().unwrap().starts_with("reason:"));
    }
    let list = admin.call("blacklist.list", json!({})).await.unwrap();
    assert_eq!(list, json!([]), "nothing was added");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_are_throttled_and_counted_not_logged_one_by_one() {
    let d = InProc::with_card(&SharedCard::default_card()).await;
    let before = entries(&d).await.len();
    let mut c = d.client().await;
    let mut delays = Vec::new();
    let mut closed = false;
    for i in 0..20 {
        let t = Instant::now();
        c.wr_line(
            &json!({"jsonrpc": "2.0", "id": i, "method": "session.login",
            "params": {"token": format!("wrong-{i}")}})
            .to_string(),
        )
        .await;
        match c.try_read_line().await {
            Some(l) => {
                let v: Value = serde_json::from_str(&l).unwrap();
                assert_eq!(kind(&v["error"]), "UNAUTHENTICATED");
                delays.push(t.elapsed());
            }
            None => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the connection is closed after repeated failures");
    let max = sscard_daemon::throttle::MAX_FAILURES_PER_CONNECTION as usize;
    assert_eq!(delays.len(), max);
    assert!(delays[0] >= sscard_daemon::throttle::BASE_DELAY);
    assert!(delays[max - 1] > delays[0], "the delay grows: {delays:?}");
    // the right token is answered at once, even for the same peer
    let mut good = d.client().await;
    let t = Instant::now();
    good.call("session.login", json!({"token": "tok-cashier"}))
        .await
        .unwrap();
    assert!(t.elapsed() < delays[max - 1], "{:?}", t.elapsed());
    // five failures: one entry for the first, one with the count of the rest
    let added: Vec<Value> = entries(&d).await[before..]
        .iter()
        .filter(|e| e["method"] == "session.login" && e["operator"] == "")
        .cloned()
        .collect();
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(added[1]["outcome"]
        .as_str()
        .unwrap()
        .contains(&format!("{} more failed logins", max - 1)));
    assert!(!serde_json::to_string(&added).unwrap().contains("wrong-"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_unauthenticated_clients_never_shut_out_the_others() {
    let d = InProc::start_with(
        {
            let sim = sscard_daemon::readers::sim::SimControl::new();
            sim.add_reader_with_card("r0", SharedCard::default_card().boxed());
            sim
        },
        |c| {
            c.max_unauthenticated = 4;
            c.max_connections = 8;
            c.login_timeout_ms = 400;
            c.tcp = Some("127.0.0.1:0".parse().unwrap());
        },
        None,
    )
    .await;
    // four idle connections that never log in fill the waiting slots
    let idle: Vec<_> = (0..4)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // a fifth is answered at once (busy), not left hanging
    let mut fifth = d.client().await;
    let v: Value = serde_json::from_str(&fifth.try_read_line().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], -32000, "{v}");
    // the socket's waiting slots are not the TCP port's
    let mut t = std::net::TcpStream::connect(d.tcp.unwrap()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"system.health\"}\n")
        .unwrap();
    let mut got = [0u8; 512];
    let n = t.read(&mut got).unwrap();
    let v: Value = serde_json::from_slice(&got[..n]).unwrap();
    assert_eq!(v["result"]["journal"], "ok", "{v}");
    // the idle ones are closed when the login timeout passes ...
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(String::from_utf8_lossy(&buf).contains("not logged in in time"));
    }
    // ... and a client that logs in is served
    let mut c = d.login("cashier").await;
    assert!(c.call("card.balance", json!({})).await.is_ok());
    // logged-in clients do not hold waiting slots: more can still connect
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(d.login("cashier").await);
    }
    let mut late = d.client().await;
    assert!(late.call("system.health", json!({})).await.is_ok());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_drip_is_cut_off_by_the_line_timeout() {
    let sim = sscard_daemon::readers::sim::SimControl::new();
    let d = InProc::start_with(sim, |c| c.line_timeout_ms = 500, None).await;
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let mut closed = false;
    // one byte every 200 ms: each well within the timeout, the line never
    for b in br#"{"jsonrpc":"2.0","id":1,"method":"system.health"}"#
        .iter()
        .cycle()
        .take(40)
    {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(closed, "the drip was cut off");
    // 40 bytes at 200 ms would be 8 s: it ended within a few line timeouts
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    d.stop().await;
}

/// A tmpfs of `size` mounted on a temporary directory (the tests run as root in a
/// private mount namespace, scripts/with-pcscd); unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        sscard_firmware_tests::testbed::require_private_pcscd();
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (run inside scripts/with-pcscd)");
        Tmpfs(dir)
    }

    /// Fill the file system until it refuses to grow.
    fn fill(&self) -> std::path::PathBuf {
        let p = self.0.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let one = [0u8; 1];
        while f.write_all(&one).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_calls_before_they_touch_the_card() {
    let fs = Tmpfs::mount("4m");
    let card = SharedCard::default_card();
    let sim = sscard_daemon::readers::sim::SimControl::new();
    sim.add_reader_with_card("r0", card.boxed());
    let jpath = fs.0.path().join("journal.db");
    let d = InProc::start_with(sim, |c| c.journal = jpath.clone(), None).await;
    let mut c = d.login("cashier").await;
    let mut a = d.login("audit").await;
    assert_eq!(
        c.call("system.health", json!({})).await.unwrap()["journal"],
        "ok"
    );
    let filler = fs.fill();
    let h = c.call("system.health", json!({})).await.unwrap();
    assert_eq!(
        h["journal"], "unavailable",
        "health sees a journal it cannot write"
    );
    for (m, p) in [
        ("card.balance", json!({})),
        ("card.verify_pin", json!({"pin": "999999"})),
        (
            "pay.debit",
            json!({"order_id": "F-1", "amount_fen": 100, "pin": "123456"}),
        ),
        ("pay.query", json!({"order_id": "F-1"})),
    ] {
        let e = c.call(m, p).await.unwrap_err();
        assert_eq!(kind(&e), "JOURNAL_UNAVAILABLE", "{m}: {e}");
    }
    let e = a.call("audit.query", json!({})).await.unwrap_err();
    assert_eq!(kind(&e), "JOURNAL_UNAVAILABLE");
    let mut l = d.client().await;
    let e = l
        .call("session.login", json!({"token": "tok-super"}))
        .await
        .unwrap_err();
    assert_eq!(kind(&e), "JOURNAL_UNAVAILABLE");
    // nothing touched the card: no money moved and no PIN try was spent
    assert_eq!(card.balance(), 100_000);
    std::fs::remove_file(filler).unwrap();
    let r = c
        .call("card.verify_pin", json!({"pin": "999999"}))
        .await
        .unwrap_err();
    assert_eq!(
        r["data"]["tries_left"], 2,
        "the refused wrong-PIN call spent no try: {r}"
    );
    let log = entries(&d).await;
    let ran: Vec<_> = log
        .iter()
        .filter(|e| e["method"] == "card.verify_pin")
        .collect();
    assert_eq!(
        ran.len(),
        1,
        "only the call that ran is in the chain: {ran:?}"
    );
    d.stop().await;
}

#[test]
fn the_table_marks_every_card_and_money_method_audited() {
    for r in TABLE {
        let money_or_card = r.name.starts_with("card.") || r.name.starts_with("pay.");
        if money_or_card {
            assert!(r.audited, "{}", r.name);
            assert!(matches!(r.access, Access::Roles(_)), "{}", r.name);
            assert!(
                !r.method.allows(Role::Admin),
                "admins never touch money: {}",
                r.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_with_every_logged_in_slot_taken_is_refused_and_says_so() {
    let sim = sscard_daemon::readers::sim::SimControl::new();
    let d = InProc::start_with(
        sim,
        |c| {
            c.max_connections = 2;
            c.max_unauthenticated = 2;
        },
        None,
    )
    .await;
    let mut held = vec![d.login("cashier").await, d.login("super").await];
    let mut third = d.client().await;
    let before = entries(&d).await.len();
    let e = third
        .call("session.login", json!({"token": "tok-audit"}))
        .await
        .unwrap_err();
    assert_eq!(e["code"], -32000, "{e}");
    assert!(third.closed_within(Duration::from_secs(5)).await);
    let added = &entries(&d).await[before..];
    assert_eq!(
        added.len(),
        2,
        "the login and that it did not stand: {added:?}"
    );
    assert!(added[1]["outcome"].as_str().unwrap().starts_with("-32000"));
    // the logged-in ones go on; one leaving frees a slot
    assert!(held[0].call("reader.list", json!({})).await.is_ok());
    held.pop();
    let mut fourth = d.client().await;
    let mut ok = false;
    for _ in 0..50 {
        if fourth
            .call("session.login", json!({"token": "tok-audit"}))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        fourth = d.client().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a freed slot is taken by the next login");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slot_counts_wait_for_a_restart() {
    let d = InProc::with_card(&SharedCard::default_card()).await;
    let before = d.state.config();
    let mut cfg = (*before).clone();
    cfg.max_unauthenticated = before.max_unauthenticated + 1;
    cfg.max_connections = before.max_connections + 1;
    cfg.idle_timeout_ms = 60_000;
    d.state.reload(cfg).await.unwrap();
    let now = d.state.config();
    // the listeners' slots were sized at start: the configuration says what is in force
    assert_eq!(now.max_unauthenticated, before.max_unauthenticated);
    assert_eq!(now.max_connections, before.max_connections);
    assert_eq!(
        now.idle_timeout_ms, 60_000,
        "timeouts apply to new connections"
    );
    d.stop().await;
}
