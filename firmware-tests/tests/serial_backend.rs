//! The project's own serial backend (`sscard_driver::transport::serial`) against the
//! emulated serial reader on a real pseudo-terminal (`sscard-vcard --serial-reader`):
//! the card's records read and a purchase made through [`SerialReader`], for the
//! GemPC Twin (echo) and the GemCore POS Pro (five slots, no echo); a card pulled and
//! put back; the reader unplugged and plugged in again; and, through a relay that
//! damages the line (bad LRCs, frames cut short, garbage, commands the reader NAKs,
//! answers held back with or without T=0 time requests), purchases that still go
//! through and silences that time out. No pcscd needed.

use chrono::NaiveDate;
use sscard_driver::app::{self, Pin};
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::serial::link::Timing;
use sscard_driver::transport::serial::model::Model;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{CardTransport, Transaction, TransportError};
use sscard_driver::CommandApdu;
use sscard_emulator::psam::PSAM_AID;
use sscard_firmware_tests::clearing::purchase_tac;
use sscard_firmware_tests::testbed::SerialVcard;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    let v = SerialVcard::start(model.name(), &[]);
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
    let v = SerialVcard::start(Model::GemCorePosPro.name(), &["--with-psam"]);
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
    let v = SerialVcard::start(Model::GemPcTwin.name(), &[]);
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
    let v = SerialVcard::start(Model::GemCorePosPro.name(), &["--link", &link_s]);
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
    let _v = SerialVcard::start(Model::GemCorePosPro.name(), &["--link", &link_s]);
    wait_path(&link);
    let t = card.begin().unwrap();
    assert!(t.new_presentation());
    drop(t);
    read_and_pay(&mut card);
}

