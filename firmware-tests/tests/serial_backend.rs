//! The project's own serial backend (`sscard_driver::transport::serial`) against the
//! emulated serial reader on a real pseudo-terminal (`sscard-vcard --serial-reader`, or
//! [`Served`] in this process where a test changes the reader's faults as it goes): the
//! card's records read and a purchase made through [`SerialReader`], for the GemPC Twin
//! (echo) and the GemCore POS Pro (five slots, no echo); a card pulled and put back;
//! the reader unplugged and plugged in again behind its link, also while a purchase is
//! in flight; and, through the emulator's fault knobs (bad LRCs, frames cut short,
//! commands the reader NAKs, echo against the model, answers held back with or without
//! T=0 time requests, the card pulled mid-DEBIT) and a relay for garbage between
//! frames, purchases that still go through and silences that time out; and PIN entry
//! on the GemPC PinPad's keypad (`PC_to_RDR_Secure`) for T=0 and T=1 cards. No pcscd
//! needed.

use chrono::NaiveDate;
use sscard_driver::app::{self, Pin};
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::transport::serial::link::Timing;
use sscard_driver::transport::serial::model::Model;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{CardTransport, Protocol, Transaction, TransportError};
use sscard_driver::CommandApdu;
use sscard_emulator::psam::PSAM_AID;
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::clearing::purchase_tac;
use sscard_firmware_tests::serial_reader::{
    Faults, Hit, Model as EmuModel, OnXfr, ReaderOptions, SerialReader as EmuReader, Served, T1Wtx,
    TimeRequests,
};
use sscard_firmware_tests::testbed::SerialVcard;
use sscard_firmware_tests::{Reply, VirtualCard};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn when() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 23)
        .unwrap()
        .and_hms_opt(10, 15, 0)
        .unwrap()
}

