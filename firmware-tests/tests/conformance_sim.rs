//! The conformance suite (`sscard_firmware_tests::conformance`) against the card
//! emulator in the in-process reader, in T=1 and in T=0 mode; and the suite's own
//! tests: its line-MAC commands reproduce `vectors.json`, and faulty cards make the
//! right check fail with a message that names the command and never shows a PIN.
//!
//! The card description is read from `shared/spec/vectors.json` (card id, card keys
//! Kc, holder name, terminal id) and the emulator's default personalization (card
//! number, PIN, balance).

use sscard_driver::keys::{CardKeys, Key16, KeyPurpose};
use sscard_driver::types::{CardId, TerminalId};
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::conformance::{self, run_all, Check, ConformanceCard, CHECKS};
use sscard_firmware_tests::sim::SimReader;
use sscard_firmware_tests::{Reply, VirtualCard};

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spec/vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("shared/spec/vectors.json");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn s<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_else(|| panic!("vectors.json has no {path:?}"))
}

/// The default emulated card as the suite expects it.
fn desc() -> ConformanceCard {
    let v = vectors();
    let card_id: CardId = s(&v, &["hierarchy", "card_id"]).parse().unwrap();
    let keys =
        CardKeys::new(|p| Key16::from_hex(s(&v, &["hierarchy", "keys", p.name(), "Kc"])).unwrap());
    let p = Personalization::default_test_card();
    let name = s(&v, &["name_gbk", "name"]);
    assert_eq!(
        p.name, name,
        "the emulator's default holder is the vectors' name"
    );
    assert_eq!(
        format!("{}D156000005{}", p.region, p.chip_serial.to_uppercase()),
        card_id.to_hex(),
        "the emulator's default card is the vectors' card id"
    );
    let tid: TerminalId = s(&v, &["purchase", "terminal_id"]).parse().unwrap();
    ConformanceCard::new(card_id, p.card_number, name, &p.pin, keys, p.balance, tid).unwrap()
}

fn card(t0: bool) -> EmulatedCard {
    let knobs = Knobs {
        t0,
        ..Knobs::default()
    };
    EmulatedCard::new(&Personalization::default_test_card(), knobs).unwrap()
}

fn mode(t0: bool) -> &'static str {
    if t0 {
        "T=0"
    } else {
        "T=1"
    }
}

fn run_one(check: Check, t0: bool) {
    let mut reader = SimReader::with_card("sim", Box::new(card(t0)));
    if let Err(e) = check(&mut reader, &desc()) {
        panic!("{}: {e}", mode(t0));
    }
}

/// One test per check and mode, each on a fresh card.
macro_rules! each_check {
    ($($name:ident => $check:path),* $(,)?) => {$(
        mod $name {
            #[test]
            fn t1() {
                super::run_one($check, false)
            }
            #[test]
            fn t0() {
                super::run_one($check, true)
            }
        }
    )*};
}

each_check! {
    select_application => sscard_firmware_tests::conformance::check_select_application,
    balance => sscard_firmware_tests::conformance::check_balance,
    records => sscard_firmware_tests::conformance::check_records,
    chip_serial => sscard_firmware_tests::conformance::check_chip_serial,
    get_challenge => sscard_firmware_tests::conformance::check_get_challenge,
    transaction_log => sscard_firmware_tests::conformance::check_transaction_log,
    external_authenticate => sscard_firmware_tests::conformance::check_external_authenticate,
    internal_authenticate => sscard_firmware_tests::conformance::check_internal_authenticate,
    verify_and_reload_pin => sscard_firmware_tests::conformance::check_verify_and_reload_pin,
    change_pin => sscard_firmware_tests::conformance::check_change_pin,
    purchase => sscard_firmware_tests::conformance::check_purchase,
    transaction_proof => sscard_firmware_tests::conformance::check_transaction_proof,
    load => sscard_firmware_tests::conformance::check_load,
    update_record => sscard_firmware_tests::conformance::check_update_record,
    application_block => sscard_firmware_tests::conformance::check_application_block,
    unknown_ins => sscard_firmware_tests::conformance::check_unknown_ins,
    unknown_cla => sscard_firmware_tests::conformance::check_unknown_cla,
}

/// `run_all` twice on the same card: everything passes both times (so the first run
/// left the card as the description says), and the card ends unblocked, with its
/// balance, 3 PIN tries and its insured-status record.
fn run_all_twice(t0: bool) {
    let d = desc();
    let mut reader = SimReader::with_card("sim", Box::new(card(t0)));
    let before = reader.slot().with_card(|c| c.image().clone()).unwrap();
    for round in 1..=2 {
        let results = run_all(&mut reader, &d);
        assert_eq!(results.len(), CHECKS.len() + 1);
        let failed: Vec<String> = results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        assert!(
            failed.is_empty(),
            "{} round {round}:\n{}",
            mode(t0),
            failed.join("\n")
        );
    }
    let after = reader.slot().with_card(|c| c.image().clone()).unwrap();
    assert_eq!(after.balance, before.balance);
    assert_eq!(after.pin_tries, 3);
    assert!(!after.blocked);
    assert_eq!(after.records, before.records);
    assert!(after.counter > before.counter, "the suite made purchases");
}

#[test]
fn run_all_twice_t1() {
    run_all_twice(false)
}

#[test]
fn run_all_twice_t0() {
    run_all_twice(true)
}

