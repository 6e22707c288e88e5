//! The `sscardd` binary through its real Unix socket, in `--simulate` mode (in-process
//! reader with the default test card): every method, roles and a disabled operator,
//! idempotency, bad input, the audit chain, SIGHUP reloads, SIGTERM, bad configuration.

mod common;

use common::kind;
use common::process::{operators_toml, LineClient as Client, Sscardd as Daemon};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

fn config_text(gone_enabled: bool) -> String {
    format!(
        "terminal_id = \"650200000001\"\nregion = \"650200\"\ntest_mode = true\n\
         [keys]\ntest = true\n\
         [limits]\nper_transaction_fen = 50000\nper_card_per_day_fen = 60000\n{}",
        operators_toml(gone_enabled)
    )
}

fn start() -> Daemon {
    Daemon::in_temp("--simulate", &config_text(false))
}

#[test]
fn sessions_roles_and_disabled_operators() {
    let d = start();
    let mut c = Client::new(&d);
    assert_eq!(c.call("system.health", json!({})).unwrap()["journal"], "ok");
    let e = c.call("card.read", json!({})).unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(4001), "UNAUTHENTICATED")
    );
    assert_eq!(
        kind(
            &c.call("session.login", json!({"token": "nope"}))
                .unwrap_err()
        ),
        "UNAUTHENTICATED"
    );
    let e = c
        .call("session.login", json!({"token": "tok-gone"}))
        .unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(4003), "OPERATOR_DISABLED")
    );
    let who = c
        .call("session.login", json!({"token": "tok-cashier"}))
        .unwrap();
    assert_eq!(who, json!({"operator": "cashier", "role": "cashier"}));
    assert_eq!(
        kind(
            &c.call("settle.day", json!({"date": "2026-11-23"}))
                .unwrap_err()
        ),
        "FORBIDDEN"
    );
    assert_eq!(
        kind(&c.call("audit.query", json!({})).unwrap_err()),
        "FORBIDDEN"
    );
    assert_eq!(
        kind(
            &c.call("pay.refund", json!({"order_id": "x", "pin": "123456"}))
                .unwrap_err()
        ),
        "FORBIDDEN"
    );
    let mut a = Client::login(&d, "audit");
    assert_eq!(
        kind(&a.call("card.read", json!({})).unwrap_err()),
        "FORBIDDEN"
    );
    assert!(a.call("audit.query", json!({})).is_ok());
    let mut ad = Client::login(&d, "admin");
    assert_eq!(
        kind(
            &ad.call(
                "pay.debit",
                json!({"order_id": "o", "amount_fen": 1, "pin": "123456"})
            )
            .unwrap_err()
        ),
        "FORBIDDEN"
    );
    let mut s = Client::login(&d, "super");
    let e = s
        .call("pay.refund", json!({"order_id": "x", "pin": "123456"}))
        .unwrap_err();
    assert_eq!(
        e["code"], -32602,
        "a supervisor may; there is no such order"
    );
    assert!(e["message"].as_str().unwrap().starts_with("order_id"));
}

#[test]
fn card_methods_and_pin_errors() {
    let d = start();
    let mut c = Client::login(&d, "cashier");
    let list = c.call("reader.list", json!({})).unwrap();
    assert_eq!(list[0]["backend"], "sim");
    assert_eq!(list[0]["card_present"], true);
    let card = c.call("card.read", json!({})).unwrap();
    assert_eq!(card["name"], "张三");
    assert_eq!(card["card_id"], "650200D1560000050011223344556677");
    assert_eq!(card["genuine"], true);
    assert_eq!(card["expiry_date"], "2036-01-01");
    assert_eq!(
        c.call("card.balance", json!({})).unwrap()["balance_fen"],
        100000
    );
    let e = c
        .call("card.verify_pin", json!({"pin": "000000"}))
        .unwrap_err();
    assert_eq!(
        (kind(&e), e["data"]["tries_left"].as_i64()),
        ("PIN_WRONG", Some(2))
    );
    assert_eq!(
        c.call("card.verify_pin", json!({"pin": "123456"})).unwrap(),
        json!({"verified": true})
    );
    assert_eq!(
        c.call(
            "card.change_pin",
            json!({"old_pin": "123456", "new_pin": "654321"})
        )
        .unwrap(),
        json!({"changed": true})
    );
    assert!(c.call("card.verify_pin", json!({"pin": "654321"})).is_ok());
    let e = c.call("card.read", json!({"reader": "nope"})).unwrap_err();
    assert_eq!(kind(&e), "NO_READER");
    let e = c
        .call("card.verify_pin", json!({"pin": 123456}))
        .unwrap_err();
    assert_eq!(e["code"], -32602);
    assert!(e["message"].as_str().unwrap().contains("pin"));
}

