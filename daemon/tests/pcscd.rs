//! `sscardd --dev` through the real pcscd, with `sscard-vcard` cards in the test bed's
//! vpcd slots (run under `scripts/with-pcscd`; `scripts/test` does): a card torn after
//! DEBIT (committed or not), the daemon killed with SIGKILL while the DEBIT is on the
//! card (taken or not) and restarted, and 50 concurrent clients on two readers. The
//! journal's totals are checked against the cards' balances.
//!
//! The daemon sees every reader of the private pcscd, so each test leases all slots.

mod common;

use common::kind;
use common::process::{operators_toml, LineClient, Sscardd};
use serde_json::{json, Value};
use sscard_firmware_tests::testbed::{wait_present, SlotLease, Vcard};
use std::path::Path;
use std::time::{Duration, Instant};

const START_BALANCE: i64 = 100_000;

fn config() -> String {
    format!(
        "terminal_id = \"650200000001\"\nregion = \"650200\"\ntest_mode = true\n\
         reader_wait_ms = 60000\nmax_unauthenticated = 64\n[keys]\ntest = true\n\
         [limits]\nper_transaction_fen = 500000\nper_card_per_day_fen = 100000000\n{}",
        operators_toml(false)
    )
}

/// Every slot of the test bed, and a directory with the daemon's configuration.
fn bed() -> (Vec<SlotLease>, tempfile::TempDir) {
    let slots = SlotLease::acquire_all();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sscardd.toml"), config()).unwrap();
    (slots, dir)
}

/// Start a card (its image in `dir`, so it outlives the program) in `slot`.
fn card(slot: SlotLease, dir: &Path, name: &str, extra: &[&str]) -> Vcard {
    let image = dir.join(format!("{name}.json"));
    let mut args = vec!["--image", image.to_str().unwrap()];
    args.extend_from_slice(extra);
    Vcard::start_in(slot, &args)
}

/// Poll `f` every 50 ms until it gives `Some` (at most `secs` seconds).
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until the daemon lists a card in `reader`.
fn sees_card(c: &mut LineClient, reader: &str) {
    wait_for(10, "the daemon sees the card", || {
        let l = c.call("reader.list", json!({})).unwrap();
        l.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == reader && r["card_present"] == true)
            .then_some(())
    });
}

/// Poll `pay.query` until the order is no longer pending.
fn settled(c: &mut LineClient, order: &str) -> Value {
    wait_for(20, "the order settles", || {
        let q = c.call("pay.query", json!({"order_id": order})).unwrap();
        (q["status"] != "pending").then_some(q)
    })
}

fn balance(c: &mut LineClient, reader: &str) -> i64 {
    let b = c.call("card.balance", json!({"reader": reader})).unwrap();
    b["balance_fen"].as_i64().unwrap()
}

/// (card id, count, total) of the completed debits in the journal file.
fn journal_debits(journal: &Path) -> Vec<(String, i64, i64)> {
    let db = rusqlite::Connection::open(journal).unwrap();
    let mut st = db
        .prepare(
            "SELECT card_id, COUNT(*), SUM(amount_fen) FROM payments
             WHERE kind='debit' AND status='completed' GROUP BY card_id ORDER BY card_id",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

fn debit(order: &str, fen: i64, reader: &str) -> Value {
    json!({"order_id": order, "amount_fen": fen, "pin": "123456", "reader": reader})
}

fn torn_after_debit(commit: bool) {
    let (mut slots, dir) = bed();
    let how = if commit {
        "54:1:commit"
    } else {
        "54:1:nocommit"
    };
    let v = card(
        slots.remove(0),
        dir.path(),
        "card",
        &["--tear-after", how, "--reinsert-ms", "1500"],
    );
    let d = Sscardd::spawn("--dev", dir.path());
    let mut c = LineClient::login(&d, "cashier");
    sees_card(&mut c, v.reader());
    assert_eq!(balance(&mut c, v.reader()), START_BALANCE);
    let e = c
        .call("pay.debit", debit("T-1", 1234, v.reader()))
        .unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(3004), "TRANSACTION_UNCERTAIN"),
        "{e}"
    );
    assert_eq!(e["data"]["payment"]["status"], "pending");
    // the card comes back after 1.5 s and the daemon settles the order by itself
    let q = settled(&mut c, "T-1");
    let after = balance(&mut c, v.reader());
    if commit {
        assert_eq!(q["status"], "completed");
        assert_eq!(q["tac"].as_str().unwrap().len(), 8, "the card's TAC");
        assert_eq!(after, START_BALANCE - 1234);
        // the same order again: the recorded payment, nothing more debited
        let again = c.call("pay.debit", debit("T-1", 1234, v.reader())).unwrap();
        assert_eq!(again, q);
        assert_eq!(balance(&mut c, v.reader()), START_BALANCE - 1234);
    } else {
        assert_eq!(q["status"], "failed");
        assert_eq!(after, START_BALANCE);
    }
    let h = c.call("system.health", json!({})).unwrap();
    assert_eq!(h["pending"], 0);
}

