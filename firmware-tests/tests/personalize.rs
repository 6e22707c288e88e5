//! Personalization end to end, in-process: the office side (`sscard_driver::personalize`)
//! against the card side (`sscard_firmware_tests::perso::Chip`), including a card
//! interrupted after every single command and resumed, wrong batch keys, the issued
//! state being final, and the issuance journal.

use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::personalize::{
    self, IssuanceJournal, IssuerKeys, Mode, Outcome, PersoError, PersoRecord,
};
use sscard_driver::testkeys::{test_manufacturer_key, test_master_keys};
use sscard_driver::transport::{
    CardStatus, CardTransport, RawTransaction, Transaction, TransportError,
};
use sscard_driver::{crypto, CardId};
use sscard_firmware_tests::perso::{Chip, IssueFactory, IssuedData};
use sscard_firmware_tests::{Reply, VirtualCard};
use std::sync::{Arc, Mutex};

/// What the factory saw at FINALIZE: card id, key check values, PIN, record count.
type Seen = Option<(CardId, Vec<[u8; 3]>, String, usize)>;
type Issued = Arc<Mutex<Seen>>;

/// A stand-in for the issued card: answers every command `9000`.
struct IssuedStub;
impl VirtualCard for IssuedStub {
    fn atr(&self) -> Vec<u8> {
        vec![0x3B, 0x00]
    }
    fn power_on(&mut self) {}
    fn power_off(&mut self) {}
    fn reset(&mut self) {}
    fn process(&mut self, _: &[u8]) -> Reply {
        Reply::Answer(vec![0x90, 0x00])
    }
}

fn factory(issued: Issued) -> IssueFactory {
    Box::new(move |d: IssuedData| {
        let kcvs = KeyPurpose::ALL
            .iter()
            .map(|p| crypto::kcv(d.keys.get(*p)))
            .collect();
        *issued.lock().unwrap() = Some((d.card_id, kcvs, d.pin.to_string(), d.records.len()));
        Box::new(IssuedStub)
    })
}

fn chip(serial: [u8; 8], issued: Issued) -> Chip {
    Chip::blank(serial, &test_manufacturer_key(), factory(issued))
}

/// Test-only transport over a chip that is "pulled" after `budget` more commands.
struct Reader {
    chip: Chip,
    budget: Option<usize>,
    sent: usize,
}
struct Tx<'a>(&'a mut Reader);
impl RawTransaction for Tx<'_> {
    fn transmit_raw(&mut self, c: &[u8]) -> Result<Vec<u8>, TransportError> {
        if let Some(b) = &mut self.0.budget {
            if *b == 0 {
                return Err(TransportError::CardRemoved);
            }
            *b -= 1;
        }
        self.0.sent += 1;
        match self.0.chip.process(c) {
            Reply::Answer(a) => Ok(a),
            _ => Err(TransportError::CardRemoved),
        }
    }
}
impl CardTransport for Reader {
    fn reader_name(&self) -> String {
        "test".into()
    }
    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        Ok(Box::new(Tx(self)))
    }
    fn status(&mut self) -> Result<CardStatus, TransportError> {
        Ok(CardStatus {
            present: true,
            atr: self.chip.atr(),
            protocol: None,
        })
    }
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        self.chip.reset();
        Ok(self.chip.atr())
    }
}

fn reader(chip: Chip, budget: Option<usize>) -> Reader {
    Reader {
        chip,
        budget,
        sent: 0,
    }
}

fn record(number: &str) -> PersoRecord {
    serde_json::from_value(serde_json::json!({
        "card_number": number, "ssn": "650102199001011234", "name": "张三", "gender": "1",
        "nation": "01", "birthplace": "650102", "birth_date": "1990-01-01",
        "issue_date": "2026-01-01", "expiry_date": "2036-01-01", "insured_category": "01",
        "pooling_region": "650200", "region": "650200", "pin": "123456"
    }))
    .unwrap()
}

fn keys() -> IssuerKeys {
    IssuerKeys::test_keys("650200".parse().unwrap())
}

const SERIAL: [u8; 8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];

fn expected_kcvs(id: &CardId) -> Vec<[u8; 3]> {
    let ck = test_master_keys().card_keys(id);
    KeyPurpose::ALL
        .iter()
        .map(|p| crypto::kcv(ck.get(*p)))
        .collect()
}