#[test]
fn debit_idempotency_limits_and_settlement() {
    let d = start();
    let mut c = Client::login(&d, "cashier");
    let p = c
        .call(
            "pay.debit",
            json!({"order_id": "A-1", "amount_fen": 1234, "pin": "123456"}),
        )
        .unwrap();
    assert_eq!(p["status"], "completed");
    assert_eq!(
        (
            p["balance_before_fen"].as_i64(),
            p["balance_after_fen"].as_i64()
        ),
        (Some(100000), Some(98766))
    );
    assert_eq!(p["tac"].as_str().unwrap().len(), 8);
    // the same order again: the recorded payment, nothing debited
    let again = c
        .call(
            "pay.debit",
            json!({"order_id": "A-1", "amount_fen": 1234, "pin": "123456"}),
        )
        .unwrap();
    assert_eq!(again, p);
    assert_eq!(
        c.call("card.balance", json!({})).unwrap()["balance_fen"],
        98766
    );
    let e = c
        .call(
            "pay.debit",
            json!({"order_id": "A-1", "amount_fen": 999, "pin": "123456"}),
        )
        .unwrap_err();
    assert_eq!(
        (e["code"].as_i64(), kind(&e)),
        (Some(3003), "DUPLICATE_ORDER")
    );
    assert_eq!(c.call("pay.query", json!({"order_id": "A-1"})).unwrap(), p);
    // limits: per transaction 50000, per card per day 60000
    let e = c
        .call(
            "pay.debit",
            json!({"order_id": "A-2", "amount_fen": 50001, "pin": "123456"}),
        )
        .unwrap_err();
    assert_eq!(kind(&e), "LIMIT_EXCEEDED");
    c.call(
        "pay.debit",
        json!({"order_id": "A-3", "amount_fen": 50000, "pin": "123456"}),
    )
    .unwrap();
    let e = c
        .call(
            "pay.debit",
            json!({"order_id": "A-4", "amount_fen": 9000, "pin": "123456"}),
        )
        .unwrap_err();
    assert_eq!(kind(&e), "LIMIT_EXCEEDED", "1234 + 50000 + 9000 > 60000");
    let e = c
        .call(
            "pay.debit",
            json!({"order_id": "A-5", "amount_fen": 10, "pin": "999999"}),
        )
        .unwrap_err();
    assert_eq!(kind(&e), "PIN_WRONG");
    let e = c
        .call(
            "pay.debit",
            json!({"order_id": "A-6", "amount_fen": 0, "pin": "123456"}),
        )
        .unwrap_err();
    assert_eq!(e["code"], -32602);
    let mut s = Client::login(&d, "super");
    let day = chrono::Local::now().date_naive().to_string();
    let sum = s.call("settle.day", json!({"date": day})).unwrap();
    assert_eq!(
        (sum["count"].as_i64(), sum["total_fen"].as_i64()),
        (Some(2), Some(51234))
    );
    // the failed attempts (PIN) were never journaled as payments
    assert_eq!(sum["transactions"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_never_disturbs_other_clients() {
    let d = start();
    let mut c = Client::login(&d, "cashier");
    let e = c.raw(b"{not json\n");
    assert_eq!(e["error"]["code"], -32700);
    let e = c.raw(b"\xff\xfe\n");
    assert_eq!(e["error"]["code"], -32700);
    let e = c.raw(b"[1,2]\n");
    assert_eq!(e["error"]["code"], -32600);
    let e = c.raw(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"card.read\",\"params\":[1]}\n");
    assert_eq!(e["error"]["code"], -32602);
    let e = c.raw(b"{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"no.such\"}\n");
    assert_eq!(e["error"]["code"], -32601);
    let e = c.raw(b"{\"id\":11,\"method\":\"system.health\"}\n");
    assert_eq!(
        (e["id"].as_i64(), e["error"]["code"].as_i64()),
        (Some(11), Some(-32600))
    );
    let e = c.raw(b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"system.health\"}\n");
    assert_eq!(e["error"]["code"], -32600);
    let e = c.raw(
        b"{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"card.balance\",\"params\":{\"amount\":1}}\n",
    );
    assert_eq!(e["error"]["code"], -32602);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("amount"));
    // a notification (no id) gets no answer: the next line answers the next call
    c.s.get_mut()
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"system.health\"}\n")
        .unwrap();
    assert!(c.call("system.health", json!({})).is_ok());
    // a line over 64 KiB: an error, and the connection goes on
    let mut huge = vec![b'x'; 70 * 1024];
    huge.push(b'\n');
    let e = c.raw(&huge);
    assert_eq!(e["error"]["code"], -32600);
    assert!(c.call("card.balance", json!({})).is_ok());
    // a client that sends half a line and stalls, another that leaves mid-call
    let mut staller = UnixStream::connect(&d.socket).unwrap();
    staller
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth")
        .unwrap();
    {
        let mut leaver = UnixStream::connect(&d.socket).unwrap();
        leaver
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"session.login\",\"params\":{\"token\":\"tok-cashier\"}}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"card.read\"}\n")
            .unwrap();
    }
    let mut other = Client::login(&d, "cashier");
    assert_eq!(
        other.call("card.read", json!({})).unwrap()["card_number"],
        "A65020001"
    );
    assert!(c.call("system.health", json!({})).is_ok());
    let mut buf = [0u8; 1];
    staller
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(staller.read(&mut buf).is_err(), "no answer to half a line");
}

