//! Reproduces every value of `shared/spec/vectors.json` (the contract), read at run time.

use serde_json::Value;
use sscard_driver::crypto::{self, LoadContext, PurchaseContext};
use sscard_driver::{CardId, Key16, KeyPurpose, Region, TerminalId};

fn vectors() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_str()
        .unwrap_or_else(|| panic!("no string at {path}"))
}
fn bytes(v: &Value, path: &str) -> Vec<u8> {
    hex::decode(s(v, path)).unwrap()
}
fn key(v: &Value, path: &str) -> Key16 {
    Key16::from_hex(s(v, path)).unwrap()
}
fn up(b: &[u8]) -> String {
    hex::encode_upper(b)
}
fn arr<const N: usize>(v: &Value, path: &str) -> [u8; N] {
    bytes(v, path).try_into().unwrap()
}
fn u32_of(v: &Value, path: &str) -> u32 {
    u32::from_be_bytes(arr(v, path))
}
fn u16_of(v: &Value, path: &str) -> u16 {
    u16::from_be_bytes(arr(v, path))
}

/// Kc for a purpose from the test master key, through the whole hierarchy.
fn card_key(v: &Value, purpose: &str) -> Key16 {
    let id: CardId = s(v, "hierarchy.card_id").parse().unwrap();
    crypto::card_key_from_master(&key(v, &format!("test_master_keys.{purpose}")), &id)
}

