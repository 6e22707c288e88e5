//! The conformance suite through the real stack (pcscd → vpcd → `sscard-vcard`), in
//! T=1 and T=0. Set `SSCARD_CONFORMANCE_READER` to run it against a real card in a real
//! reader instead (its description must then match the default test card).
//! Run under `scripts/with-pcscd` (scripts/test does).

use sscard_driver::keys::{CardKeys, Key16};
use sscard_driver::transport::pcsc::{PcscContext, ShareMode};
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::CardTransport;
use sscard_driver::types::{CardId, TerminalId};
use sscard_firmware_tests::card::Personalization;
use sscard_firmware_tests::conformance::{run_all, ConformanceCard};
use sscard_firmware_tests::reader_conformance::ReaderSpec;
use sscard_firmware_tests::testbed::Vcard;

/// The default card, described from vectors.json (read at run time).
fn desc() -> ConformanceCard {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spec/vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = |p: &[&str]| {
        p.iter()
            .fold(&v, |v, k| &v[*k])
            .as_str()
            .unwrap()
            .to_string()
    };
    let card_id: CardId = s(&["hierarchy", "card_id"]).parse().unwrap();
    let keys =
        CardKeys::new(|p| Key16::from_hex(&s(&["hierarchy", "keys", p.name(), "Kc"])).unwrap());
    let p = Personalization::default_test_card();
    let tid: TerminalId = s(&["purchase", "terminal_id"]).parse().unwrap();
    ConformanceCard::new(
        card_id,
        p.card_number,
        s(&["name_gbk", "name"]),
        &p.pin,
        keys,
        p.balance,
        tid,
    )
    .unwrap()
}

fn run(card: &mut dyn CardTransport, label: &str) {
    let results = run_all(card, &desc());
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        results.len() > 10,
        "{label}: only {} checks ran",
        results.len()
    );
    assert!(failed.is_empty(), "{label}: {failed:#?}");
}

#[test]
fn conformance_through_pcscd_t1_and_t0() {
    // the variable the reader suite reads too: `pcsc:NAME` (or a bare name) or
    // `serial:PATH[:MODEL]`, whose card slot the card suite then runs on
    if let Some(spec) = ReaderSpec::from_env() {
        let spec = spec.unwrap_or_else(|e| panic!("SSCARD_CONFORMANCE_READER: {e}"));
        let label = spec.to_string();
        match spec {
            ReaderSpec::Pcsc { reader } => {
                let ctx = PcscContext::establish().unwrap();
                let mut card = ctx.connect(&reader, ShareMode::Exclusive, None).unwrap();
                return run(&mut card, &label);
            }
            ReaderSpec::Serial { path, model } => {
                let r = SerialReader::open(&path, model).unwrap();
                let mut card = r.connect(0).unwrap();
                return run(&mut card, &label);
            }
        }
    }
    for args in [&[][..], &["--t0"][..]] {
        let v = Vcard::start(args);
        let mut card = v.connect();
        run(&mut card, &format!("vcard {args:?}"));
    }
}
