//! The card application and key providers through pcscd → vpcd → `sscard-vcard`:
//! every operation and error path a pharmacy terminal or an issuing office meets.
//! Run under `scripts/with-pcscd` (scripts/test does).

use chrono::NaiveDate;
use sscard_driver::app::{self, AppError, Pin, Recovery};
use sscard_driver::crypto::{self, PurchaseContext};
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::personalize::{self, IssuerKeys, Mode, PersoRecord};
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::transport::{CardTransport, Transaction};
use sscard_driver::CardId;
use sscard_firmware_tests::clearing::purchase_tac;
use sscard_firmware_tests::testbed::Vcard;
use std::time::{Duration, Instant};

fn when() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 23)
        .unwrap()
        .and_hms_opt(10, 15, 0)
        .unwrap()
}
fn terminal(purposes: &[KeyPurpose]) -> SoftwareKeys {
    SoftwareKeys::test_keys(
        "650200".parse().unwrap(),
        "650200000001".parse().unwrap(),
        purposes,
    )
}
fn pharmacy() -> SoftwareKeys {
    sscard_firmware_tests::testbed::pharmacy_keys()
}
fn office() -> SoftwareKeys {
    terminal(&KeyPurpose::ALL)
}
fn pin(s: &str) -> Pin {
    Pin::new(s).unwrap()
}

#[test]
fn read_authenticate_and_pay() {
    let v = Vcard::start(&["--t0"]);
    let mut card = v.connect();
    let mut keys = pharmacy();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let rec = app::read_card(&mut tx).unwrap();
    assert_eq!(rec.name, "张三");
    assert_eq!(rec.card_number, "A65020001");
    assert_eq!(
        rec.expiry_date,
        NaiveDate::from_ymd_opt(2036, 1, 1).unwrap()
    );
    assert!(!rec.blocked);
    assert!(
        app::internal_authenticate(&mut tx, &mut keys, &rec.card_id).unwrap(),
        "genuine card"
    );
    app::external_authenticate(&mut tx, &mut keys, &rec.card_id).unwrap();
    assert_eq!(app::pin_tries_left(&mut tx).unwrap(), 3);
    app::verify_pin(&mut tx, &pin("123456")).unwrap();
    let before = app::balance(&mut tx).unwrap();
    let p = app::initialize_purchase(&mut tx, &mut keys, &rec.card_id, 1234, when()).unwrap();
    assert_eq!(p.balance_before, before);
    let proof = p.debit(&mut tx, &mut keys).unwrap();
    assert_eq!(proof.balance_after, before - 1234);
    assert_eq!(app::balance(&mut tx).unwrap(), before - 1234);
    // the TAC verifies with the clearing centre's formula
    assert_eq!(
        proof.tac,
        purchase_tac(rec.card_id, keys.terminal_id(), &proof, when())
    );
    let log = app::transaction_log(&mut tx).unwrap();
    assert_eq!(
        (log[0].counter, log[0].amount, log[0].kind),
        (proof.counter, 1234, 0x06)
    );
}

#[test]
fn pin_errors_down_to_blocked_then_reload() {
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let rec = app::read_card(&mut tx).unwrap();
    assert!(matches!(
        app::verify_pin(&mut tx, &pin("000000")),
        Err(AppError::PinWrong { tries_left: 2 })
    ));
    app::change_pin(&mut tx, &pin("123456"), &pin("2468")).unwrap();
    app::verify_pin(&mut tx, &pin("2468")).unwrap();
    assert!(matches!(
        app::verify_pin(&mut tx, &pin("0000")),
        Err(AppError::PinWrong { tries_left: 2 })
    ));
    assert!(matches!(
        app::verify_pin(&mut tx, &pin("0000")),
        Err(AppError::PinWrong { tries_left: 1 })
    ));
    assert!(matches!(
        app::verify_pin(&mut tx, &pin("0000")),
        Err(AppError::PinBlocked)
    ));
    assert!(matches!(
        app::verify_pin(&mut tx, &pin("2468")),
        Err(AppError::PinBlocked)
    ));
    assert_eq!(app::pin_tries_left(&mut tx).unwrap(), 0);
    // a pharmacy has no PIN key; the issuing office reloads it
    assert!(matches!(
        app::reload_pin(&mut tx, &mut pharmacy(), &rec.card_id, &pin("123456")),
        Err(AppError::KeyUnavailable("PIN"))
    ));
    app::reload_pin(&mut tx, &mut office(), &rec.card_id, &pin("123456")).unwrap();
    app::verify_pin(&mut tx, &pin("123456")).unwrap();
}