fn run(r: &mut Reader, rec: &PersoRecord, mode: Mode) -> Result<CardId, PersoError> {
    let mut tx = Transaction::begin(r).unwrap();
    personalize::personalize(&mut tx, &keys(), rec, mode)
}

#[test]
fn blank_to_issued() {
    let issued: Issued = Default::default();
    let mut r = reader(chip(SERIAL, issued.clone()), None);
    let id = run(&mut r, &record("A65020001"), Mode::Resume).unwrap();
    // the vectors' card id: region ‖ D156000005 ‖ serial
    assert_eq!(CardId::new("650200".parse().unwrap(), SERIAL), id);
    let (cid, kcvs, pin, nrec) = issued.lock().unwrap().clone().unwrap();
    assert_eq!(cid, id);
    assert_eq!(kcvs, expected_kcvs(&id), "card keys are the hierarchy's Kc");
    assert_eq!(pin, "123456");
    assert_eq!(nrec, 15, "14 records written plus the card id");
    // ISSUED is final: personalization is refused, status says issued
    let e = run(&mut r, &record("A65020001"), Mode::Restart).unwrap_err();
    assert!(matches!(e, PersoError::AlreadyIssued), "{e}");
    let mut tx = Transaction::begin(&mut r).unwrap();
    let (_, st) = personalize::read_status(&mut tx).unwrap();
    assert_eq!(st.life_cycle, 2);
}

#[test]
fn interrupted_after_every_command_then_resumed() {
    let total = {
        let mut r = reader(chip(SERIAL, Default::default()), None);
        run(&mut r, &record("A65020001"), Mode::Resume).unwrap();
        r.sent
    };
    assert!(total > 20, "{total}");
    for cut in 0..total {
        let issued: Issued = Default::default();
        let mut r = reader(chip(SERIAL, issued.clone()), Some(cut));
        assert!(
            run(&mut r, &record("A65020001"), Mode::Resume).is_err(),
            "cut after {cut} commands still finished"
        );
        // the card was pulled: power cycle, then resume
        r.chip.power_off();
        r.chip.power_on();
        r.budget = None;
        let id = run(&mut r, &record("A65020001"), Mode::Resume)
            .unwrap_or_else(|e| panic!("resume after cut {cut}: {e}"));
        let (_, kcvs, pin, nrec) = issued.lock().unwrap().clone().unwrap();
        assert_eq!(kcvs, expected_kcvs(&id), "cut {cut}");
        assert_eq!((pin.as_str(), nrec), ("123456", 15), "cut {cut}");
    }
}

#[test]
fn restart_rewrites_everything() {
    let issued: Issued = Default::default();
    let mut r = reader(chip(SERIAL, issued.clone()), Some(12));
    assert!(run(&mut r, &record("A65020001"), Mode::Resume).is_err());
    r.chip.reset();
    r.budget = None;
    let mut rec = record("A65020001");
    rec.pin = "7654321".to_string().into();
    run(&mut r, &rec, Mode::Restart).unwrap();
    assert_eq!(issued.lock().unwrap().clone().unwrap().2, "7654321");
}

#[test]
fn wrong_batch_key_counts_down_then_blocks() {
    let mut r = reader(chip(SERIAL, Default::default()), None);
    let region = "650200".parse().unwrap();
    let m = test_master_keys();
    let wrong = IssuerKeys::new(
        region,
        KeyPurpose::ALL
            .iter()
            .map(|p| (*p, m.k3(*p, region)))
            .collect(),
        Key16::from_bytes([0x42; 16]),
    )
    .unwrap();
    let mut tx = Transaction::begin(&mut r).unwrap();
    for left in (1..5).rev() {
        match personalize::personalize(&mut tx, &wrong, &record("A65020001"), Mode::Resume) {
            Err(PersoError::WrongTransportKey { failures_left }) => assert_eq!(failures_left, left),
            other => panic!("{other:?}"),
        }
    }
    let e =
        personalize::personalize(&mut tx, &wrong, &record("A65020001"), Mode::Resume).unwrap_err();
    assert!(matches!(e, PersoError::TransportKeyBlocked), "{e}");
    // even the right batch key cannot revive it
    let e =
        personalize::personalize(&mut tx, &keys(), &record("A65020001"), Mode::Resume).unwrap_err();
    assert!(matches!(e, PersoError::TransportKeyBlocked), "{e}");
}