#[test]
fn a_card_torn_after_a_committed_debit_settles_completed() {
    torn_after_debit(true);
}

#[test]
fn a_card_torn_before_the_debit_took_effect_settles_failed() {
    torn_after_debit(false);
}

/// The daemon is killed with SIGKILL while the card holds the DEBIT (taken or not):
/// the payment was journaled pending; after a restart it settles from the card.
fn killed_mid_debit(taken: bool) {
    let (mut slots, dir) = bed();
    let signal = dir.path().join("torn");
    let how = if taken {
        "54:2:commit"
    } else {
        "54:2:nocommit"
    };
    let v = card(
        slots.remove(0),
        dir.path(),
        "card",
        &[
            "--tear-after",
            how,
            "--tear-hold-ms",
            "3000",
            "--tear-signal",
            signal.to_str().unwrap(),
            "--reinsert-ms",
            "300",
        ],
    );
    let reader = v.reader().to_string();
    let d = Sscardd::spawn("--dev", dir.path());
    let mut c = LineClient::login(&d, "cashier");
    sees_card(&mut c, &reader);
    // one payment that goes through, then the one the daemon dies in
    let first = c.call("pay.debit", debit("K-0", 500, &reader)).unwrap();
    assert_eq!(first["status"], "completed");
    let req = json!({"jsonrpc": "2.0", "id": 99, "method": "pay.debit",
                     "params": debit("K-1", 4321, &reader)});
    std::io::Write::write_all(c.s.get_mut(), format!("{req}\n").as_bytes()).unwrap();
    wait_for(15, "the card holds the DEBIT", || {
        signal.exists().then_some(())
    });
    let journal = d.journal.clone();
    d.kill();
    {
        let db = rusqlite::Connection::open(&journal).unwrap();
        let status: String = db
            .query_row(
                "SELECT status FROM payments WHERE order_id='K-1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(status, "pending", "journaled before the DEBIT");
    }
    // the card leaves when its hold ends, and comes back
    let ctx = sscard_driver::transport::pcsc::PcscContext::establish().unwrap();
    wait_present(&ctx, &reader, false, Duration::from_secs(10));
    wait_present(&ctx, &reader, true, Duration::from_secs(10));

    let d = Sscardd::spawn("--dev", dir.path());
    let mut c = LineClient::login(&d, "cashier");
    let q = settled(&mut c, "K-1");
    let want = if taken { "completed" } else { "failed" };
    assert_eq!(q["status"], want, "{q}");
    let spent = 500 + if taken { 4321 } else { 0 };
    assert_eq!(balance(&mut c, &reader), START_BALANCE - spent);
    // the journal's totals match the card
    let totals = journal_debits(&journal);
    assert_eq!(totals.len(), 1);
    assert_eq!((totals[0].1, totals[0].2), (1 + taken as i64, spent));
    let mut s = LineClient::login(&d, "super");
    let day = s
        .call("settle.day", json!({"date": common::today()}))
        .unwrap();
    assert_eq!(day["total_fen"], spent);
    assert_eq!(day["pending_count"], 0);
    // the journal's audit chain survived the kill
    let mut a = LineClient::login(&d, "audit");
    let log = a
        .call("audit.query", json!({"operator": "sscardd"}))
        .unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["method"] == "settle"),
        "{log}"
    );
    d.signal("-TERM");
    wait_for(30, "sscardd stops", || (!d.socket.exists()).then_some(()));
    assert!(sscard_daemon::journal::verify_chain(&journal).unwrap() > 0);
}

#[test]
fn killed_after_the_card_took_the_debit_the_restart_completes_it() {
    killed_mid_debit(true);
}

#[test]
fn killed_before_the_card_took_the_debit_the_restart_fails_it() {
    killed_mid_debit(false);
}