/// The suite's line-MAC commands are byte for byte the APDUs of `vectors.json`.
#[test]
fn line_mac_commands_match_the_vectors() {
    let v = vectors();
    let d = desc();
    let ch = |name: &str| -> [u8; 8] {
        hex::decode(s(&v, &[name, "challenge"]))
            .unwrap()
            .try_into()
            .unwrap()
    };
    let apdu = |name: &str| hex::decode(s(&v, &[name, "apdu"])).unwrap();
    let maint = d.keys.get(KeyPurpose::Maint);
    let block = conformance::mac_command(maint, &ch("application_block"), [0x84, 0x1E, 0, 0], &[]);
    assert_eq!(&*block.unwrap().to_bytes(), &apdu("application_block")[..]);
    let pin = hex::decode(s(&v, &["reload_pin", "new_pin"])).unwrap();
    let reload = conformance::mac_command(
        d.keys.get(KeyPurpose::Pin),
        &ch("reload_pin"),
        [0x84, 0x5E, 0, 0],
        &pin,
    );
    assert_eq!(&*reload.unwrap().to_bytes(), &apdu("reload_pin")[..]);
    let record = hex::decode(s(&v, &["update_record", "record"])).unwrap();
    let update = conformance::mac_command(
        maint,
        &ch("update_record"),
        [0x04, 0xDC, record[0], 0],
        &record,
    );
    assert_eq!(&*update.unwrap().to_bytes(), &apdu("update_record")[..]);
    assert_eq!(hex::encode_upper(conformance::aid()), s(&v, &["aid"]));
}

/// A card with one fault, to show the checks can fail.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// DEBIT answers a corrupted MAC2.
    BadMac2,
    /// INS `EE` answers `9000`.
    AcceptsUnknownIns,
    /// READ RECORD ignores a wrong Le and sends the whole record.
    IgnoresLe,
    /// A wrong PIN is accepted.
    AcceptsAnyPin,
    /// GET DATA answers another chip serial.
    WrongSerial,
}

struct Faulty {
    card: EmulatedCard,
    fault: Fault,
}

impl VirtualCard for Faulty {
    fn atr(&self) -> Vec<u8> {
        self.card.atr()
    }
    fn power_on(&mut self) {
        self.card.power_on()
    }
    fn power_off(&mut self) {
        self.card.power_off()
    }
    fn reset(&mut self) {
        self.card.reset()
    }
    fn process(&mut self, c: &[u8]) -> Reply {
        let ins = c.get(1).copied().unwrap_or(0);
        match (self.fault, ins) {
            (Fault::AcceptsUnknownIns, 0xEE) => return Reply::Answer(vec![0x90, 0x00]),
            (Fault::IgnoresLe, 0xB2) if c.len() == 5 && c[3] == 0 && c[4] != 0 => {
                let mut whole = c.to_vec();
                whole[4] = 0;
                return self.card.process(&whole);
            }
            _ => {}
        }
        let reply = self.card.process(c);
        match (self.fault, ins, reply) {
            (Fault::BadMac2, 0x54, Reply::Answer(mut a)) if a.len() == 10 => {
                a[7] ^= 0x01;
                Reply::Answer(a)
            }
            (Fault::WrongSerial, 0xCA, Reply::Answer(mut a)) if a.len() == 10 => {
                a[0] ^= 0x01;
                Reply::Answer(a)
            }
            (Fault::AcceptsAnyPin, 0x20, Reply::Answer(a))
                if c.len() > 5 && a.first() == Some(&0x63) =>
            {
                Reply::Answer(vec![0x90, 0x00])
            }
            (_, _, r) => r,
        }
    }
}

fn faulty_result(fault: Fault, check: Check) -> String {
    let f = Faulty {
        card: card(false),
        fault,
    };
    let mut reader = SimReader::with_card("faulty", Box::new(f));
    match check(&mut reader, &desc()) {
        Ok(()) => panic!("{fault:?}: the check passed a faulty card"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn faulty_cards_fail_the_right_check() {
    let e = faulty_result(Fault::BadMac2, conformance::check_purchase);
    assert!(e.starts_with("DEBIT FOR PURCHASE: expected MAC2"), "{e}");
    let e = faulty_result(Fault::AcceptsUnknownIns, conformance::check_unknown_ins);
    assert!(e.contains("unknown INS") && e.contains("got 9000"), "{e}");
    let e = faulty_result(Fault::IgnoresLe, conformance::check_records);
    assert!(
        e.contains("READ RECORD 01") && e.contains("expected 6C12"),
        "{e}"
    );
    let e = faulty_result(Fault::WrongSerial, conformance::check_chip_serial);
    assert!(e.starts_with("GET DATA chip serial"), "{e}");
    let e = faulty_result(
        Fault::AcceptsAnyPin,
        conformance::check_verify_and_reload_pin,
    );
    assert!(
        e.contains("VERIFY (wrong PIN)") && e.contains("got 9000"),
        "{e}"
    );
    // neither the PIN nor the wrong PIN tried appears in the message
    assert!(!e.contains("123456") && !e.contains("678901"), "{e}");
}

/// The suite does not pass a card it was not told about: another card's keys fail the
/// first cryptographic check.
#[test]
fn another_cards_keys_fail() {
    let mut d = desc();
    d.keys = CardKeys::new(|_| Key16::from_bytes([0x5A; 16]));
    let mut reader = SimReader::with_card("sim", Box::new(card(false)));
    let e = conformance::check_internal_authenticate(&mut reader, &d).unwrap_err();
    assert!(e.to_string().starts_with("INTERNAL AUTHENTICATE"), "{e}");
}
