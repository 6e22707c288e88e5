//! The project's own serial backend (`sscard_driver::transport::serial`) against the
//! emulated serial reader on a real pseudo-terminal (`sscard-vcard --serial-reader`):
//! the card's records read and a purchase made through [`SerialReader`], for the
//! GemPC Twin (echo) and the GemCore POS Pro (five slots, no echo); a card pulled and
//! put back; the reader unplugged and plugged in again. No pcscd needed.

use chrono::NaiveDate;
use sscard_driver::app::{self, Pin};
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::serial::model::Model;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{CardTransport, Transaction, TransportError};
use sscard_driver::CommandApdu;
use sscard_emulator::psam::PSAM_AID;
use sscard_firmware_tests::clearing::purchase_tac;
use sscard_firmware_tests::testbed::bin_path;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `sscard-vcard --serial-reader` process; killed on drop.
struct SerialVcard {
    child: Child,
    pty: PathBuf,
}

impl SerialVcard {
    fn start(model: Model, args: &[&str]) -> SerialVcard {
        let mut child = Command::new(bin_path("sscard-vcard"))
            .args(["--serial-reader", "--t0", "--model", model.name()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sscard-vcard");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let first = lines
            .next()
            .expect("a first line")
            .expect("stdout readable");
        let pty = PathBuf::from(
            first
                .strip_prefix("pty: ")
                .unwrap_or_else(|| panic!("first line {first:?}")),
        );
        // keep the pipe drained, whatever it prints later
        std::thread::spawn(move || lines.for_each(drop));
        SerialVcard { child, pty }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for SerialVcard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn when() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 23)
        .unwrap()
        .and_hms_opt(10, 15, 0)
        .unwrap()
}

fn pharmacy() -> SoftwareKeys {
    SoftwareKeys::test_keys(
        "650200".parse().unwrap(),
        "650200000001".parse().unwrap(),
        &[KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase],
    )
}

fn read_and_pay(card: &mut dyn CardTransport) {
    let mut keys = pharmacy();
    let mut tx = Transaction::begin(card).unwrap();
    let rec = app::read_card(&mut tx).unwrap();
    assert_eq!(rec.name, "张三");
    assert_eq!(rec.card_number, "A65020001");
    assert!(!rec.blocked);
    assert!(
        app::internal_authenticate(&mut tx, &mut keys, &rec.card_id).unwrap(),
        "genuine card"
    );
    app::external_authenticate(&mut tx, &mut keys, &rec.card_id).unwrap();
    app::verify_pin(&mut tx, &Pin::new("123456").unwrap()).unwrap();
    let before = app::balance(&mut tx).unwrap();
    let p = app::initialize_purchase(&mut tx, &mut keys, &rec.card_id, 1234, when()).unwrap();
    let proof = p.debit(&mut tx, &mut keys).unwrap();
    assert_eq!(proof.balance_after, before - 1234);
    assert_eq!(app::balance(&mut tx).unwrap(), before - 1234);
    assert_eq!(
        proof.tac,
        purchase_tac(rec.card_id, keys.terminal_id(), &proof, when())
    );
}

fn read_and_pay_on(model: Model) {
    let v = SerialVcard::start(model, &[]);
    let reader = SerialReader::open(&v.pty.to_string_lossy(), model).unwrap();
    assert!(
        reader.firmware().contains("emulated"),
        "{}",
        reader.firmware()
    );
    assert_eq!(reader.slots(), model.slots());
    let mut card = reader.connect(0).unwrap();
    let st = card.status().unwrap();
    assert!(st.present);
    assert_eq!(st.atr[0], 0x3B);
    read_and_pay(&mut card);
}

#[test]
fn read_and_pay_on_a_gempc_twin() {
    read_and_pay_on(Model::GemPcTwin);
}

#[test]
fn read_and_pay_on_a_gemcore_pos_pro() {
    read_and_pay_on(Model::GemCorePosPro);
}

#[test]
fn the_psam_slot_answers_while_the_card_is_in_a_transaction() {
    let v = SerialVcard::start(Model::GemCorePosPro, &["--with-psam"]);
    let reader = SerialReader::open(&v.pty.to_string_lossy(), Model::GemCorePosPro).unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut sam = reader.connect(1).unwrap();
    assert_ne!(card.status().unwrap().atr, sam.status().unwrap().atr);
    let mut tx = Transaction::begin(&mut card).unwrap();
    let rec = app::read_card(&mut tx).unwrap();
    // the PSAM's application selected and its terminal id read (a case 2 command)
    // while the card's transaction is open
    let mut stx = Transaction::begin(&mut sam).unwrap();
    stx.transmit_ok(
        &CommandApdu::new(0, 0xA4, 4, 0)
            .with_data(PSAM_AID.to_vec())
            .unwrap(),
    )
    .unwrap();
    let tid = stx
        .transmit_ok(&CommandApdu::new(0, 0xB0, 0x96, 0).with_le(6).unwrap())
        .unwrap();
    assert_eq!(hex::encode(tid), "650200000001");
    drop(stx);
    assert_eq!(
        app::read_card(&mut tx).unwrap().card_number,
        rec.card_number
    );
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_card_pulled_and_put_back_is_a_new_presentation() {
    let v = SerialVcard::start(Model::GemPcTwin, &[]);
    let reader = SerialReader::open(&v.pty.to_string_lossy(), Model::GemPcTwin).unwrap();
    let mut card = reader.connect(0).unwrap();
    assert!(!card.begin().unwrap().new_presentation());
    v.signal("USR1");
    wait_for("the card out", || {
        (!card.status().unwrap().present).then_some(())
    });
    assert!(matches!(card.begin().err(), Some(TransportError::NoCard)));
    v.signal("USR2");
    wait_for("the card back", || {
        card.begin().ok().map(|t| assert!(t.new_presentation()))
    });
    read_and_pay(&mut card);
}

fn wait_path(p: &Path) {
    wait_for("the pty link", || p.exists().then_some(()));
}

#[test]
fn unplugged_and_plugged_in_again_behind_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyGEM");
    let link_s = link.to_string_lossy().to_string();
    let v = SerialVcard::start(Model::GemCorePosPro, &["--link", &link_s]);
    wait_path(&link);
    let reader = SerialReader::open(&link_s, Model::GemCorePosPro).unwrap();
    let mut card = reader.connect(0).unwrap();
    read_and_pay(&mut card);
    // unplug: the reader's side of the pty goes away
    drop(v);
    let e = card.status().unwrap_err();
    assert!(
        matches!(e, TransportError::Io(_) | TransportError::NoReader(_)),
        "{e}"
    );
    std::fs::remove_file(&link).ok();
    assert!(matches!(card.status(), Err(TransportError::NoReader(_))));
    // plugged in again: a new pty behind the same path
    let _v = SerialVcard::start(Model::GemCorePosPro, &["--link", &link_s]);
    wait_path(&link);
    let t = card.begin().unwrap();
    assert!(t.new_presentation());
    drop(t);
    read_and_pay(&mut card);
}

#[test]
fn a_mute_card_is_a_timeout_with_the_outcome_unknown() {
    let v = SerialVcard::start(Model::GemPcTwin, &["--mute"]);
    let reader = SerialReader::open(&v.pty.to_string_lossy(), Model::GemPcTwin).unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let e = app::read_card(&mut tx).unwrap_err();
    let e = match e {
        app::AppError::Transport(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(matches!(e, TransportError::Timeout(_)), "{e}");
    assert!(e.outcome_unknown());
}