#[test]
fn fifty_clients_on_two_readers_lose_and_double_nothing() {
    let (mut slots, dir) = bed();
    assert!(slots.len() >= 2, "the test bed has two slots");
    let a = card(
        slots.remove(0),
        dir.path(),
        "a",
        &["--serial", "1111111111111111"],
    );
    let b = card(
        slots.remove(0),
        dir.path(),
        "b",
        &["--serial", "2222222222222222"],
    );
    let readers = [a.reader().to_string(), b.reader().to_string()];
    let d = Sscardd::spawn("--dev", dir.path());
    let mut c = LineClient::login(&d, "cashier");
    for r in &readers {
        sees_card(&mut c, r);
    }
    // 50 clients log in at once: the configuration gives them 64 waiting slots
    const CLIENTS: usize = 50;
    let go = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let reader = readers[i % 2].clone();
            let go = go.clone();
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = LineClient::connect(&socket);
                c.call("session.login", json!({"token": "tok-cashier"}))
                    .unwrap();
                go.wait();
                let card = c.call("card.read", json!({"reader": reader})).unwrap();
                let order = format!("L-{i}");
                let fen = 100 + i as i64;
                let p = c.call("pay.debit", debit(&order, fen, &reader)).unwrap();
                // every fifth client sends its order twice: paid once
                if i % 5 == 0 {
                    let again = c.call("pay.debit", debit(&order, fen, &reader)).unwrap();
                    assert_eq!(again, p);
                }
                let q = c.call("pay.query", json!({"order_id": order})).unwrap();
                assert_eq!(q, p);
                (reader, card["card_id"].clone(), p)
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("every client answered"))
        .collect();
    assert_eq!(results.len(), CLIENTS);
    for r in &readers {
        let mine: Vec<_> = results.iter().filter(|(x, _, _)| x == r).collect();
        assert!(mine.iter().all(|(_, _, p)| p["status"] == "completed"));
        let total: i64 = mine
            .iter()
            .map(|(_, _, p)| p["amount_fen"].as_i64().unwrap())
            .sum();
        assert_eq!(balance(&mut c, r), START_BALANCE - total, "{r}");
        // the card's purse counter went up by one for each payment, none skipped or
        // used twice: no purchase was interleaved with another on the card
        let mut counters: Vec<i64> = mine
            .iter()
            .map(|(_, _, p)| p["counter"].as_i64().unwrap())
            .collect();
        counters.sort_unstable();
        let first = counters[0];
        let want: Vec<i64> = (first..first + counters.len() as i64).collect();
        assert_eq!(counters, want, "{r}");
        let ids: std::collections::HashSet<_> = mine
            .iter()
            .flat_map(|(_, read, p)| [read.clone(), p["card_id"].clone()])
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "every payment on {r} was on the card read there"
        );
    }
    let totals = journal_debits(&d.journal);
    assert_eq!(totals.len(), 2);
    assert_eq!(totals.iter().map(|t| t.1).sum::<i64>(), CLIENTS as i64);
    let mut s = LineClient::login(&d, "super");
    let day = s
        .call("settle.day", json!({"date": common::today()}))
        .unwrap();
    assert_eq!(day["count"], CLIENTS);
    let want: i64 = (0..CLIENTS as i64).map(|i| 100 + i).sum();
    assert_eq!(day["total_fen"], want);
}

/// The presentation cache through pcscd: a card swapped in the reader is read anew (the
/// POS that names the old card gets `CARD_CHANGED`), and a card that another program
/// rewrites and resets (as the office commands do) is read anew too.
#[test]
fn the_cache_follows_swaps_and_another_programs_reset() {
    let (mut slots, dir) = bed();
    let a = card(
        slots.remove(0),
        dir.path(),
        "a",
        &["--serial", "1111111111111111"],
    );
    let reader = a.reader().to_string();
    let d = Sscardd::spawn("--dev", dir.path());
    let mut c = LineClient::login(&d, "cashier");
    sees_card(&mut c, &reader);
    let first = c.call("card.read", json!({"reader": reader})).unwrap();
    assert_eq!(first["insured_status"], "01");

    // swapped for another card: the POS still shows the first
    let lease = a.into_lease();
    let b = card(lease, dir.path(), "b", &["--serial", "2222222222222222"]);
    sees_card(&mut c, &reader);
    let mut p = debit("C-1", 100, &reader);
    p["card_id"] = first["card_id"].clone();
    let e = c.call("pay.debit", p).unwrap_err();
    assert_eq!(kind(&e), "CARD_CHANGED", "{e}");
    let now = c.call("card.read", json!({"reader": reader})).unwrap();
    assert_ne!(now["card_id"], first["card_id"]);
    assert_eq!(balance(&mut c, &reader), START_BALANCE, "nothing debited");

    // another program suspends the holder's insurance (EF15 22 = 02, MAINT key) and
    // ends with a card reset: the daemon's cached "01" must not stand
    {
        use sscard_driver::app;
        use sscard_driver::keyprovider::SoftwareKeys;
        use sscard_driver::keys::KeyPurpose;
        use sscard_driver::transport::{CardTransport, Transaction};
        let mut card = b.connect();
        let mut keys = SoftwareKeys::test_keys(
            "650200".parse().unwrap(),
            "650200000009".parse().unwrap(),
            &[KeyPurpose::Maint],
        );
        {
            let mut tx = Transaction::begin(&mut card).unwrap();
            let id = app::read_policy(&mut tx).unwrap().card_id;
            app::select_ef(&mut tx, 0xEF15).unwrap();
            app::update_record(&mut tx, &mut keys, &id, 0x22, &[0x02]).unwrap();
        }
        card.reset().unwrap();
    }
    let e = c.call("pay.debit", debit("C-2", 100, &reader)).unwrap_err();
    assert_eq!(kind(&e), "INSURANCE_SUSPENDED", "{e}");
    let again = c.call("card.read", json!({"reader": reader})).unwrap();
    assert_eq!(again["insured_status"], "02");
    assert_eq!(balance(&mut c, &reader), START_BALANCE);
}