#[test]
fn a_mute_card_is_a_timeout_with_the_outcome_unknown() {
    let v = SerialVcard::start(Model::GemPcTwin.name(), &["--mute"]);
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

/// Faults a [`Relay`] puts on the line, each on every n-th chunk (0: never).
#[derive(Clone, Debug, Default)]
struct LineFaults {
    /// Flip the last byte (the LRC of the last frame) of a chunk from the reader.
    corrupt_reader: u32,
    /// Drop a byte from the middle of a chunk from the reader (a frame cut short).
    cut_reader: u32,
    /// Put garbage bytes before a chunk from the reader.
    garbage_reader: u32,
    /// Flip the LRC of a command frame from the host (the reader NAKs it).
    corrupt_host: u32,
    /// Hold every chunk from the reader this long, sending a T=0 time request every
    /// `te_every` meanwhile (`None`: no time requests).
    hold: Duration,
    te_every: Option<Duration>,
}

/// A man in the middle between the backend and the emulated reader: a pty of its own
/// for the backend, the emulator's pty opened as a serial port, bytes relayed both
/// ways with [`LineFaults`] applied.
struct Relay {
    path: PathBuf,
    faults: std::sync::Arc<std::sync::Mutex<LineFaults>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(reader_pty: &Path, faults: LineFaults) -> Relay {
        use sscard_driver::transport::serial::port::{Port, ReadOutcome, SerialPortIo};
        use std::sync::atomic::Ordering;
        let mut host = sscard_firmware_tests::serial_reader::Pty::open().expect("relay pty");
        let mut reader = SerialPortIo::open(&reader_pty.to_string_lossy(), 115_200).unwrap();
        let path = host.path().to_path_buf();
        let faults = std::sync::Arc::new(std::sync::Mutex::new(faults));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, s) = (faults.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut from_reader, mut from_host) = (0u32, 0u32);
            let hit = |every: u32, n: u32| every > 0 && n.is_multiple_of(every);
            let mut buf = [0u8; 1024];
            while !s.load(Ordering::SeqCst) {
                let n = match host.read_timeout(&mut buf, Duration::from_millis(1)) {
                    Ok(n) => n,
                    Err(_) => return,
                };
                if n > 0 {
                    let mut chunk = buf[..n].to_vec();
                    let fl = f.lock().unwrap().clone();
                    if chunk.len() > 3 {
                        from_host += 1;
                        if hit(fl.corrupt_host, from_host) {
                            if let Some(b) = chunk.last_mut() {
                                *b ^= 0x01;
                            }
                        }
                    }
                    if reader.write_all(&chunk).is_err() {
                        return;
                    }
                }
                match reader.read_some(&mut buf, Duration::from_millis(1)) {
                    Ok(ReadOutcome::Data(n)) => {
                        let mut chunk = buf[..n].to_vec();
                        let fl = f.lock().unwrap().clone();
                        from_reader += 1;
                        if hit(fl.corrupt_reader, from_reader) {
                            if let Some(b) = chunk.last_mut() {
                                *b ^= 0x20;
                            }
                        } else if hit(fl.cut_reader, from_reader) && chunk.len() > 6 {
                            chunk.remove(chunk.len() / 2);
                        }
                        if hit(fl.garbage_reader, from_reader) {
                            let _ = host.write_all(&[0x00, 0x03, 0x07, 0x42, 0x03, 0x15, 0x99]);
                        }
                        if !fl.hold.is_zero() {
                            let until = Instant::now() + fl.hold;
                            while Instant::now() < until {
                                let step = fl.te_every.unwrap_or(fl.hold);
                                std::thread::sleep(step.min(until - Instant::now()));
                                if fl.te_every.is_some() && Instant::now() < until {
                                    let _ = host.write_all(&[0x80]);
                                }
                            }
                        }
                        if host.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                    Ok(ReadOutcome::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        Relay {
            path,
            faults,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, faults: LineFaults) {
        *self.faults.lock().unwrap() = faults;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn quick() -> Timing {
    Timing {
        // short enough for the tests of silence, long enough for a loaded machine
        answer: Duration::from_millis(1000),
        ..Timing::default()
    }
}

fn pay_through_faults(model: Model, faults: LineFaults) {
    let v = SerialVcard::start(model.name(), &[]);
    let relay = Relay::start(&v.pty, LineFaults::default());
    let reader = SerialReader::open_with(&relay.path.to_string_lossy(), model, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    relay.set(faults);
    read_and_pay(&mut card);
}

#[test]
fn a_purchase_through_damaged_and_cut_frames_and_garbage() {
    for model in [Model::GemPcTwin, Model::GemCorePosPro] {
        pay_through_faults(
            model,
            LineFaults {
                corrupt_reader: 5,
                cut_reader: 7,
                garbage_reader: 3,
                ..Default::default()
            },
        );
    }
}

#[test]
fn a_purchase_through_commands_the_reader_nakked() {
    for model in [Model::GemPcTwin, Model::GemCorePosPro] {
        pay_through_faults(
            model,
            LineFaults {
                corrupt_host: 4,
                ..Default::default()
            },
        );
    }
}

#[test]
fn time_requests_keep_a_slow_answer_alive_and_silence_times_out() {
    let v = SerialVcard::start(Model::GemPcTwin.name(), &[]);
    let relay = Relay::start(&v.pty, LineFaults::default());
    let reader =
        SerialReader::open_with(&relay.path.to_string_lossy(), Model::GemPcTwin, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    // every answer 2.5 s late (2.5 × the answer timeout), with a time request every
    // 300 ms
    relay.set(LineFaults {
        hold: Duration::from_millis(2500),
        te_every: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let mut tx = Transaction::begin(&mut card).unwrap();
    let read = CommandApdu::new(0, 0xB2, 1, 4).with_le(256).unwrap();
    let t = Instant::now();
    // any status word: what counts is that the answer came through the wait
    tx.transmit(&read).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    // the same delay without time requests
    relay.set(LineFaults {
        hold: Duration::from_millis(2500),
        ..Default::default()
    });
    let e = tx.transmit(&read).unwrap_err();
    assert!(
        matches!(e, TransportError::Timeout(_)) && e.outcome_unknown(),
        "{e}"
    );
    drop(tx);
    // the late answer is skipped; the link goes on
    relay.set(LineFaults::default());
    std::thread::sleep(Duration::from_millis(2000));
    read_and_pay(&mut card);
}
