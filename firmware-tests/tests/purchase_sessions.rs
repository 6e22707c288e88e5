//! Each prepared purchase carries its own session (card profile §6 steps 2–3): two
//! purchases prepared on two cards and debited in turn each check their own MAC2,
//! through the in-process emulator (no pcscd needed).

use chrono::NaiveDate;
use sscard_driver::app::{self, AppError, Pin, PreparedPurchase};
use sscard_driver::keyprovider::psam::PsamProvider;
use sscard_driver::keyprovider::{KeyError, KeyProvider, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::Transaction;
use sscard_driver::CardId;
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::clearing::purchase_tac;
use sscard_firmware_tests::psam::Psam;
use sscard_firmware_tests::sim::SimReader;

fn when() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 23)
        .unwrap()
        .and_hms_opt(10, 15, 0)
        .unwrap()
}

/// A reader holding a default test card with chip serial `serial`.
fn reader(name: &str, serial: &str) -> (SimReader<EmulatedCard>, CardId) {
    let mut p = Personalization::default_test_card();
    p.chip_serial = serial.into();
    let card = EmulatedCard::new(&p, Knobs::default()).unwrap();
    let id = card.card_id();
    (SimReader::with_card(name, Box::new(card)), id)
}

fn balance(r: &SimReader<EmulatedCard>) -> u32 {
    r.slot().with_card(|c| c.image().balance).unwrap()
}

/// Read the card, verify its PIN, prepare a purchase of `amount`.
fn prepare(tx: &mut Transaction<'_>, keys: &mut dyn KeyProvider, amount: u32) -> PreparedPurchase {
    let id = app::read_card(tx).unwrap().card_id;
    app::verify_pin(tx, &Pin::new("123456").unwrap()).unwrap();
    app::initialize_purchase(tx, keys, &id, amount, when()).unwrap()
}

fn tac(id: CardId, tid: sscard_driver::TerminalId, p: &app::PurchaseProof) -> String {
    purchase_tac(id, tid, p, when())
}

#[test]
fn interleaved_purchases_on_two_cards_keep_their_sessions() {
    let (mut ra, id_a) = reader("a", "00112233445566A1");
    let (mut rb, id_b) = reader("b", "00112233445566B2");
    let mut keys = SoftwareKeys::test_keys(
        "650200".parse().unwrap(),
        "650200000001".parse().unwrap(),
        &[KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase],
    );
    let tid = keys.terminal_id();
    // both prepared before either is debited: one provider, two sessions in flight
    let mut tx_a = Transaction::begin(&mut ra).unwrap();
    let pa = prepare(&mut tx_a, &mut keys, 1_100);
    let mut tx_b = Transaction::begin(&mut rb).unwrap();
    let pb = prepare(&mut tx_b, &mut keys, 2_200);
    assert_ne!(pa.terminal_seq, pb.terminal_seq);
    // the session is not printed
    let shown = format!("{pa:?}");
    assert!(shown.contains("REDACTED"), "{shown}");

    // A first: its MAC2 is checked with A's session, not with B's (the newer one)
    let proof_a = pa.debit(&mut tx_a, &mut keys).unwrap();
    let proof_b = pb.debit(&mut tx_b, &mut keys).unwrap();
    drop((tx_a, tx_b));
    assert_eq!(proof_a.balance_after, 100_000 - 1_100);
    assert_eq!(proof_b.balance_after, 100_000 - 2_200);
    assert_eq!(balance(&ra), 100_000 - 1_100);
    assert_eq!(balance(&rb), 100_000 - 2_200);
    assert_eq!(proof_a.tac, tac(id_a, tid, &proof_a));
    assert_eq!(proof_b.tac, tac(id_b, tid, &proof_b));

    // and the other way round: the older session is debited last
    let mut tx_a = Transaction::begin(&mut ra).unwrap();
    let pa = prepare(&mut tx_a, &mut keys, 300);
    let mut tx_b = Transaction::begin(&mut rb).unwrap();
    let pb = prepare(&mut tx_b, &mut keys, 400);
    let proof_b = pb.debit(&mut tx_b, &mut keys).unwrap();
    let proof_a = pa.debit(&mut tx_a, &mut keys).unwrap();
    drop((tx_a, tx_b));
    assert_eq!(proof_a.balance_after, 100_000 - 1_100 - 300);
    assert_eq!(proof_b.balance_after, 100_000 - 2_200 - 400);
    assert_eq!(proof_a.tac, tac(id_a, tid, &proof_a));
}

/// A PSAM keeps one purchase session: the prepared value names its purchase, so a MAC2
/// is never checked against another purchase's session (the daemon holds the PSAM for
/// a whole purchase, so this interleaving cannot happen there).
#[test]
fn a_psam_refuses_the_mac2_of_a_purchase_it_no_longer_holds() {
    let (mut ra, _) = reader("a", "00112233445566A1");
    let (mut rb, id_b) = reader("b", "00112233445566B2");
    let tid = "650200000077".parse().unwrap();
    let psam = SimReader::with_card(
        "psam",
        Box::new(Psam::test_psam("650200".parse().unwrap(), tid)),
    );
    let mut psam = PsamProvider::open(Box::new(psam)).unwrap();
    let mut tx_a = Transaction::begin(&mut ra).unwrap();
    let pa = prepare(&mut tx_a, &mut psam, 500);
    let mut tx_b = Transaction::begin(&mut rb).unwrap();
    let pb = prepare(&mut tx_b, &mut psam, 600);
    let seq_a = pa.terminal_seq;
    // the card commits A (DEBIT went), but A's MAC2 cannot be checked any more
    match pa.debit(&mut tx_a, &mut psam) {
        Err(AppError::Key(KeyError::Psam(m))) => {
            assert!(m.contains(&seq_a.to_string()), "{m}")
        }
        other => panic!("A's MAC2 checked against B's session: {other:?}"),
    }
    // B's session is still the PSAM's: B completes and its TAC is the formula's
    let proof_b = pb.debit(&mut tx_b, &mut psam).unwrap();
    drop((tx_a, tx_b));
    assert_eq!(proof_b.balance_after, 100_000 - 600);
    assert_eq!(balance(&rb), 100_000 - 600);
    assert_eq!(proof_b.tac, tac(id_b, tid, &proof_b));
}