#[test]
fn blocked_application_identifies_but_refuses() {
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    let mut keys = office();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let id = app::read_card(&mut tx).unwrap().card_id;
    app::block_application(&mut tx, &mut keys, &id).unwrap();
    let rec = app::read_card(&mut tx).unwrap();
    assert!(rec.blocked);
    assert_eq!(rec.card_number, "A65020001", "EF05 readable while blocked");
    assert!(matches!(app::balance(&mut tx), Err(AppError::Blocked)));
    assert!(matches!(
        app::verify_pin(&mut tx, &pin("123456")),
        Err(AppError::Blocked)
    ));
    app::unblock_application(&mut tx, &mut keys, &id).unwrap();
    assert!(!app::read_card(&mut tx).unwrap().blocked);
    assert!(app::balance(&mut tx).is_ok());
}

#[test]
fn not_genuine_and_mac_failures() {
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let id = app::read_card(&mut tx).unwrap().card_id;
    // keys of another hierarchy: the card's answer does not verify
    let wrong = |ps: &[KeyPurpose]| {
        SoftwareKeys::new(
            "650200".parse().unwrap(),
            "650200000001".parse().unwrap(),
            ps.iter()
                .map(|p| (*p, Key16::from_bytes([0x5A; 16])))
                .collect(),
            Box::new(sscard_driver::keyprovider::MemorySequence::default()),
        )
    };
    let mut w = wrong(&KeyPurpose::ALL);
    assert!(
        !app::internal_authenticate(&mut tx, &mut w, &id).unwrap(),
        "not genuine"
    );
    assert!(matches!(
        app::external_authenticate(&mut tx, &mut w, &id),
        Err(AppError::AuthFailed)
    ));
    assert!(matches!(
        app::block_application(&mut tx, &mut w, &id),
        Err(AppError::MacMismatch(_))
    ));
    app::verify_pin(&mut tx, &pin("123456")).unwrap();
    let p = app::initialize_purchase(&mut tx, &mut w, &id, 100, when()).unwrap();
    assert!(
        matches!(p.debit(&mut tx, &mut w), Err(AppError::MacMismatch(_))),
        "card refuses MAC1"
    );
    assert!(matches!(
        app::load(&mut tx, &mut w, &id, 100, when()),
        Err(AppError::MacMismatch(_))
    ));
    // nothing was debited or loaded
    assert_eq!(app::balance(&mut tx).unwrap(), 100_000);
    // a card of another city is refused by the keys before anything is sent
    let other: CardId = "110100D1560000050011223344556677".parse().unwrap();
    assert!(app::internal_authenticate(&mut tx, &mut pharmacy(), &other).is_err());
}

#[test]
fn amounts_and_pin_rules_of_the_purse() {
    let v = Vcard::start(&["--balance", "500"]);
    let mut card = v.connect();
    let mut keys = pharmacy();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let id = app::read_card(&mut tx).unwrap().card_id;
    assert!(matches!(
        app::initialize_purchase(&mut tx, &mut keys, &id, 100, when()),
        Err(AppError::SecurityNotSatisfied)
    ));
    app::verify_pin(&mut tx, &pin("123456")).unwrap();
    assert!(matches!(
        app::initialize_purchase(&mut tx, &mut keys, &id, 501, when()),
        Err(AppError::InsufficientFunds)
    ));
    assert!(matches!(
        app::initialize_purchase(&mut tx, &mut keys, &id, 0, when()),
        Err(AppError::BadInput(_))
    ));
    // a terminal without the LOAD key cannot refund
    assert!(matches!(
        app::load(&mut tx, &mut keys, &id, 1, when()),
        Err(AppError::KeyUnavailable("LOAD"))
    ));
    let l = app::load(&mut tx, &mut office(), &id, 1500, when()).unwrap();
    assert_eq!((l.balance_before, l.balance_after), (500, 2000));
    assert_eq!(app::balance(&mut tx).unwrap(), 2000);
}

