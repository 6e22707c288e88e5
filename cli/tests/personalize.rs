//! `sscard personalize` as an issuing office runs it: a day's batch from CSV, killed
//! half-way and run again, issues every card exactly once; one card from flags with
//! its PIN from standard input; records checked before any card is touched. Through
//! the private pcscd with emulated blank cards (run under `scripts/with-pcscd`).

use sscard_firmware_tests::testbed::{bin_path, Vcard};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CSV: &str = "# the day's batch\n\
card_number,ssn,name,gender,nation,birthplace,birth_date,issue_date,expiry_date,insured_category,pooling_region,region,pin\n\
A65020201,650102199001011234,\"欧阳, 娜娜\",2,01,650102,1990-01-01,2026-12-04,2036-12-04,01,650200,650200,246810\n\
A65020202,650102198502021234,李四,1,01,650102,1985-02-02,2026-12-04,2036-12-04,02,650200,650200,135790\n";

fn sscard(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut c = Command::new(bin_path("sscard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sscard");
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn state(journal: &std::path::Path, card: &str) -> Option<(String, String)> {
    let db = rusqlite::Connection::open(journal).ok()?;
    db.query_row(
        "SELECT chip_serial, state FROM issuance WHERE card_number=?1",
        [card],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_batch_killed_half_way_resumes_without_issuing_a_card_twice() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("batch.csv");
    std::fs::write(&records, CSV).unwrap();
    let journal = dir.path().join("office.db");
    let report = dir.path().join("report.json");
    // a slow blank card (every answer 300 ms late), so that the kill lands mid-card
    let v = Vcard::start(&[
        "--blank",
        "--serial",
        "B1B2B3B4B5B6B7B8",
        "--delay-ms",
        "100",
    ]);
    let reader = v.reader().to_string();
    let args = vec![
        "--json".to_string(),
        "personalize".into(),
        "--records".into(),
        records.display().to_string(),
        "--journal".into(),
        journal.display().to_string(),
        "--operator".into(),
        "clerk3".into(),
        "--reader".into(),
        reader.clone(),
        "--test-keys".into(),
        "--wait".into(),
        "30".into(),
        "--report".into(),
        report.display().to_string(),
    ];
    let mut first = Command::new(bin_path("sscard"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first card started", || {
        state(&journal, "A65020201").is_some_and(|(_, s)| s == "started")
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        state(&journal, "A65020201").map(|(_, s)| s).as_deref(),
        Some("started"),
        "killed part-way"
    );
    // run again: the first card is resumed on the same chip, then the clerk swaps cards
    let second = Command::new(bin_path("sscard"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first card issued", || {
        state(&journal, "A65020201").is_some_and(|(_, s)| s == "issued")
    });
    let lease = v.into_lease();
    let v2 = Vcard::start_in(lease, &["--blank", "--serial", "C1C2C3C4C5C6C7C8"]);
    let o = second.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["outcome"], "issued");
    assert_eq!(lines[0]["card_id"], "650200D156000005B1B2B3B4B5B6B7B8");
    assert_eq!(lines[1]["outcome"], "issued");
    assert_eq!(lines[1]["card_id"], "650200D156000005C1C2C3C4C5C6C7C8");
    assert_eq!(lines[2]["summary"]["issued"], 2);
    assert_eq!(lines[2]["summary"]["failed"], 0);
    // each card number bound to one chip, each issued once in the office journal
    assert_eq!(state(&journal, "A65020201").unwrap().0, "B1B2B3B4B5B6B7B8");
    assert_eq!(state(&journal, "A65020202").unwrap().0, "C1C2C3C4C5C6C7C8");
    let db = rusqlite::Connection::open(&journal).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM office_log WHERE command='personalize' AND outcome='issued' AND operator='clerk3'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["summary"]["records"], 2);
    assert_eq!(r["cards"].as_array().unwrap().len(), 2);
    // the holder's name, with its comma and in Chinese, is on the card
    let (code, out, err) = sscard(&["--json", "read", "--reader", &reader], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("李四"), "{out}");
    // a third run touches no card: both already issued
    let (code, out, _) = sscard(&args.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("\"outcome\":\"already_issued\"").count(),
        2,
        "{out}"
    );
    let (code, out, err) = sscard(
        &["audit", "verify", "--journal", journal.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    drop(v2);
}

#[test]
fn one_card_from_flags_and_records_checked_before_any_card() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("office.db");
    let j = journal.to_str().unwrap();
    // a bad row is named (file, line, field) and no card is needed to find it
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        CSV.replace("1985-02-02", "1985-02-30")
            .replace("135790", "13579x"),
    )
    .unwrap();
    let (code, _, err) = sscard(
        &[
            "personalize",
            "--records",
            bad.to_str().unwrap(),
            "--journal",
            j,
            "--test-keys",
            "--reader",
            "none",
        ],
        "",
    );
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("line 4") && err.contains("birth_date"),
        "{err}"
    );
    assert!(!err.contains("13579x"), "no PIN in errors: {err}");
    let v = Vcard::start(&["--blank", "--serial", "D1D2D3D4D5D6D7D8"]);
    let one = [
        "--json",
        "personalize",
        "--card-number",
        "A65020301",
        "--ssn",
        "650102200001011234",
        "--name",
        "王五",
        "--gender",
        "1",
        "--birth-date",
        "2000-01-01",
        "--region",
        "650200",
        "--insured-category",
        "02",
        "--pin-stdin",
        "--journal",
        j,
        "--reader",
        v.reader(),
        "--test-keys",
        "--wait",
        "10",
    ];
    // the PIN never comes from the command line: a short one from stdin is refused
    let (code, _, _) = sscard(&one, "12\n");
    assert_eq!(code, 2);
    let (code, out, err) = sscard(&one, "975310\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"outcome\":\"issued\""), "{out}");
    let (code, out, _) = sscard(&["--json", "read", "--reader", v.reader()], "");
    assert_eq!(code, 0);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["name"], "王五");
    assert_eq!(r["insured_category"], "02");
    // the default expiry: ten years after today's issue
    let issue = chrono::Local::now().date_naive();
    let expiry = issue.checked_add_months(chrono::Months::new(120)).unwrap();
    assert_eq!(r["expiry_date"], expiry.to_string(), "{r}");
    let (code, _, err) = sscard(
        &["pin", "verify", "--reader", v.reader(), "--pin-stdin"],
        "975310\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_reader_held_by_a_running_sscardd_is_named_with_what_to_do() {
    use std::io::BufRead;
    // every vpcd slot held: the daemon takes up every reader it sees
    let mut slots = sscard_firmware_tests::testbed::SlotLease::acquire_all();
    let v = Vcard::start_in(slots.remove(0), &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Command::new(bin_path("sscardd"))
        .env("SSCARD_LOG", "warn")
        .arg("--dev")
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--journal")
        .arg(dir.path().join("journal.db"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("socket: "), "{line}");
    let journal = dir.path().join("office.db");
    let args = [
        "personalize",
        "--card-number",
        "A65020401",
        "--ssn",
        "650102200001011234",
        "--name",
        "王五",
        "--gender",
        "1",
        "--birth-date",
        "2000-01-01",
        "--region",
        "650200",
        "--insured-category",
        "02",
        "--pin-stdin",
        "--journal",
        journal.to_str().unwrap(),
        "--reader",
        v.reader(),
        "--test-keys",
        "--wait",
        "1",
    ];
    // the daemon takes the card up once it has seen it; until then the reader is free
    // (and the issued card refused as not blank)
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        let (code, _, err) = sscard(&args, "975310\n");
        if code == 3 && err.contains("sscardd") {
            break err;
        }
        assert!(Instant::now() < deadline, "never held: {code} {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(err.contains("held by a running sscardd (pid"), "{err}");
    assert!(err.contains("systemctl stop sscardd"), "{err}");
    assert!(err.contains("go through its socket"), "{err}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}