#[test]
fn hierarchy_every_level_and_kcv() {
    let v = vectors();
    let region: Region = s(&v, "hierarchy.region").parse().unwrap();
    let id: CardId = s(&v, "hierarchy.card_id").parse().unwrap();
    let keys = v["hierarchy"]["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 7);
    for (name, _) in keys {
        let p = KeyPurpose::from_name(name).expect("known purpose");
        let base = format!("hierarchy.keys.{name}");
        let k1 = key(&v, &format!("{base}.K1"));
        assert_eq!(
            up(k1.expose()),
            s(&v, &format!("test_master_keys.{}", p.name()))
        );
        let k2 = crypto::derive_k2(&k1, region);
        assert_eq!(up(k2.expose()), s(&v, &format!("{base}.K2")), "{name} K2");
        let k3 = crypto::derive_k3(&k2, region);
        assert_eq!(up(k3.expose()), s(&v, &format!("{base}.K3")), "{name} K3");
        let kc = crypto::derive_card_key(&k3, &id);
        assert_eq!(up(kc.expose()), s(&v, &format!("{base}.Kc")), "{name} Kc");
        assert_eq!(
            up(&crypto::kcv(&kc)),
            s(&v, &format!("{base}.KCV_Kc")),
            "{name} KCV"
        );
    }
}

#[test]
fn kdf_examples() {
    let v = vectors();
    let ex = v["kdf_examples"].as_array().unwrap();
    assert!(!ex.is_empty());
    for e in ex {
        let k = Key16::from_hex(e["key"].as_str().unwrap()).unwrap();
        let label = e["label"].as_str().unwrap().as_bytes();
        let ctx = hex::decode(e["context"].as_str().unwrap()).unwrap();
        let out = crypto::kdf(&k, label, &ctx);
        assert_eq!(up(out.expose()), e["out"].as_str().unwrap());
    }
}

#[test]
fn authentication_cryptograms() {
    let v = vectors();
    let c = crypto::auth_cryptogram(
        &card_key(&v, "EXT"),
        &arr(&v, "external_authenticate.challenge"),
    );
    assert_eq!(up(&c), s(&v, "external_authenticate.cryptogram"));
    let a = crypto::auth_cryptogram(
        &card_key(&v, "INT"),
        &arr(&v, "internal_authenticate.random"),
    );
    assert_eq!(up(&a), s(&v, "internal_authenticate.answer"));
}

fn purchase_ctx(v: &Value) -> PurchaseContext {
    PurchaseContext {
        card_id: s(v, "purchase.card_id").parse().unwrap(),
        amount: u32_of(v, "purchase.amount"),
        counter: u16_of(v, "purchase.counter"),
        random: arr(v, "purchase.random"),
        terminal_id: s(v, "purchase.terminal_id").parse::<TerminalId>().unwrap(),
        terminal_seq: u32_of(v, "purchase.terminal_seq"),
        date: arr(v, "purchase.date"),
        time: arr(v, "purchase.time"),
    }
}

#[test]
fn purchase() {
    let v = vectors();
    let ctx = purchase_ctx(&v);
    // INITIALIZE FOR PURCHASE answer layout (§6 step 1)
    let mut init = u32_of(&v, "purchase.balance").to_be_bytes().to_vec();
    init.extend_from_slice(&ctx.counter.to_be_bytes());
    init.extend_from_slice(&[0, 0, 0, 0x01, 0x01]);
    init.extend_from_slice(&ctx.random);
    assert_eq!(up(&init), s(&v, "purchase.init_response"));
    let sk = ctx.session_key(&card_key(&v, "PURCHASE"));
    assert_eq!(up(sk.expose()), s(&v, "purchase.SK"));
    assert_eq!(up(&ctx.mac1(&sk)), s(&v, "purchase.MAC1"));
    assert_eq!(up(&ctx.mac2(&sk)), s(&v, "purchase.MAC2"));
    assert_eq!(up(&ctx.tac(&card_key(&v, "TAC"))), s(&v, "purchase.TAC"));
    // any other amount gives another MAC1: the vector is not a constant
    let mut other = ctx.clone();
    other.amount += 1;
    assert_ne!(up(&other.mac1(&sk)), s(&v, "purchase.MAC1"));
}

#[test]
fn load() {
    let v = vectors();
    let ctx = LoadContext {
        card_id: s(&v, "load.card_id").parse().unwrap(),
        amount: u32_of(&v, "load.amount"),
        balance: u32_of(&v, "load.balance"),
        online_counter: u16_of(&v, "load.online_counter"),
        random: arr(&v, "load.random"),
        terminal_id: s(&v, "load.terminal_id").parse().unwrap(),
        date: arr(&v, "load.date"),
        time: arr(&v, "load.time"),
    };
    let skl = ctx.session_key(&card_key(&v, "LOAD"));
    assert_eq!(up(skl.expose()), s(&v, "load.SKL"));
    assert_eq!(up(&ctx.mac1(&skl)), s(&v, "load.MAC1"));
    assert_eq!(up(&ctx.mac2(&skl)), s(&v, "load.MAC2"));
    assert_eq!(
        up(&ctx.tac(&card_key(&v, "TAC")).unwrap()),
        s(&v, "load.TAC")
    );
}

/// The three line-protected commands: the whole APDU from the challenge.
fn check_line_mac(v: &Value, name: &str, purpose: &str, header_and_data: (&[u8; 4], Vec<u8>)) {
    let (header, data) = header_and_data;
    let challenge = arr(v, &format!("{name}.challenge"));
    let mac = crypto::line_mac(&card_key(v, purpose), &challenge, *header, &data);
    let mut apdu = header.to_vec();
    apdu.push((data.len() + 4) as u8);
    apdu.extend_from_slice(&data);
    apdu.extend_from_slice(&mac);
    assert_eq!(up(&apdu), s(v, &format!("{name}.apdu")), "{name}");
}

#[test]
fn line_protection_macs() {
    let v = vectors();
    check_line_mac(
        &v,
        "application_block",
        "MAINT",
        (&[0x84, 0x1E, 0, 0], vec![]),
    );
    let pin = bytes(&v, "reload_pin.new_pin");
    check_line_mac(&v, "reload_pin", "PIN", (&[0x84, 0x5E, 0, 0], pin));
    let rec = bytes(&v, "update_record.record");
    let tag = rec[0];
    check_line_mac(&v, "update_record", "MAINT", (&[0x04, 0xDC, tag, 0], rec));
}

#[test]
fn transport_key() {
    let v = vectors();
    let kt = crypto::transport_key(
        &key(&v, "transport_key.K_MANUF"),
        &arr(&v, "transport_key.chip_serial"),
    );
    assert_eq!(up(kt.expose()), s(&v, "transport_key.K_T"));
}

#[test]
fn names_and_aids() {
    let v = vectors();
    // GBK name record: tag 09, length 30, GBK, 00-padded (§1, §3)
    let (gbk, _, bad) = encoding_rs::GBK.encode(s(&v, "name_gbk.name"));
    assert!(!bad);
    let mut rec = vec![0x09, 30];
    rec.extend_from_slice(&gbk);
    rec.resize(32, 0);
    assert_eq!(up(&rec), s(&v, "name_gbk.record"));
    // the application AID is ASCII "sx1.sh." then GBK "社会保障" (§3)
    let (aid_tail, _, _) = encoding_rs::GBK.encode("社会保障");
    let mut aid = b"sx1.sh.".to_vec();
    aid.extend_from_slice(&aid_tail);
    assert_eq!(up(&aid), s(&v, "aid"));
    let mut psam = sscard_driver::types::CARD_ID_MARKER.to_vec();
    psam.extend_from_slice(b"PSAM");
    assert_eq!(up(&psam), s(&v, "psam_aid"));
}

/// Card profile 1.1 §1: the PIN layouts (short, and the fixed blocks a PIN pad fills).
#[test]
fn pin_blocks() {
    use sscard_driver::app::Pin;
    let v = vectors();
    let pin = Pin::new(s(&v, "pin_blocks.pin")).unwrap();
    assert_eq!(up(pin.bcd()), s(&v, "pin_blocks.verify_short"));
    assert_eq!(
        up(&pin.fixed_block().unwrap()[..]),
        s(&v, "pin_blocks.verify_fixed")
    );
    // the odd PIN is the fixed vector's own digits up to its padding
    let odd_fixed = s(&v, "pin_blocks.verify_odd_fixed");
    let odd_digits = odd_fixed.trim_end_matches('F');
    let odd = Pin::new(odd_digits).unwrap();
    assert_eq!(up(&odd.fixed_block().unwrap()[..]), odd_fixed);
    let new = Pin::new("654321").unwrap();
    let short: Vec<u8> = [pin.bcd(), &[0xFF], new.bcd()].concat();
    assert_eq!(
        up(&short),
        s(&v, "pin_blocks.change_short_old_123456_new_654321")
    );
    assert_eq!(
        up(&Pin::change_block(&pin, &new).unwrap()),
        s(&v, "pin_blocks.change_fixed_old_123456_new_654321")
    );
    // twelve digits fill the block exactly
    let twelve = Pin::new("123456789012").unwrap();
    assert_eq!(up(&twelve.fixed_block().unwrap()[..]), "123456789012");
}