/// A card whose first DEBIT tears (after committing it, or before), back in the reader:
/// the vcard (kept alive), its connection, the terminal keys, the torn purchase's
/// counter and the card id. The image lives in `dir`.
fn torn_purchase(
    dir: &std::path::Path,
    commit: bool,
) -> (
    Vcard,
    sscard_driver::transport::pcsc::PcscCard,
    SoftwareKeys,
    u16,
    CardId,
) {
    let img = dir.join("card.json");
    let tear = if commit {
        "54:1:commit"
    } else {
        "54:1:nocommit"
    };
    let v = Vcard::start(&[
        "--image",
        img.to_str().unwrap(),
        "--tear-after",
        tear,
        "--reinsert-ms",
        "200",
    ]);
    let mut card = v.connect();
    let mut keys = pharmacy();
    let (counter, id) = {
        let mut tx = Transaction::begin(&mut card).unwrap();
        let id = app::read_card(&mut tx).unwrap().card_id;
        app::verify_pin(&mut tx, &pin("123456")).unwrap();
        let p = app::initialize_purchase(&mut tx, &mut keys, &id, 700, when()).unwrap();
        let counter = p.counter;
        let e = p.debit(&mut tx, &mut keys).unwrap_err();
        assert!(
            matches!(e, AppError::Uncertain { step: "DEBIT", .. }),
            "{e}"
        );
        (counter, id)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while card.reset().map(|a| a.is_empty()).unwrap_or(true) {
        assert!(Instant::now() < deadline, "card never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    (v, card, keys, counter, id)
}

#[test]
fn tear_recovery_both_ways() {
    for commit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (_v, mut card, keys, counter, id) = torn_purchase(dir.path(), commit);
        let mut tx = Transaction::begin(&mut card).unwrap();
        assert_eq!(app::read_card(&mut tx).unwrap().card_id, id);
        let r = app::recover_purchase(&mut tx, counter, 700, &keys.terminal_id()).unwrap();
        let bal = app::balance(&mut tx).unwrap();
        if commit {
            assert!(matches!(r, Recovery::Happened { .. }), "{r:?}");
            assert_eq!(bal, 100_000 - 700);
        } else {
            assert_eq!(r, Recovery::NotHappened);
            assert_eq!(bal, 100_000);
        }
    }
}

#[test]
fn blank_card_is_refused_then_personalized_card_pays() {
    let v = Vcard::start(&["--blank", "--serial", "1122334455667788"]);
    let mut card = v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    assert!(
        matches!(app::read_card(&mut tx), Err(AppError::NotSupported(_))),
        "not ISSUED"
    );
    let rec: PersoRecord = serde_json::from_value(serde_json::json!({
        "card_number": "A65020099", "ssn": "650102198502023456", "name": "李四", "gender": "2",
        "nation": "01", "birthplace": "650102", "birth_date": "1985-02-02",
        "issue_date": "2026-11-23", "expiry_date": "2036-11-23", "insured_category": "02",
        "pooling_region": "650200", "region": "650200", "pin": "8642"
    }))
    .unwrap();
    let id = personalize::personalize(
        &mut tx,
        &IssuerKeys::test_keys("650200".parse().unwrap()),
        &rec,
        Mode::Resume,
    )
    .unwrap();
    let read = app::read_card(&mut tx).unwrap();
    assert_eq!(
        (
            read.card_id,
            read.name.as_str(),
            read.insured_category.as_str()
        ),
        (id, "李四", "02")
    );
    // balance 0: load some, then buy; the TAC verifies with the hierarchy's TAC key
    let mut o = office();
    app::verify_pin(&mut tx, &pin("8642")).unwrap();
    app::load(&mut tx, &mut o, &id, 10_000, when()).unwrap();
    let mut keys = pharmacy();
    assert!(app::internal_authenticate(&mut tx, &mut keys, &id).unwrap());
    let p = app::initialize_purchase(&mut tx, &mut keys, &id, 2500, when()).unwrap();
    let proof = p.debit(&mut tx, &mut keys).unwrap();
    let (date, time) = app::bcd_datetime(when());
    let ctx = PurchaseContext {
        card_id: id,
        amount: 2500,
        counter: proof.counter,
        random: [0; 4],
        terminal_id: keys.terminal_id(),
        terminal_seq: proof.terminal_seq,
        date,
        time,
    };
    let kc_tac = crypto::card_key_from_master(test_master_keys().get(KeyPurpose::Tac), &id);
    assert_eq!(proof.tac, hex::encode_upper(ctx.tac(&kc_tac)));
    assert_eq!(proof.balance_after, 7_500);
}

/// A PSAM in the second slot: the host never sees a key, and the purchase's TAC is the
/// one the formulas give.
#[test]
fn purchase_through_a_psam() {
    let card_v = Vcard::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let psam_img = dir.path().join("psam.json");
    let psam_v = Vcard::start(&[
        "--psam",
        "--t0",
        "--terminal-id",
        "650200000077",
        "--image",
        psam_img.to_str().unwrap(),
    ]);
    let mut psam =
        sscard_driver::keyprovider::psam::PsamProvider::open(Box::new(psam_v.connect())).unwrap();
    assert_eq!(psam.terminal_id().to_hex(), "650200000077");
    assert!(!psam.supports(KeyPurpose::Load));
    let mut card = card_v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let id = app::read_card(&mut tx).unwrap().card_id;
    assert!(app::internal_authenticate(&mut tx, &mut psam, &id).unwrap());
    app::external_authenticate(&mut tx, &mut psam, &id).unwrap();
    app::verify_pin(&mut tx, &pin("123456")).unwrap();
    let mut seqs = Vec::new();
    for amount in [300u32, 450] {
        let p = app::initialize_purchase(&mut tx, &mut psam, &id, amount, when()).unwrap();
        let proof = p.debit(&mut tx, &mut psam).unwrap();
        assert_eq!(proof.amount, amount);
        assert_eq!(
            proof.tac,
            purchase_tac(id, psam.terminal_id(), &proof, when())
        );
        seqs.push(proof.terminal_seq);
    }
    assert_eq!(seqs[1], seqs[0] + 1, "the PSAM raises its sequence");
    assert!(matches!(
        app::load(&mut tx, &mut psam, &id, 1, when()),
        Err(AppError::KeyUnavailable("LOAD"))
    ));
    // the sequence survives the PSAM's restart (its image)
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&psam_img).unwrap()).unwrap();
    assert_eq!(saved["terminal_seq"], seqs[1] + 1);
}

/// Recovery after the card was used again before it: a later purchase replaced the
/// proof (our debit committed) or reused the counter (ours did not). Neither may be
/// settled the wrong way.
#[test]
fn tear_recovery_after_a_later_purchase() {
    for commit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (_v, mut card, mut keys, counter, id) = torn_purchase(dir.path(), commit);
        let mut tx = Transaction::begin(&mut card).unwrap();
        app::read_card(&mut tx).unwrap();
        app::verify_pin(&mut tx, &pin("123456")).unwrap();
        let later = app::initialize_purchase(&mut tx, &mut keys, &id, 300, when()).unwrap();
        let later_counter = later.counter;
        later.debit(&mut tx, &mut keys).unwrap();
        assert_eq!(later_counter, if commit { counter + 1 } else { counter });
        let r = app::recover_purchase(&mut tx, counter, 700, &keys.terminal_id()).unwrap();
        let bal = app::balance(&mut tx).unwrap();
        if commit {
            assert_eq!(r, Recovery::HappenedWithoutProof);
            assert_eq!(bal, 100_000 - 700 - 300);
        } else {
            assert_eq!(r, Recovery::NotHappened);
            assert_eq!(bal, 100_000 - 300);
        }
    }
}
