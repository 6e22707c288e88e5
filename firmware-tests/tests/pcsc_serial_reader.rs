//! The libccid cross-check (issue 10): pcscd drives the emulated serial readers of the
//! test bed through libccid's own serial driver, `libccidtwin` (reader.conf
//! `DEVICENAME <pty>:GemCorePOSPro` / `:GemPCTwin`), and the project's PC/SC backend
//! reads and pays with the card in them. Where libccid and the emulator disagree, the
//! emulator is wrong. Run under `scripts/with-pcscd` (scripts/test does), which starts
//! the readers (`SSCARD_SERIAL_READERS`).

use chrono::NaiveDate;
use sscard_driver::app::{self, Pin};
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::transport::pcsc::PcscContext;
use sscard_driver::transport::{CardTransport, Protocol, Transaction};
use sscard_firmware_tests::card::{t1_atr, T0_ATR};
use sscard_firmware_tests::clearing::purchase_tac;
use sscard_firmware_tests::testbed::{wait_present, SerialReaderLease};
use std::time::Duration;

fn when() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 12, 4)
        .unwrap()
        .and_hms_opt(9, 30, 0)
        .unwrap()
}

fn pharmacy() -> SoftwareKeys {
    sscard_firmware_tests::testbed::pharmacy_keys()
}

/// The reader's slots as pcscd lists them, the card's ATR and protocol, every record,
/// and a purchase (VERIFY, INITIALIZE FOR PURCHASE, DEBIT) with its TAC checked.
fn read_and_pay(model: &str, slots: usize) {
    read_and_pay_card(model, slots, &T0_ATR, Protocol::T0);
}

fn read_and_pay_card(model: &str, slots: usize, atr: &[u8], protocol: Protocol) {
    let lease = SerialReaderLease::acquire(model);
    assert_eq!(lease.readers().len(), slots, "{:?}", lease.readers());
    let mut card = lease.connect();
    let st = card.status().unwrap();
    assert!(st.present);
    assert_eq!(st.atr, atr);
    assert_eq!(st.protocol, Some(protocol));

    let mut keys = pharmacy();
    let mut tx = Transaction::begin(&mut card).unwrap();
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
    let p = app::initialize_purchase(&mut tx, &mut keys, &rec.card_id, 250, when()).unwrap();
    assert_eq!(p.balance_before, before);
    let proof = p.debit(&mut tx, &mut keys).unwrap();
    assert_eq!(proof.balance_after, before - 250);
    assert_eq!(app::balance(&mut tx).unwrap(), before - 250);
    assert_eq!(
        proof.tac,
        purchase_tac(rec.card_id, keys.terminal_id(), &proof, when())
    );
    drop(tx);
    drop(card);

    // the card pulled and put back: pcscd sees both through libccid's polling
    lease.remove();
    lease.insert();
    let mut card = lease.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    assert_eq!(app::read_card(&mut tx).unwrap().card_id, rec.card_id);
    assert_eq!(app::balance(&mut tx).unwrap(), before - 250);
    drop(tx);
    drop(card);

    // a reader with SAM slots holds the test bed's PSAM in the first (it came with
    // the card), the other slots are empty
    let ctx = PcscContext::establish().unwrap();
    if let Some(sam) = lease.readers().get(1) {
        wait_present(&ctx, sam, true, Duration::from_secs(5));
    }
    for r in lease.readers().iter().skip(2) {
        wait_present(&ctx, r, false, Duration::from_secs(1));
    }
}

#[test]
fn gemcore_pos_pro_through_libccid() {
    read_and_pay("GemCorePOSPro", 5);
}

#[test]
fn gempc_twin_through_libccid() {
    read_and_pay("GemPCTwin", 1);
}

/// The T=1 card (`SSCARD_SERIAL_READERS` entry `GemPCTwin:t1`): libccid's own T=1
/// (`openct/proto-t1.c`: S(IFS request) IFSD 254, I-blocks, its R-blocks) against the
/// emulator's card side, read and paid exactly as through the project's backend
/// (`serial_backend.rs`, `a_t1_card_reads_as_the_t0_card_and_pays`).
#[test]
fn gempc_twin_with_a_t1_card_through_libccid() {
    read_and_pay_card("GemPCTwin-t1", 1, &t1_atr(), Protocol::T1);
}

/// PIN entry on the emulated GemPC PinPad's keypad through pcscd and libccid: the
/// reader's part 10 features as libccid reports them for this model, then the project's
/// PC/SC backend's VERIFY and MODIFY PIN structures, which libccid turns into
/// `PC_to_RDR_Secure` (for the T=1 card with its own block prologue), for the card's
/// answers and the pad's own.
fn pin_pad_through_libccid(model: &str, protocol: Protocol) {
    use sscard_driver::status::PinEntry;
    let lease = SerialReaderLease::acquire(model);
    let mut card = lease.connect();
    assert_eq!(card.status().unwrap().protocol, Some(protocol));
    assert!(
        card.capabilities().pin_pad,
        "libccid lists the pad's features"
    );
    let mut tx = Transaction::begin(&mut card).unwrap();
    app::read_card(&mut tx).unwrap();
    lease.keypad("123456");
    app::verify_pin_on_pad(&mut tx, 30).unwrap();
    lease.keypad("000000");
    match app::verify_pin_on_pad(&mut tx, 30) {
        Err(app::AppError::PinWrong { tries_left: 2 }) => {}
        other => panic!("{model}: {other:?}"),
    }
    for (line, want) in [
        ("cancel", PinEntry::Cancelled),
        ("timeout", PinEntry::Timeout),
        ("12", PinEntry::Length),
    ] {
        lease.keypad(line);
        match app::verify_pin_on_pad(&mut tx, 30) {
            Err(app::AppError::PinEntry(p)) => assert_eq!(p, want, "{model}: {line}"),
            other => panic!("{model}, {line}: {other:?}"),
        }
    }
    lease.keypad("123456 2468 2469");
    match app::change_pin_on_pad(&mut tx, 30) {
        Err(app::AppError::PinEntry(PinEntry::Mismatch)) => {}
        other => panic!("{model}: {other:?}"),
    }
    lease.keypad("123456 2468 2468");
    app::change_pin_on_pad(&mut tx, 30).unwrap();
    app::verify_pin(&mut tx, &Pin::new("2468").unwrap()).unwrap();
    assert_eq!(app::read_card(&mut tx).unwrap().name, "张三");
    // the test card is the emulator's: its PIN goes back for the next test
    lease.keypad("2468 123456 123456");
    app::change_pin_on_pad(&mut tx, 30).unwrap();
    app::verify_pin(&mut tx, &Pin::new("123456").unwrap()).unwrap();
}

#[test]
fn gempc_pinpad_through_libccid() {
    pin_pad_through_libccid("GemPCPinPad", Protocol::T0);
}

#[test]
fn gempc_pinpad_with_a_t1_card_through_libccid() {
    pin_pad_through_libccid("GemPCPinPad-t1", Protocol::T1);
}