#[test]
fn audit_log_is_chained_and_tamper_is_found() {
    let d = start();
    let mut c = Client::login(&d, "cashier");
    c.call("card.read", json!({})).unwrap();
    c.call(
        "pay.debit",
        json!({"order_id": "T-1", "amount_fen": 100, "pin": "123456"}),
    )
    .unwrap();
    let _ = c.call("card.verify_pin", json!({"pin": "000000"}));
    let mut a = Client::login(&d, "audit");
    let log = a
        .call("audit.query", json!({"operator": "cashier"}))
        .unwrap();
    let log = log.as_array().unwrap();
    assert!(log.len() >= 3, "{log:?}");
    assert!(log
        .iter()
        .any(|e| e["method"] == "pay.debit" && e["card_number"] == "A65020001"));
    // no PIN in the log
    assert!(!serde_json::to_string(log).unwrap().contains("123456"));
    let db = d.dir.join("journal.db");
    let all = a.call("audit.query", json!({})).unwrap();
    // the query's own entry is written after it answered
    assert_eq!(
        sscard_daemon::journal::verify_chain(&db).unwrap(),
        all.as_array().unwrap().len() + 1
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE audit SET outcome='tampered' WHERE seq=2", [])
        .unwrap();
    assert_eq!(
        sscard_daemon::journal::verify_chain(&db).unwrap_err(),
        sscard_daemon::journal::Tamper::Changed { seq: 2 }
    );
    let conn2 = rusqlite::Connection::open(&db).unwrap();
    conn2.execute("DELETE FROM audit WHERE seq=2", []).unwrap();
    assert!(matches!(
        sscard_daemon::journal::verify_chain(&db).unwrap_err(),
        sscard_daemon::journal::Tamper::Deleted { seq: 3, .. }
    ));
}

#[test]
fn sighup_reload_stops_a_disabled_operator_at_once() {
    let d = start();
    let mut c = Client::login(&d, "cashier");
    assert!(c.call("card.balance", json!({})).is_ok());
    let conf = d.dir.join("sscardd.toml");
    // disable the cashier, enable "gone"
    let text = config_text(true).replacen(
        "role = \"cashier\"\n",
        "role = \"cashier\"\nenabled = false\n",
        1,
    );
    std::fs::write(&conf, text).unwrap();
    d.signal("-HUP");
    // the reload ends the disabled operator's open session at once, without a call
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the reload closed the disabled operator's connection"
    );
    let mut again = Client::new(&d);
    let e = again
        .call("session.login", json!({"token": "tok-cashier"}))
        .unwrap_err();
    assert_eq!(kind(&e), "OPERATOR_DISABLED");
    let mut g = Client::new(&d);
    g.call("session.login", json!({"token": "tok-gone"}))
        .unwrap();
    // a broken file is refused and the configuration in force stays
    std::fs::write(&conf, "terminal_id = 12\n").unwrap();
    d.signal("-HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(g.call("card.balance", json!({})).is_ok());
}

#[test]
fn sigterm_stops_cleanly() {
    let mut d = start();
    let mut c = Client::login(&d, "cashier");
    c.call(
        "pay.debit",
        json!({"order_id": "Z-1", "amount_fen": 10, "pin": "123456"}),
    )
    .unwrap();
    d.signal("-TERM");
    let st = d.child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!d.socket.exists(), "the socket file is removed");
    let db = d.dir.join("journal.db");
    assert!(sscard_daemon::journal::verify_chain(&db).unwrap() >= 2);
}

#[test]
fn bad_configuration_is_refused_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.toml");
    std::fs::write(
        &conf,
        "terminal_id = \"650200000001\"\nregion = \"650200\"\n[limits]\nper_transaction_fen = -5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sscardd"))
        .env("SSCARD_LOG", "warn")
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 4, key limits.per_transaction_fen"),
        "{err}"
    );
    std::fs::write(
        &conf,
        "terminal_id = \"650200000001\"\nregion = \"650200\"\ntcp = \"192.168.1.5:80\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sscardd"))
        .env("SSCARD_LOG", "warn")
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn simulate_alone_serves_a_demo_supervisor() {
    let d = Daemon::bare("--simulate");
    let token = d.token.clone().expect("a demo token");
    let mut c = Client::new(&d);
    assert_eq!(
        c.call("session.login", json!({"token": token})).unwrap(),
        json!({"operator": "demo", "role": "supervisor"})
    );
    let h = c.call("system.health", json!({})).unwrap();
    assert_eq!(
        (h["readers"].as_i64(), h["keys"].as_str()),
        (Some(1), Some("test"))
    );
    let p = c
        .call(
            "pay.debit",
            json!({"order_id": "D-1", "amount_fen": 1850, "pin": "123456"}),
        )
        .unwrap();
    assert_eq!(p["status"], "completed");
    let r = c
        .call("pay.refund", json!({"order_id": "D-1", "pin": "123456"}))
        .unwrap();
    assert_eq!(
        (r["kind"].as_str(), r["amount_fen"].as_i64()),
        (Some("refund"), Some(1850))
    );
}