fn pharmacy() -> SoftwareKeys {
    sscard_firmware_tests::testbed::pharmacy_keys()
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

/// `--unplug-on-xfr`: the reader goes away on the first XfrBlock of a transaction
/// (the link with it) and comes back 500 ms later behind the same link, with the same
/// card in it, unpowered.
#[test]
fn unplugged_and_plugged_in_again_behind_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyGEM");
    let link_s = link.to_string_lossy().to_string();
    let _v = SerialVcard::start(
        Model::GemCorePosPro.name(),
        &["--link", &link_s, "--unplug-on-xfr", "1:500"],
    );
    wait_path(&link);
    let reader = SerialReader::open(&link_s, Model::GemCorePosPro).unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let e = match app::read_card(&mut tx).unwrap_err() {
        app::AppError::Transport(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(e, TransportError::Io(_) | TransportError::NoReader(_)),
        "{e}"
    );
    drop(tx);
    // the link goes before the pty: while it is away the reader is not there
    assert!(matches!(card.status(), Err(TransportError::NoReader(_))));
    // plugged in again: a new pty behind the same path
    wait_path(&link);
    let fresh = wait_for("the reader back", || {
        card.begin().ok().map(|t| t.new_presentation())
    });
    assert!(fresh);
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

/// A man in the middle between the backend and the emulated reader, for what the
/// emulator's fault knobs cannot do: garbage between the reader's frames. A pty of its
/// own for the backend, the emulator's pty opened as a serial port, bytes relayed both
/// ways, seven bytes of garbage (`00 03 07 42 03 15 99`: a SYNC, a bad CTRL, a NAK with
/// a wrong LRC) put before every `garbage_every`-th chunk from the reader.
struct Relay {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(reader_pty: &Path, garbage_every: u32) -> Relay {
        use sscard_driver::transport::serial::port::{Port, ReadOutcome, SerialPortIo};
        use std::sync::atomic::Ordering;
        let mut host = sscard_firmware_tests::serial_reader::Pty::open().expect("relay pty");
        let mut reader = SerialPortIo::open(&reader_pty.to_string_lossy(), 115_200).unwrap();
        let path = host.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut from_reader = 0u32;
            let mut buf = [0u8; 1024];
            while !s.load(Ordering::SeqCst) {
                let n = match host.read_timeout(&mut buf, Duration::from_millis(1)) {
                    Ok(n) => n,
                    Err(_) => return,
                };
                if n > 0 && reader.write_all(&buf[..n]).is_err() {
                    return;
                }
                match reader.read_some(&mut buf, Duration::from_millis(1)) {
                    Ok(ReadOutcome::Data(n)) => {
                        from_reader += 1;
                        if from_reader.is_multiple_of(garbage_every) {
                            let _ = host.write_all(&[0x00, 0x03, 0x07, 0x42, 0x03, 0x15, 0x99]);
                        }
                        if host.write_all(&buf[..n]).is_err() {
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
            stop,
            thread: Some(thread),
        }
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

/// An emulator started with the fault flags `faults`, read and paid through.
fn pay_through_faults(model: Model, faults: &[&str]) {
    let v = SerialVcard::start(model.name(), faults);
    let reader = SerialReader::open_with(&v.pty.to_string_lossy(), model, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    read_and_pay(&mut card);
}

#[test]
fn a_purchase_through_damaged_and_cut_frames_and_garbage() {
    for model in [Model::GemPcTwin, Model::GemCorePosPro] {
        let v = SerialVcard::start(
            model.name(),
            &["--corrupt", "every:5", "--drop-byte", "every:7"],
        );
        let relay = Relay::start(&v.pty, 3);
        let reader =
            SerialReader::open_with(&relay.path.to_string_lossy(), model, quick()).unwrap();
        let mut card = reader.connect(0).unwrap();
        read_and_pay(&mut card);
    }
}

#[test]
fn a_purchase_through_commands_the_reader_nakked() {
    for model in [Model::GemPcTwin, Model::GemCorePosPro] {
        pay_through_faults(model, &["--nak", "every:4"]);
    }
}

/// The backend does not depend on the echo its model has: a GemPC Twin that does not
/// echo, a GemCore POS Pro that does, with damaged answers on the way.
#[test]
fn a_purchase_with_the_echo_the_model_does_not_have() {
    pay_through_faults(Model::GemPcTwin, &["--echo", "off", "--corrupt", "every:6"]);
    pay_through_faults(
        Model::GemCorePosPro,
        &["--echo", "on", "--drop-byte", "every:6"],
    );
}

/// The card in a reader served in this process, with the faults changed as a test
/// goes.
fn served(model: Model, link: Option<PathBuf>) -> Served {
    let card = EmulatedCard::new(
        &Personalization::default_test_card(),
        Knobs {
            t0: true,
            ..Default::default()
        },
    )
    .unwrap();
    let opts = ReaderOptions::default();
    let m = EmuModel::parse(model.name()).unwrap();
    let r = EmuReader::new(m, vec![Some(Box::new(card))], opts).unwrap();
    Served::start(r, link).unwrap()
}

fn faults(f: impl FnOnce(&mut Faults)) -> Faults {
    let mut x = Faults::default();
    f(&mut x);
    x
}

/// The transport error under an application error (a DEBIT whose answer never came is
/// `Uncertain`).
fn transport(e: app::AppError) -> TransportError {
    match e {
        app::AppError::Transport(t) | app::AppError::Uncertain { source: t, .. } => t,
        other => panic!("{other:?}"),
    }
}

#[test]
fn time_requests_keep_a_slow_answer_alive_and_silence_times_out() {
    let emu = served(Model::GemPcTwin, None);
    let reader =
        SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemPcTwin, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    // every answer 2.5 s late (2.5 × the answer timeout), with a time request every
    // 500 ms
    emu.set_faults(faults(|f| {
        f.time_requests = Some(TimeRequests {
            hit: Hit::Every(1),
            count: 4,
            interval: Duration::from_millis(500),
        })
    }));
    let mut tx = Transaction::begin(&mut card).unwrap();
    let read = CommandApdu::new(0, 0xB2, 1, 4).with_le(256).unwrap();
    let t = Instant::now();
    // any status word: what counts is that the answer came through the wait
    tx.transmit(&read).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // the same delay without time requests
    emu.set_faults(faults(|f| {
        f.delay = Some((Hit::Every(1), Duration::from_millis(2500)))
    }));
    let e = tx.transmit(&read).unwrap_err();
    assert!(
        matches!(e, TransportError::Timeout(_)) && e.outcome_unknown(),
        "{e}"
    );
    drop(tx);
    // the late answer is skipped; the link goes on
    emu.set_faults(Faults::default());
    std::thread::sleep(Duration::from_millis(2000));
    read_and_pay(&mut card);
}

/// A purchase up to its DEBIT: the card's id, the balance before, the prepared
/// purchase.
fn up_to_the_debit(
    tx: &mut Transaction<'_>,
    keys: &mut SoftwareKeys,
) -> (sscard_driver::CardId, u32, app::PreparedPurchase) {
    let rec = app::read_card(tx).unwrap();
    app::external_authenticate(tx, keys, &rec.card_id).unwrap();
    app::verify_pin(tx, &Pin::new("123456").unwrap()).unwrap();
    let before = app::balance(tx).unwrap();
    let p = app::initialize_purchase(tx, keys, &rec.card_id, 1234, when()).unwrap();
    (rec.card_id, before, p)
}

/// A slow card: its DEBIT takes 3 s (3 × the answer timeout), and the reader says so
/// with a burst of time requests; the purchase goes through.
#[test]
fn a_burst_of_time_requests_on_a_slow_debit() {
    for model in [Model::GemPcTwin, Model::GemCorePosPro] {
        let emu = served(model, None);
        let reader =
            SerialReader::open_with(&emu.path().to_string_lossy(), model, quick()).unwrap();
        let mut card = reader.connect(0).unwrap();
        let mut keys = pharmacy();
        let mut tx = Transaction::begin(&mut card).unwrap();
        let (id, before, p) = up_to_the_debit(&mut tx, &mut keys);
        emu.set_faults(faults(|f| {
            f.time_requests = Some(TimeRequests {
                hit: Hit::Nth(1),
                count: 5,
                interval: Duration::from_millis(500),
            })
        }));
        let t = Instant::now();
        let proof = p.debit(&mut tx, &mut keys).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(3000),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(proof.balance_after, before - 1234);
        assert_eq!(
            proof.tac,
            purchase_tac(id, keys.terminal_id(), &proof, when())
        );
    }
}

/// The card pulled while its DEBIT is in the reader, after the card ran it: the card
/// is gone with the outcome unknown; put back, it tells what happened.
#[test]
fn the_card_pulled_mid_debit() {
    let emu = served(Model::GemCorePosPro, None);
    let reader =
        SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemCorePosPro, quick())
            .unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut keys = pharmacy();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let (_, before, p) = up_to_the_debit(&mut tx, &mut keys);
    emu.set_faults(faults(|f| {
        f.pull = Some(OnXfr {
            nth: 1,
            card_runs: true,
        })
    }));
    let e = transport(p.debit(&mut tx, &mut keys).unwrap_err());
    assert!(e.outcome_unknown(), "{e}");
    assert!(
        matches!(e, TransportError::CardRemoved | TransportError::NoCard),
        "{e}"
    );
    drop(tx);
    // back after the reader's reinsert time (300 ms)
    let fresh = wait_for("the card back", || {
        card.begin().ok().map(|t| t.new_presentation())
    });
    assert!(fresh);
    let mut tx = Transaction::begin(&mut card).unwrap();
    app::read_card(&mut tx).unwrap();
    assert_eq!(
        app::balance(&mut tx).unwrap(),
        before - 1234,
        "it was debited"
    );
}

/// The reader unplugged while the DEBIT is in it (the card did not get it), behind
/// `--link`: a transport error with the outcome unknown, the reader away, then back
/// behind the same path with the card unpowered and not debited, and a purchase.
#[test]
fn unplugged_while_a_purchase_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyGEM");
    let link_s = link.to_string_lossy().to_string();
    let emu = served(Model::GemCorePosPro, Some(link.clone()));
    let reader = SerialReader::open_with(&link_s, Model::GemCorePosPro, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut keys = pharmacy();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let (_, before, p) = up_to_the_debit(&mut tx, &mut keys);
    emu.set_faults(faults(|f| {
        f.unplug = Some((
            OnXfr {
                nth: 1,
                card_runs: false,
            },
            Duration::from_millis(800),
        ))
    }));
    let e = transport(p.debit(&mut tx, &mut keys).unwrap_err());
    assert!(e.outcome_unknown(), "{e}");
    assert!(matches!(e, TransportError::Io(_)), "{e}");
    drop(tx);
    assert!(matches!(card.status(), Err(TransportError::NoReader(_))));
    let fresh = wait_for("the reader back", || {
        card.begin().ok().map(|t| t.new_presentation())
    });
    assert!(fresh);
    let mut tx = Transaction::begin(&mut card).unwrap();
    app::read_card(&mut tx).unwrap();
    assert_eq!(app::balance(&mut tx).unwrap(), before, "not debited");
    drop(tx);
    assert_eq!(std::fs::read_link(&link).unwrap(), emu.path());
    read_and_pay(&mut card);
}

/// A card whose every answer carries the bytes `50 02` (what a card movement notice
/// "slot 0 changed, absent" looks like) in its data.
struct NoticeLookalike;

impl VirtualCard for NoticeLookalike {
    fn atr(&self) -> Vec<u8> {
        sscard_firmware_tests::card::T0_ATR.to_vec()
    }
    fn power_on(&mut self) {}
    fn power_off(&mut self) {}
    fn reset(&mut self) {}
    fn process(&mut self, _: &[u8]) -> Reply {
        let mut d = vec![0x11; 10];
        d.extend([0x50, 0x02]);
        d.extend([0x22; 10]);
        d.extend([0x90, 0x00]);
        Reply::Answer(d)
    }
}

/// A frame cut short whose data holds `50 02` is resent, not read as the card leaving:
/// the link once rescanned a cut frame's remains for card movement notices
/// (`driver/src/transport/serial/link.rs`, the `stuck` branch of `exchange`), and the
/// purchase through cut frames above met it now and then, when a random MAC or TAC held
/// `50` and a byte with bit 1 set.
#[test]
fn a_cut_frame_whose_data_looks_like_a_notice_is_resent() {
    let r = EmuReader::new(
        EmuModel::GemCorePosPro,
        vec![Some(Box::new(NoticeLookalike))],
        ReaderOptions::default(),
    )
    .unwrap();
    let emu = Served::start(r, None).unwrap();
    let path = emu.path().to_string_lossy().to_string();
    let reader = SerialReader::open_with(&path, Model::GemCorePosPro, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let read = CommandApdu::new(0, 0xB0, 0, 0).with_le(22).unwrap();
    assert_eq!(tx.transmit(&read).unwrap().data.len(), 22);
    emu.set_faults(faults(|f| f.drop_byte = Hit::Nth(1)));
    assert_eq!(tx.transmit(&read).unwrap().data.len(), 22);
}

// ---- T=1 cards ----

/// The emulator's T=1 ATR with another IFSC (TA3).
fn t1_atr_with_ifsc(ifsc: u8) -> Vec<u8> {
    let mut a = vec![0x3B, 0xDA, 0x11, 0xFF, 0x81, 0x31, ifsc, 0x45];
    a.extend_from_slice(b"SSC-AES v1");
    let tck = a[1..].iter().fold(0u8, |x, b| x ^ b);
    a.push(tck);
    a
}

/// The default card in T=1 (no `--t0`) in a reader served in this process.
fn served_t1(model: Model, card: Box<dyn VirtualCard>) -> Served {
    let m = EmuModel::parse(model.name()).unwrap();
    let r = EmuReader::new(m, vec![Some(card)], ReaderOptions::default()).unwrap();
    Served::start(r, None).unwrap()
}

fn t1_card() -> Box<dyn VirtualCard> {
    Box::new(EmulatedCard::new(&Personalization::default_test_card(), Knobs::default()).unwrap())
}

fn read_records(card: &mut dyn CardTransport) -> app::CardRecord {
    let mut tx = Transaction::begin(card).unwrap();
    app::read_card(&mut tx).unwrap()
}

#[test]
fn a_t1_card_reads_as_the_t0_card_and_pays() {
    let t0 = SerialVcard::start(Model::GemPcTwin.name(), &[]);
    let reader = SerialReader::open(&t0.pty.to_string_lossy(), Model::GemPcTwin).unwrap();
    let mut card = reader.connect(0).unwrap();
    assert_eq!(card.status().unwrap().protocol, Some(Protocol::T0));
    let via_t0 = read_records(&mut card);

    for model in [Model::GemPcTwin, Model::GemCorePosPro] {
        let t1 = SerialVcard::start_t1(model.name(), &[]);
        let reader = SerialReader::open(&t1.pty.to_string_lossy(), model).unwrap();
        let mut card = reader.connect(0).unwrap();
        let st = card.status().unwrap();
        assert_eq!(st.protocol, Some(Protocol::T1));
        assert_eq!(st.atr, sscard_firmware_tests::card::t1_atr());
        assert_eq!(read_records(&mut card), via_t0);
        read_and_pay(&mut card);
        // a power cycle starts the block protocol again (N(S), N(R), IFSD)
        card.reset().unwrap();
        assert_eq!(read_records(&mut card), via_t0);
    }
}

/// A card that answers 256 bytes and SW1 SW2 to anything, and keeps the commands.
struct Long {
    atr: Vec<u8>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl VirtualCard for Long {
    fn atr(&self) -> Vec<u8> {
        self.atr.clone()
    }
    fn power_on(&mut self) {}
    fn power_off(&mut self) {}
    fn reset(&mut self) {}
    fn process(&mut self, c: &[u8]) -> Reply {
        self.seen.lock().unwrap().push(c.to_vec());
        let mut d: Vec<u8> = (0..=255u8).collect();
        d.extend([0x90, 0x00]);
        Reply::Answer(d)
    }
}

#[test]
fn a_256_byte_answer_and_a_long_command_chained_with_a_small_ifsc() {
    let seen = std::sync::Arc::default();
    let emu = served_t1(
        Model::GemPcTwin,
        Box::new(Long {
            atr: t1_atr_with_ifsc(0x10),
            seen: std::sync::Arc::clone(&seen),
        }),
    );
    let reader = SerialReader::open(&emu.path().to_string_lossy(), Model::GemPcTwin).unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut tx = Transaction::begin(&mut card).unwrap();
    // 200 bytes of data: 13 I-blocks of at most 16 bytes; the answer of 258 bytes in
    // two (IFSD 254)
    let cmd = CommandApdu::new(0x80, 0xE2, 0, 0)
        .with_data((0..200).map(|i| i as u8).collect::<Vec<u8>>())
        .unwrap()
        .with_le(256)
        .unwrap();
    let r = tx.transmit(&cmd).unwrap();
    assert_eq!(r.data, (0..=255u8).collect::<Vec<_>>());
    assert!(r.sw.is_ok(), "{:?}", r.sw);
    drop(tx);
    // the APDU reached the card whole, Le kept
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &cmd.to_bytes().to_vec()
    );
    // the whole card through the same small IFSC, its longer commands chained
    let v = SerialVcard::start_t1(
        Model::GemCorePosPro.name(),
        &["--atr", &hex::encode(t1_atr_with_ifsc(0x10))],
    );
    let reader = SerialReader::open(&v.pty.to_string_lossy(), Model::GemCorePosPro).unwrap();
    let mut card = reader.connect(0).unwrap();
    read_and_pay(&mut card);
}

#[test]
fn t1_blocks_with_a_bad_edc_are_asked_again() {
    // every 3rd block the card sends damaged (its resends counted too)
    pay_through_faults_t1(Model::GemPcTwin, &["--t1-corrupt", "every:3"]);
    // and in process, the count checked: one damaged block, one more block sent
    let emu = served_t1(Model::GemPcTwin, t1_card());
    let reader =
        SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemPcTwin, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    emu.set_faults(faults(|f| f.t1_corrupt = Hit::Nth(2)));
    let before = emu.with_reader(|r| r.xfr_blocks());
    assert_eq!(before, 0);
    let rec = read_records(&mut card);
    assert_eq!(rec.name, "张三");
    // 19 commands, one block each way, and one R-block for the damaged answer
    assert_eq!(emu.with_reader(|r| r.xfr_blocks()), 20);
}

fn pay_through_faults_t1(model: Model, faults: &[&str]) {
    let v = SerialVcard::start_t1(model.name(), faults);
    let reader = SerialReader::open_with(&v.pty.to_string_lossy(), model, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    read_and_pay(&mut card);
}

#[test]
fn a_wtx_request_stretches_the_wait_for_that_answer() {
    let emu = served_t1(Model::GemPcTwin, t1_card());
    // an answer timeout of 1 s; the card asks for 4 × the waiting time, then answers
    // after 2.5 s
    let reader =
        SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemPcTwin, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    emu.set_faults(faults(|f| {
        f.t1_wtx = Some(T1Wtx {
            hit: Hit::Nth(1),
            multiplier: 4,
            hold: Duration::from_millis(2500),
        })
    }));
    let t = Instant::now();
    let rec = read_records(&mut card);
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(rec.card_number, "A65020001");
    // the extension is for that block only: the same hold without a WTX times out
    // (answer frames counted: the GetSlotStatus of begin, then the block)
    emu.set_faults(faults(|f| {
        f.delay = Some((Hit::Nth(2), Duration::from_millis(2500)))
    }));
    let mut tx = Transaction::begin(&mut card).unwrap();
    let e = tx
        .transmit(&CommandApdu::new(0, 0x84, 0, 0).with_le(8).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, TransportError::Timeout(_)) && e.outcome_unknown(),
        "{e}"
    );
}

/// A GemPC PinPad served in this process, its keypad the file `keys`, the holder
/// taking `typing` to type.
fn pin_pad(t0: bool, keys: &Path, typing: Duration) -> Served {
    let card = EmulatedCard::new(
        &Personalization::default_test_card(),
        Knobs {
            t0,
            ..Default::default()
        },
    )
    .unwrap();
    let opts = ReaderOptions {
        keypad: Some(keys.to_path_buf()),
        keypad_typing: typing,
        ..Default::default()
    };
    let r = EmuReader::new(EmuModel::GemPcPinPad, vec![Some(Box::new(card))], opts).unwrap();
    Served::start(r, None).unwrap()
}

fn typed(keys: &Path, line: &str) {
    std::fs::write(keys, format!("{line}\n")).unwrap();
}

/// PIN entry on the reader's keypad through `PC_to_RDR_Secure`, for a T=0 and a T=1
/// card: the card's answers, the pad's own (cancel, timeout, wrong length, PINs that
/// differ), a change, and the card's other commands in step afterwards; the holder
/// may take longer than a card's answer timeout.
#[test]
fn a_pin_typed_on_the_pad_of_a_serial_reader() {
    use sscard_driver::status::PinEntry;
    for t0 in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keypad");
        // 1.5 × the answer timeout of quick()
        let emu = pin_pad(t0, &keys, Duration::from_millis(1500));
        let reader =
            SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemPcPinPad, quick())
                .unwrap();
        let mut card = reader.connect(0).unwrap();
        assert!(card.capabilities().pin_pad);
        let mut tx = Transaction::begin(&mut card).unwrap();
        let want = if t0 { Protocol::T0 } else { Protocol::T1 };
        app::read_card(&mut tx).unwrap();
        typed(&keys, "123456");
        let t = Instant::now();
        app::verify_pin_on_pad(&mut tx, 30).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(1500),
            "the holder's time"
        );
        emu.with_reader(|r| r.set_keypad_typing(Duration::ZERO));
        typed(&keys, "000000");
        match app::verify_pin_on_pad(&mut tx, 30) {
            Err(app::AppError::PinWrong { tries_left: 2 }) => {}
            other => panic!("t0 {t0}: {other:?}"),
        }
        for (line, want) in [
            ("cancel", PinEntry::Cancelled),
            ("timeout", PinEntry::Timeout),
            ("12", PinEntry::Length),
        ] {
            typed(&keys, line);
            match app::verify_pin_on_pad(&mut tx, 30) {
                Err(app::AppError::PinEntry(p)) => assert_eq!(p, want, "{line}"),
                other => panic!("t0 {t0}, {line}: {other:?}"),
            }
        }
        assert_eq!(app::pin_tries_left(&mut tx).unwrap(), 2, "no try spent");
        typed(&keys, "123456 2468 2469");
        match app::change_pin_on_pad(&mut tx, 30) {
            Err(app::AppError::PinEntry(PinEntry::Mismatch)) => {}
            other => panic!("t0 {t0}: {other:?}"),
        }
        typed(&keys, "123456 2468 2468");
        app::change_pin_on_pad(&mut tx, 30).unwrap();
        // the block protocol is in step: PINs over the host, records, as before
        app::verify_pin(&mut tx, &Pin::new("2468").unwrap()).unwrap();
        assert_eq!(app::read_card(&mut tx).unwrap().name, "张三");
        drop(tx);
        assert_eq!(card.status().unwrap().protocol, Some(want));
        assert_eq!(emu.with_reader(|r| r.pin_entries()), 7);
    }
}

#[test]
fn a_reader_without_a_keypad_says_so() {
    let emu = served(Model::GemPcTwin, None);
    let reader =
        SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemPcTwin, quick()).unwrap();
    let mut card = reader.connect(0).unwrap();
    assert!(!card.capabilities().pin_pad);
    let mut tx = Transaction::begin(&mut card).unwrap();
    match app::verify_pin_on_pad(&mut tx, 30) {
        Err(e) => assert!(
            matches!(transport(e), TransportError::Unsupported(_)),
            "refused before any frame"
        ),
        Ok(()) => panic!("a pad that is not there"),
    }
    // the reader believes it has none: a backend told it is a pad model gets the
    // reader's refusal
    drop(tx);
    drop(card);
    drop(reader);
    let reader =
        SerialReader::open_with(&emu.path().to_string_lossy(), Model::GemPcPinPad, quick())
            .unwrap();
    let mut card = reader.connect(0).unwrap();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let e = app::verify_pin_on_pad(&mut tx, 30).unwrap_err();
    assert!(matches!(transport(e), TransportError::Unsupported(_)));
    app::read_card(&mut tx).unwrap();
}
