//! The `sscard` binary end to end: through the private pcscd with a virtual card, and
//! with no pcscd at all. Run under `scripts/with-pcscd` (scripts/test does).

use sscard_firmware_tests::testbed::{bin_path, SlotLease, Vcard};
use std::process::Command;

fn sscard(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin_path("sscard"))
        .args(args)
        .output()
        .expect("run sscard");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every vpcd slot, held: `sscard readers` connects to the cards in PC/SC readers (to
/// ask their PIN pad features), and another test's card coming or going in vpcd
/// meanwhile can be missed by pcscd.
fn every_slot() -> Vec<SlotLease> {
    SlotLease::acquire_all()
}

#[test]
fn reads_the_virtual_card_through_pcscd() {
    let mut slots = every_slot();
    let v = Vcard::start_in(slots.remove(0), &["--t0"]);
    let (code, out, err) = sscard(&["read", "--reader", v.reader()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("张三"), "{out}");
    assert!(out.contains("650200D1560000050011223344556677"), "{out}");
    let (code, out, _) = sscard(&["--json", "read", "--reader", v.reader()]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["card_number"], "A65020001");
    assert_eq!(j["expiry_date"], "2036-01-01");
    let (code, out, _) = sscard(&["atr", "--reader", v.reader()]);
    assert_eq!(code, 0);
    assert!(out.contains("protocols offered: T=0"), "{out}");
    let (code, out, _) = sscard(&["--json", "readers"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let me = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == v.reader())
        .unwrap();
    assert_eq!(me["card_present"], true);
    assert_eq!(
        me["pin_pad"], false,
        "a vpcd reader lists no part 10 feature"
    );
}

#[test]
fn offline_commands_and_usage_errors() {
    let (code, out, _) = sscard(&["sw", "63C1"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 tries left"), "{out}");
    assert_eq!(sscard(&["sw", "XYZ"]).0, 2);
    let (code, out, _) = sscard(&["atr", "3B6A00005353432D4145532076 31"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SSC-AES v1"), "{out}");
    assert_eq!(sscard(&["atr", "3C00"]).0, 1);
    // malformed ATRs (real cards send them): decoded as far as they go, the fault named
    let (code, out, err) = sscard(&["atr", "3B6A00005353432D41"]);
    assert_eq!(code, 1);
    assert!(out.contains("historical bytes: 53 53 43 2D 41"), "{out}");
    assert!(
        out.contains("historical bytes missing: T0 announces 10, 5 present"),
        "{out}"
    );
    assert!(
        err.contains("invalid ATR: historical bytes missing"),
        "{err}"
    );
    let (code, out, _) = sscard(&["--json", "atr", "3B 80 01 00"]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(j["valid"], false);
    assert_eq!(j["protocols"], serde_json::json!(["T=1"]));
    assert!(
        j["problems"][0].as_str().unwrap().contains("wrong TCK: 00"),
        "{j}"
    );
    assert_eq!(j["exit_code"], 1);
    let (code, out, _) = sscard(&["--json", "atr", "3B6A00005353432D4145532076 31"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (j["valid"].clone(), j["problems"].clone()),
        (true.into(), serde_json::json!([]))
    );
}

#[test]
fn no_pcscd_is_a_clear_error() {
    // a mount namespace where /run/pcscd is empty: no pcscd to talk to
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /run/pcscd && exec {} readers",
            bin_path("sscard").display()
        ))
        .output()
        .expect("unshare");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("pcscd"), "{err}");
}

#[test]
fn keystore_create_then_personalize_a_blank_card_twice_issues_once() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "office passphrase\n").unwrap();
    let ks = dir.path().join("office.keystore");
    let (code, out, err) = sscard(&[
        "keystore",
        "create",
        "--out",
        ks.to_str().unwrap(),
        "--region",
        "650200",
        "--terminal-id",
        "650200000009",
        "--purposes",
        "all",
        "--test-keys",
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("EXT,INT,MAINT,PIN,PURCHASE,LOAD,TAC"), "{out}");
    // a production open refuses it: the test keys
    let records = dir.path().join("records.json");
    std::fs::write(
        &records,
        serde_json::json!([{
            "card_number": "A65020123", "ssn": "650102199212123456", "name": "王五", "gender": "1",
            "nation": "01", "birthplace": "650102", "birth_date": "1992-12-12",
            "issue_date": "2026-11-23", "expiry_date": "2036-11-23", "insured_category": "01",
            "pooling_region": "650200", "region": "650200", "pin": "135790"
        }])
        .to_string(),
    )
    .unwrap();
    let v = Vcard::start(&["--blank", "--serial", "A1A2A3A4A5A6A7A8"]);
    let journal = dir.path().join("issuance.db");
    let mf = dir.path().join("kmanuf");
    std::fs::write(&mf, "00112233445566778899AABBCCDDEEFF").unwrap();
    let (code, _, err) = sscard(&[
        "personalize",
        "--records",
        records.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--reader",
        v.reader(),
        "--keystore",
        ks.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
        "--manufacturer-key",
        mf.to_str().unwrap(),
        "--wait",
        "5",
    ]);
    assert_eq!(code, 5, "production refuses test keys: {err}");
    assert!(err.contains("test master keys"), "{err}");
    let args = [
        "--json",
        "personalize",
        "--records",
        records.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--reader",
        v.reader(),
        "--test-keys",
        "--wait",
        "5",
    ];
    let (code, out, err) = sscard(&args);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let o = &lines[0];
    assert_eq!(o["outcome"], "issued");
    assert_eq!(lines[1]["summary"]["issued"], 1, "{out}");
    assert_eq!(o["card_id"], "650200D156000005A1A2A3A4A5A6A7A8");
    let (code, out, _) = sscard(&["--json", "read", "--reader", v.reader()]);
    assert_eq!(code, 0);
    assert!(out.contains("王五"), "{out}");
    // the batch run again: the journal says issued, nothing is sent
    let (code, out, _) = sscard(&args);
    assert_eq!(code, 0);
    assert!(out.contains("already_issued"), "{out}");
}

#[test]
fn audit_verify_finds_a_changed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    {
        let mut j = sscard_journal::Journal::open(&db).unwrap();
        for i in 0..3 {
            j.audit(
                "2026-11-23T10:00:00+08:00",
                "li.na",
                "pay.debit",
                "r0",
                "A65020001",
                &format!("ok {i}"),
            )
            .unwrap();
        }
    }
    let (code, out, _) = sscard(&["audit", "verify", "--journal", db.to_str().unwrap()]);
    assert_eq!(code, 0);
    // the 3 entries after the journal's creation
    assert!(
        out.contains("intact") && out.contains("entries      4"),
        "{out}"
    );
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE audit SET operator='someone' WHERE seq=2", [])
        .unwrap();
    let (code, _, err) = sscard(&["audit", "verify", "--journal", db.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("entry 2"), "{err}");
}

#[test]
fn audit_verify_lists_deleted_entries_and_edited_payments() {
    use sscard_journal::{Journal, Payment, PaymentKind, PaymentStatus};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    {
        let mut j = Journal::open(&db).unwrap();
        for i in 0..30 {
            j.audit(
                "2026-11-23T10:00:00+08:00",
                "li.na",
                "session.login",
                "",
                "",
                "ok",
            )
            .unwrap();
            j.insert(&Payment {
                order_id: format!("O-{i}"),
                txn_id: format!("650200000001-{i}"),
                kind: PaymentKind::Debit,
                status: PaymentStatus::Completed,
                card_id: "00".repeat(16),
                card_number: "A65020001".into(),
                amount_fen: 100,
                balance_before_fen: 1000,
                balance_after_fen: 900,
                counter: i,
                terminal_id: "650200000001".into(),
                terminal_seq: i,
                time: "2026-11-23T10:00:00+08:00".into(),
                tac: "01020304".into(),
                operator: "li.na".into(),
            })
            .unwrap();
        }
    }
    let verify = || sscard(&["audit", "verify", "--journal", db.to_str().unwrap()]);
    let (code, out, _) = verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("30 anchored"), "{out}");
    let sql = |s: &str| {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(s)
            .unwrap()
    };
    sql("UPDATE payments SET amount_fen=1 WHERE txn_id='650200000001-3'");
    let (code, _, err) = verify();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("payment 650200000001-3 was changed"), "{err}");
    assert!(err.contains("1 finding "), "{err}");
    // the newest entries and the head deleted (the attack run's case), then all of them
    sql(
        "UPDATE payments SET amount_fen=100 WHERE txn_id='650200000001-3';
         DELETE FROM audit WHERE seq > 20; DELETE FROM audit_head;",
    );
    let (code, _, err) = verify();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("chain head (audit_head) was deleted"), "{err}");
    assert!(
        err.contains("payment 650200000001-29 names audit entry 31, which was deleted"),
        "{err}"
    );
    sql("DELETE FROM audit");
    let (code, _, err) = verify();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("31 findings"), "{err}");
    assert!(err.contains("… and 11 more"), "{err}");
}

#[test]
fn backup_of_a_running_daemon_holds_its_payments_and_keeps_the_retention() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let (journal, backups, socket) = (
        dir.path().join("journal.db"),
        dir.path().join("backup"),
        dir.path().join("s.sock"),
    );
    let conf = dir.path().join("sscardd.toml");
    std::fs::write(
        &conf,
        format!(
            "terminal_id = \"650200000001\"\nregion = \"650200\"\ntest_mode = true\n\
             journal = \"{}\"\n[keys]\ntest = true\n\
             [backup]\nschedule = \"weekly\"\ndir = \"{}\"\nretention_weeks = 26\n\
             [[operators]]\nname = \"li.na\"\ntoken_sha256 = \"{}\"\nrole = \"cashier\"\n",
            journal.display(),
            backups.display(),
            sscard_daemon::config::token_hash("tok")
        ),
    )
    .unwrap();
    let mut daemon = Command::new(bin_path("sscardd"))
        .env("SSCARD_LOG", "warn")
        .arg("--simulate")
        .arg("--config")
        .arg(&conf)
        .arg("--socket")
        .arg(&socket)
        .arg("--journal")
        .arg(&journal)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("socket: "), "{first}");
    let count = || sscard_journal::backup::list(&backups).unwrap().len();
    // no backup yet: the weekly schedule takes one at start
    for _ in 0..100 {
        if count() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(count(), 1, "the scheduled backup at start");

    let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut call = |line: &str| {
        w.write_all(line.as_bytes()).unwrap();
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str::<serde_json::Value>(&l).unwrap()
    };
    call("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"session.login\",\"params\":{\"token\":\"tok\"}}\n");
    let p = call("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"pay.debit\",\"params\":{\"order_id\":\"B-1\",\"amount_fen\":321,\"pin\":\"123456\"}}\n");
    assert_eq!(p["result"]["status"], "completed", "{p}");

    // a backup 100 weeks old goes; the one from the start stays
    let old = backups.join(sscard_journal::backup::file_name(weeks_ago(100)));
    std::fs::write(&old, b"old").unwrap();
    let (code, out, err) = sscard(&["backup", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("deleted") && out.contains(old.to_str().unwrap()),
        "{out}"
    );
    assert!(!old.exists());
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("backup"))
        .map(|p| p.trim().to_string())
        .unwrap();
    let copy = rusqlite::Connection::open(&path).unwrap();
    let (status, fen): (String, i64) = copy
        .query_row(
            "SELECT status, amount_fen FROM payments WHERE order_id='B-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), fen), ("completed", 321));
    let (code, out, _) = sscard(&["audit", "verify", "--journal", &path]);
    assert_eq!(code, 0, "the copy's audit chain is whole: {out}");
    assert_eq!(count(), 2);

    let (code, _, err) = sscard(&[
        "backup",
        "--journal",
        dir.path().join("none.db").to_str().unwrap(),
        "--dir",
        backups.to_str().unwrap(),
    ]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no such journal"), "{err}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A UTC time `weeks` weeks ago.
fn weeks_ago(weeks: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::weeks(weeks as i64)
}

#[test]
fn readers_says_which_reader_has_a_pin_pad() {
    use sscard_firmware_tests::testbed::SerialVcard;
    let _slots = every_slot();
    let v = SerialVcard::start("GemPCPinPad", &[]);
    let spec = format!("{}:GemPCPinPad", v.pty.display());
    let (code, out, err) = sscard(&["--json", "readers", "--serial", &spec]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pad = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backend"] == "serial")
        .cloned()
        .unwrap_or_default();
    assert_eq!(pad["pin_pad"], true, "{out}");
    let (code, out, _) = sscard(&["readers", "--serial", &spec]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("GemPCPinPad {} 0\tcard ", v.pty.display()))
            && out.contains("\tPIN pad"),
        "{out}"
    );
}

#[test]
fn readers_lists_every_slot_of_a_serial_reader() {
    use sscard_firmware_tests::testbed::SerialVcard;
    let _slots = every_slot();
    let v = SerialVcard::start("GemCorePOSPro", &[]);
    let spec = format!("{}:GemCorePOSPro", v.pty.display());
    let (code, out, err) = sscard(&["--json", "readers", "--serial", &spec]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let serial: Vec<&serde_json::Value> = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["backend"] == "serial")
        .collect();
    assert_eq!(serial.len(), 5, "{out}");
    let card = serial[0];
    assert_eq!(
        card["name"],
        format!("GemCorePOSPro {} 0", v.pty.display()).as_str()
    );
    assert_eq!(card["card_present"], true);
    assert!(card["atr"].as_str().unwrap().starts_with("3B"), "{card}");
    assert!(serial[1..].iter().all(|r| r["card_present"] == false));
    assert!(!card["firmware"].as_str().unwrap().is_empty());
    assert!(serial.iter().all(|r| r["pin_pad"] == false), "{out}");
    // the text form names each slot; a path with nothing behind it is no reader
    let (code, out, _) = sscard(&["readers", "--serial", &spec]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("GemCorePOSPro {} 4\tempty", v.pty.display())),
        "{out}"
    );
    drop(v);
    let (code, _, err) = sscard(&["readers", "--serial", "/dev/nonexistent-tty:GemPCTwin"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("serial reader /dev/nonexistent-tty"), "{err}");
}

const SELECT_SSC: &str = "00A404000F7378312E73682EC9E7BBE1B1A3D5CF";

#[test]
fn apdus_and_scripts_through_pcscd_with_pins_redacted() {
    let v = Vcard::start(&["--t0"]);
    // case 4 on a T=0 card: GET RESPONSE is the tool's business, not the technician's
    let (code, out, err) = sscard(&[
        "apdu",
        "--reader",
        v.reader(),
        SELECT_SSC,
        "00A4020002EF05",
        "00B2010000",
        "0020000003654321",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("< 9000 (ok)") || out.contains("9000 (ok)"),
        "{out}"
    );
    assert!(out.contains("63C2 (wrong PIN), 2 tries left"), "{out}");
    assert!(out.contains("00200000 <PIN redacted, 3 bytes>"), "{out}");
    assert!(!out.contains("654321"), "{out}");
    let (code, out, _) = sscard(&["--json", "apdu", "--reader", v.reader(), SELECT_SSC]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j[0]["sw"], "9000");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("check.apdu");
    std::fs::write(
        &script,
        format!(
            "# the default card\n{SELECT_SSC} = 9000\n00A4 0200 02 EF05 = 9000\n\
             0020 0000 00 = 63CX  # tries left, no try used\n\
             00B2 3000 00 = 9000  # no such record\n00B2010000 = 9000\n"
        ),
    )
    .unwrap();
    let path = script.to_str().unwrap();
    let (code, out, err) = sscard(&["script", "--reader", v.reader(), path]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!(
            "{path} line 5: expected 9000, the card answered 6A83"
        )),
        "{err}"
    );
    assert!(out.contains("4 of 5 commands sent; stopped"), "{out}");
    let (code, out, _) = sscard(&["--json", "script", "--reader", v.reader(), path]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(j["complete"], false);
    assert_eq!(j["steps"].as_array().map(Vec::len), Some(4));
    assert_eq!(j["steps"][3]["line"], 5);
    std::fs::write(&script, "00ZZ\n").unwrap();
    let (code, _, err) = sscard(&["script", "--reader", v.reader(), path]);
    assert_eq!(code, 2);
    assert!(err.contains("line 1: not hex"), "{err}");
}

#[test]
fn apdus_through_a_serial_reader() {
    use sscard_firmware_tests::testbed::SerialVcard;
    let v = SerialVcard::start("GemPCTwin", &[]);
    let spec = format!("{}:GemPCTwin", v.pty.display());
    let (code, out, err) = sscard(&[
        "apdu",
        "--serial",
        &spec,
        SELECT_SSC,
        "00A4020002EF05",
        "00B2010000",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("9000 (ok)").count(), 3, "{out}");
    let (code, _, err) = sscard(&["apdu", "--serial", &spec, "--slot", "3", SELECT_SSC]);
    assert_ne!(code, 0);
    assert!(err.contains("slot 3"), "{err}");
}

#[test]
fn info_tells_records_state_tries_balance_log_and_genuineness() {
    let v = Vcard::start(&[]);
    let (code, out, err) = sscard(&["info", "--reader", v.reader()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("张三"), "{out}");
    assert!(
        out.contains("PIN tries left  3") || out.contains("PIN tries left"),
        "{out}"
    );
    assert!(out.contains("not checked (no keys"), "{out}");
    // a wrong PIN, then: one try fewer, and asking used none
    let (code, _, _) = sscard(&[
        "apdu",
        "--reader",
        v.reader(),
        SELECT_SSC,
        "0020000003999999",
    ]);
    assert_eq!(code, 0);
    for _ in 0..2 {
        let (code, out, err) = sscard(&["--json", "info", "--reader", v.reader(), "--test-keys"]);
        assert_eq!(code, 0, "{err}");
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["pin_tries_left"], 2, "{j}");
        assert_eq!(j["genuine"], true, "{j}");
        assert_eq!(j["state"], "issued");
        assert_eq!(j["balance_fen"], 100000);
        assert!(j["log"].is_array(), "{j}");
        assert_eq!(j["card_number"], "A65020001");
    }
}

/// `sscard --json watch ARGS` running; its lines as they come.
struct Watch {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        use std::io::BufRead;
        let mut child = Command::new(bin_path("sscard"))
            .args(["--json", "watch"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run sscard watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Watch { child, lines: rx }
    }

    /// The next `event` on `reader`, skipping others there (another test's card may
    /// have been in that reader when the watch began).
    fn next_event(&self, reader: &str, event: &str) -> serde_json::Value {
        loop {
            let v = self.next_on(reader);
            if v["event"] == event {
                return v;
            }
        }
    }

    /// The next event on `reader` (other tests' readers come and go too).
    fn next_on(&self, reader: &str) -> serde_json::Value {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no event on {reader}"));
            if v["reader"] == reader {
                return v;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_reports_cards_coming_and_going_on_pcsc_and_serial_readers() {
    use sscard_firmware_tests::testbed::SerialVcard;
    let s = SerialVcard::start("GemPCTwin", &[]);
    let spec = format!("{}:GemPCTwin", s.pty.display());
    let serial_name = format!("GemPCTwin {} 0", s.pty.display());
    let w = Watch::start(&["--serial", &spec]);
    // the state at start: the serial reader and its card
    assert_eq!(w.next_on(&serial_name)["event"], "reader.added");
    assert_eq!(w.next_on(&serial_name)["event"], "card.inserted");
    s.signal("USR1");
    assert_eq!(w.next_on(&serial_name)["event"], "card.removed");
    s.signal("USR2");
    assert_eq!(w.next_on(&serial_name)["event"], "card.inserted");
    // a card into a PC/SC reader, and out
    let v = Vcard::start(&[]);
    let reader = v.reader().to_string();
    let e = w.next_event(&reader, "card.inserted");
    assert!(e["atr"].as_str().unwrap_or("").starts_with("3B"), "{e}");
    assert!(e["time"].is_string());
    drop(v);
    assert_eq!(w.next_on(&reader)["event"], "card.removed");
    // the serial port closed: its reader goes
    drop(s);
    let e = w.next_on(&serial_name);
    assert!(
        e["event"] == "card.removed" || e["event"] == "reader.removed",
        "{e}"
    );
}

/// `sscard ARGS` with `stdin` on its standard input.
fn sscard_in(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut c = Command::new(bin_path("sscard"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sscard");
    if let Some(mut i) = c.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    let o = c.wait_with_output().expect("sscard");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn pin_verify_change_and_the_offices_reload() {
    let v = Vcard::start(&[]);
    let r = v.reader();
    let pin = |sub: &str, input: &str, extra: &[&str]| {
        let mut args = vec!["pin", sub, "--reader", r, "--pin-stdin"];
        args.extend_from_slice(extra);
        sscard_in(&args, input)
    };
    let (code, out, err) = pin("verify", "123456\n", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PIN verified"), "{out}");
    let (code, _, err) = pin("verify", "999999\n", &[]);
    assert_eq!(code, 4, "a wrong PIN is a security failure: {err}");
    assert!(err.contains("2 tries left"), "{err}");
    // PINs never come from the command line, and a PIN that is no PIN is refused
    let (code, _, _) = sscard(&["pin", "verify", "--reader", r, "123456"]);
    assert_eq!(code, 2);
    let (code, _, err) = pin("verify", "12ab\n", &[]);
    assert_eq!(code, 2);
    assert!(!err.contains("12ab"), "{err}");
    // change: current, new, new again; then the new one works
    let (code, _, err) = pin("change", "123456\n2468\n2469\n", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("differ"), "{err}");
    let (code, out, err) = pin("change", "123456\n2468\n2468\n", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PIN changed"));
    assert_eq!(pin("verify", "2468\n", &[]).0, 0);
    // blocked by three wrong tries, then reloaded by the office with the PIN key
    for _ in 0..3 {
        pin("verify", "0000\n", &[]);
    }
    let (code, _, err) = pin("verify", "2468\n", &[]);
    assert_eq!(code, 4);
    assert!(err.contains("blocked"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("office.db");
    let office = [
        "--journal",
        journal.to_str().unwrap(),
        "--operator",
        "clerk7",
    ];
    let (code, _, err) = pin("reload", "8642\n8642\n", &office);
    assert_eq!(code, 2, "no keys: {err}");
    let mut with_keys = office.to_vec();
    with_keys.push("--test-keys");
    let (code, out, err) = pin("reload", "8642\n8642\n", &with_keys);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PIN reloaded"), "{out}");
    let (code, out, _) = pin("verify", "8642\n", &[]);
    assert_eq!(code, 0, "{out}");
    // the reload is in the office journal, with its operator, and the chain verifies
    let db = rusqlite::Connection::open(&journal).unwrap();
    let (who, what, outcome): (String, String, String) = db
        .query_row(
            "SELECT operator, command, outcome FROM office_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (who.as_str(), what.as_str(), outcome.as_str()),
        ("clerk7", "pin.reload", "completed")
    );
    let (code, out, err) = sscard(&["audit", "verify", "--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("office journal"), "{out}");
}

#[test]
fn completions_and_the_manual_page_come_from_the_same_definitions() {
    let (code, out, _) = sscard(&["completions", "bash"]);
    assert_eq!(code, 0);
    for sub in ["readers", "watch", "apdu", "script", "info", "pin"] {
        assert!(out.contains(sub), "bash completion lacks {sub}");
    }
    let (code, out, _) = sscard(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("#compdef sscard"),
        "{}",
        &out[..out.len().min(200)]
    );
    let (code, out, _) = sscard(&["man"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(".TH sscard 1"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(
        out.contains("sscard\\-watch") || out.contains("watch"),
        "the subcommands are listed"
    );
    assert_eq!(sscard(&["completions", "tcsh"]).0, 2);
}

#[test]
fn card_commands_through_a_serial_reader() {
    use sscard_firmware_tests::testbed::SerialVcard;
    let v = SerialVcard::start("GemPCTwin", &[]);
    let spec = format!("{}:GemPCTwin", v.pty.display());
    let (code, out, err) = sscard(&["--json", "read", "--serial", &spec]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["name"], "张三");
    let (code, out, err) = sscard(&["atr", "--serial", &spec]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SSC-AES"), "{out}");
    let (code, out, err) = sscard(&["--json", "info", "--serial", &spec, "--test-keys"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["genuine"], true, "{j}");
    let (code, out, err) = sscard_in(
        &["pin", "verify", "--serial", &spec, "--pin-stdin"],
        "123456\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PIN verified"), "{out}");
    // the card pulled out: exit 3, and what to do
    v.signal("USR1");
    let (code, _, err) = sscard(&["read", "--serial", &spec]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("insert a card"), "{err}");
}