#[test]
fn commands_without_session_are_refused_and_blank_cards_have_no_application() {
    let mut c = chip(SERIAL, Default::default());
    let Reply::Answer(a) = c.process(&hex::decode("84E0000007650200AABBCCDD").unwrap()) else {
        panic!()
    };
    assert_eq!(a, [0x69, 0x82]);
    let aid = "00A404000F7378312E73682EC9E7BBE1B1A3D5CF";
    let Reply::Answer(a) = c.process(&hex::decode(aid).unwrap()) else {
        panic!()
    };
    assert_eq!(
        a,
        [0x6A, 0x82],
        "terminals cannot select a card that is not ISSUED"
    );
}

#[test]
fn bad_records_are_refused_before_any_command() {
    let mut r = reader(chip(SERIAL, Default::default()), None);
    let short_number = record("A6502");
    assert!(matches!(
        run(&mut r, &short_number, Mode::Resume),
        Err(PersoError::BadRecord(_))
    ));
    let mut other_city = record("A65020001");
    other_city.region = "110100".into();
    assert!(matches!(
        run(&mut r, &other_city, Mode::Resume),
        Err(PersoError::BadRecord(_))
    ));
    assert_eq!(r.sent, 0, "nothing reached the card");
}

#[test]
fn issuance_journal_never_issues_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("issuance.db");
    let j = IssuanceJournal::open(&path).unwrap();
    // first card: interrupted part-way, then the batch is run again after a "crash"
    let mut r1 = reader(chip(SERIAL, Default::default()), Some(9));
    {
        let mut tx = Transaction::begin(&mut r1).unwrap();
        let o = j.issue(&mut tx, &keys(), &record("A65020001"));
        assert!(matches!(o, Outcome::Failed { .. }), "{o:?}");
    }
    assert_eq!(j.get("A65020001").unwrap().unwrap().2, "failed");
    drop(j);
    let j = IssuanceJournal::open(&path).unwrap();
    r1.chip.reset();
    r1.budget = None;
    let mut tx = Transaction::begin(&mut r1).unwrap();
    let o = j.issue(&mut tx, &keys(), &record("A65020001"));
    assert!(matches!(o, Outcome::Issued { .. }), "{o:?}");
    let o = j.issue(&mut tx, &keys(), &record("A65020001"));
    assert!(matches!(o, Outcome::AlreadyIssued { .. }), "{o:?}");
    let o = j.issue(&mut tx, &keys(), &record("A65020002"));
    assert!(
        matches!(&o, Outcome::Failed { reason, .. } if reason.contains("A65020001")),
        "{o:?}"
    );
    drop(tx);
    let mut r2 = reader(chip([0x10, 0, 0, 0, 0, 0, 0, 2], Default::default()), None);
    let mut tx = Transaction::begin(&mut r2).unwrap();
    let o = j.issue(&mut tx, &keys(), &record("A65020002"));
    assert!(
        matches!(&o, Outcome::Issued { card_id, .. } if card_id.ends_with("1000000000000002")),
        "{o:?}"
    );
}

#[test]
fn chip_image_survives_a_power_cut_mid_personalization() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.json");
    let issued: Issued = Default::default();
    let open = || {
        Chip::open_image(
            &path,
            SERIAL,
            &test_manufacturer_key(),
            factory(issued.clone()),
        )
        .unwrap()
    };
    let mut r = reader(open(), Some(15));
    assert!(run(&mut r, &record("A65020001"), Mode::Resume).is_err());
    drop(r);
    let c = open();
    assert_ne!(c.state().steps(), 0, "steps done before the cut were kept");
    let mut r = reader(c, None);
    run(&mut r, &record("A65020001"), Mode::Resume).unwrap();
    drop(r);
    let c = open();
    assert!(
        c.state().transport_key.is_none(),
        "K_T is erased once issued"
    );
    assert_eq!(issued.lock().unwrap().clone().unwrap().3, 15);
}
