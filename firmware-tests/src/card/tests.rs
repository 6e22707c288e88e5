//! Unit tests of the emulator through the in-process reader and the driver's
//! `Transaction` (so the T=0 rules are exercised as a terminal sees them).

use super::*;
use crate::sim::SimReader;
use sscard_driver::apdu::ResponseApdu;
use sscard_driver::crypto::PurchaseContext;
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::transport::{Transaction, TransportError};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn reader(knobs: Knobs) -> SimReader {
    let card = EmulatedCard::new(&Personalization::default_test_card(), knobs).unwrap();
    SimReader::with_card("sim", Box::new(card))
}

fn send(tx: &mut Transaction<'_>, apdu: &str) -> ResponseApdu {
    tx.transmit(&CommandApdu::parse(&h(apdu)).unwrap()).unwrap()
}

const SELECT: &str = "00A404000F7378312E73682EC9E7BBE1B1A3D5CF";
const TID: &str = "650200000001";

fn keys() -> CardKeys {
    test_master_keys().card_keys(&"650200D1560000050011223344556677".parse().unwrap())
}

/// Select, verify the PIN and purchase `amount` through INIT and DEBIT; returns the
/// DEBIT response and the context the terminal computed.
fn purchase(tx: &mut Transaction<'_>, amount: u32, seq: u32) -> (ResponseApdu, PurchaseContext) {
    assert!(send(tx, SELECT).sw.is_ok());
    assert!(send(tx, "0020000003123456").sw.is_ok());
    let init = send(tx, &format!("805001020B05{amount:08X}{TID}0F"));
    assert!(init.sw.is_ok(), "{init:?}");
    let d = &init.data;
    let ctx = PurchaseContext {
        card_id: "650200D1560000050011223344556677".parse().unwrap(),
        amount,
        counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[11], d[12], d[13], d[14]],
        terminal_id: TID.parse().unwrap(),
        terminal_seq: seq,
        date: [0x20, 0x26, 0x11, 0x23],
        time: [0x10, 0x00, 0x00],
    };
    let sk = ctx.session_key(keys().get(KeyPurpose::Purchase));
    let mac1 = hex::encode(ctx.mac1(&sk));
    let r = send(tx, &format!("805401000F{seq:08X}20261123100000{mac1}08"));
    (r, ctx)
}

#[test]
fn select_with_fci_and_records() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    let fci = send(&mut tx, &format!("{SELECT}00"));
    assert!(fci.sw.is_ok());
    assert_eq!(fci.data[0], 0x6F);
    assert!(send(&mut tx, "00A4020002EF06").sw.is_ok());
    let name = send(&mut tx, "00B2090000");
    assert_eq!(name.data[..2], [0x09, 30]);
    let (gbk, _, _) = encoding_rs::GBK.encode("张三");
    assert_eq!(&name.data[2..2 + gbk.len()], &gbk[..]);
    // a wrong non-zero Le: the card says 6C20, the transport re-sends
    let raw = send(&mut tx, "00B2090005");
    assert_eq!(raw.data.len(), 32);
    // a record of another EF is not found here
    assert_eq!(send(&mut tx, "00B2070000").sw, StatusWord::RecordNotFound);
    assert!(send(&mut tx, "00A4020002EF05").sw.is_ok());
    assert_eq!(
        send(&mut tx, "00B2070000").data,
        h("0709 413635303230303031")
    );
    assert_eq!(send(&mut tx, "00A4020002EF99").sw, StatusWord::FileNotFound);
    assert_eq!(send(&mut tx, "80CA000108").data, h("0011223344556677"));
    assert_eq!(send(&mut tx, "00EE000000").sw, StatusWord::InsNotSupported);
    assert_eq!(send(&mut tx, "A0B2010000").sw, StatusWord::ClaNotSupported);
}

#[test]
fn t0_mode_answers_61xx_and_get_response() {
    let mut r = reader(Knobs {
        t0: true,
        ..Knobs::default()
    });
    assert_eq!(r.slot().with_card(|c| c.atr()).unwrap(), T0_ATR.to_vec());
    let mut tx = Transaction::begin(&mut r).unwrap();
    assert!(send(&mut tx, SELECT).sw.is_ok());
    // internal authenticate is case 4: the transport chains GET RESPONSE
    let a = send(&mut tx, "00880002080102030405060708 10");
    assert!(a.sw.is_ok());
    assert_eq!(
        a.data,
        crypto::auth_cryptogram(keys().get(KeyPurpose::Int), &[1, 2, 3, 4, 5, 6, 7, 8])
    );
    drop(tx);
    // raw: the card itself answers 6110
    let Reply::Answer(raw) = r
        .slot()
        .with_card(|c| c.process(&h("00880002080102030405060708 10")))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(raw, h("6110"));
}

#[test]
fn pin_right_wrong_blocked_and_reload() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    assert_eq!(
        send(&mut tx, "0020000000").sw,
        StatusWord::WrongPin { tries_left: 3 }
    );
    assert_eq!(
        send(&mut tx, "0020000003111111").sw,
        StatusWord::WrongPin { tries_left: 2 }
    );
    assert_eq!(send(&mut tx, "0020000003123456").sw, StatusWord::Ok);
    assert_eq!(
        send(&mut tx, "0020000000").sw,
        StatusWord::WrongPin { tries_left: 3 }
    );
    for left in [2, 1] {
        assert_eq!(
            send(&mut tx, "0020000003111111").sw,
            StatusWord::WrongPin { tries_left: left }
        );
    }
    assert_eq!(
        send(&mut tx, "0020000003111111").sw,
        StatusWord::AuthMethodBlocked
    );
    assert_eq!(
        send(&mut tx, "0020000003123456").sw,
        StatusWord::AuthMethodBlocked
    );
    // RELOAD PIN with the PIN key's line MAC
    let ch: [u8; 8] = send(&mut tx, "0084000008").data.try_into().unwrap();
    let mac = crypto::line_mac(
        keys().get(KeyPurpose::Pin),
        &ch,
        [0x84, 0x5E, 0, 0],
        &h("654321"),
    );
    assert!(
        send(&mut tx, &format!("845E000007654321{}", hex::encode(mac)))
            .sw
            .is_ok()
    );
    assert!(send(&mut tx, "0020000003654321").sw.is_ok());
    // CHANGE PIN back; a wrong old PIN costs a try
    assert_eq!(
        send(&mut tx, "805E010004AAFF1234").sw,
        StatusWord::IncorrectData
    );
    assert_eq!(
        send(&mut tx, "805E010007111111FF123456").sw,
        StatusWord::WrongPin { tries_left: 2 }
    );
    assert!(send(&mut tx, "805E010007654321FF123456").sw.is_ok());
    assert!(send(&mut tx, "0020000003123456").sw.is_ok());
}

#[test]
fn external_authentication_blocks_after_five_failures() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    let ch: [u8; 8] = send(&mut tx, "0084000008").data.try_into().unwrap();
    let c = crypto::auth_cryptogram(keys().get(KeyPurpose::Ext), &ch);
    assert!(send(&mut tx, &format!("0082000110{}", hex::encode(c)))
        .sw
        .is_ok());
    // the challenge is valid for one command only
    assert_eq!(
        send(&mut tx, &format!("0082000110{}", hex::encode(c))).sw,
        StatusWord::ConditionsNotSatisfied
    );
    for i in 0..5 {
        send(&mut tx, "0084000008");
        let sw = send(&mut tx, &format!("0082000110{}", "00".repeat(16))).sw;
        let want = if i < 4 {
            StatusWord::AuthenticationFailed
        } else {
            StatusWord::AuthMethodBlocked
        };
        assert_eq!(sw, want, "failure {i}");
    }
}

#[test]
fn purchase_mac2_tac_proof_and_log() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    let (resp, ctx) = purchase(&mut tx, 1234, 0x102);
    assert!(resp.sw.is_ok(), "{resp:?}");
    let sk = ctx.session_key(keys().get(KeyPurpose::Purchase));
    assert_eq!(resp.data[..4], ctx.tac(keys().get(KeyPurpose::Tac)));
    assert_eq!(resp.data[4..], ctx.mac2(&sk));
    assert_eq!(
        send(&mut tx, "805C000204").data,
        (100_000u32 - 1234).to_be_bytes()
    );
    let proof = send(&mut tx, &format!("805A000602{:04X}08", ctx.counter));
    assert_eq!(proof.data, resp.data);
    assert_eq!(
        send(&mut tx, &format!("805A000602{:04X}08", ctx.counter + 1)).sw,
        StatusWord::MacNotAvailable
    );
    let log = send(&mut tx, "00B201C417");
    assert_eq!(log.data[..2], ctx.counter.to_be_bytes());
    assert_eq!(log.data[5..9], 1234u32.to_be_bytes());
    assert_eq!(log.data[9], 0x06);
    assert_eq!(send(&mut tx, "00B202C417").sw, StatusWord::RecordNotFound);
    // the next purchase uses counter + 1
    let (_, ctx2) = purchase(&mut tx, 1, 0x103);
    assert_eq!(ctx2.counter, ctx.counter + 1);
}

#[test]
fn purchase_errors_change_nothing() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    assert_eq!(
        send(&mut tx, &format!("805001020B0500000001{TID}0F")).sw,
        StatusWord::SecurityStatusNotSatisfied
    );
    send(&mut tx, "0020000003123456");
    assert_eq!(
        send(&mut tx, &format!("805001020B0500000000{TID}0F")).sw,
        StatusWord::IncorrectData
    );
    assert_eq!(
        send(&mut tx, &format!("805001020B0500989681{TID}0F")).sw,
        StatusWord::InsufficientFunds
    );
    assert_eq!(
        send(&mut tx, &format!("805001020B0400000001{TID}0F")).sw,
        StatusWord::KeyIndexNotSupported
    );
    assert!(send(&mut tx, &format!("805001020B0500000001{TID}0F"))
        .sw
        .is_ok());
    assert_eq!(
        send(&mut tx, "805401000F00000001202611231000000000000008").sw,
        StatusWord::MacInvalid
    );
    assert_eq!(send(&mut tx, "805C000204").data, 100_000u32.to_be_bytes());
    assert_eq!(send(&mut tx, "00B201C417").sw, StatusWord::RecordNotFound);
}

fn purchase_expect_tear(tx: &mut Transaction<'_>) -> TransportError {
    send(tx, SELECT);
    send(tx, "0020000003123456");
    let init = send(tx, &format!("805001020B0500000064{TID}0F"));
    let d = &init.data;
    let ctx = PurchaseContext {
        card_id: "650200D1560000050011223344556677".parse().unwrap(),
        amount: 100,
        counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[11], d[12], d[13], d[14]],
        terminal_id: TID.parse().unwrap(),
        terminal_seq: 9,
        date: [0x20, 0x26, 0x11, 0x23],
        time: [0x10, 0, 0],
    };
    let mac1 = hex::encode(ctx.mac1(&ctx.session_key(keys().get(KeyPurpose::Purchase))));
    let cmd = CommandApdu::parse(&h(&format!("805401000F0000000920261123100000{mac1}08"))).unwrap();
    tx.transmit(&cmd).unwrap_err()
}

#[test]
fn tear_outcome_is_on_the_card_image() {
    for commit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let knobs = Knobs {
            tear: Some(Tear {
                ins: 0x54,
                nth: 1,
                commit,
            }),
            ..Knobs::default()
        };
        let card =
            EmulatedCard::open_image(&path, knobs, Personalization::default_test_card).unwrap();
        let mut r = SimReader::with_card("sim", Box::new(card));
        {
            let mut tx = Transaction::begin(&mut r).unwrap();
            let e = purchase_expect_tear(&mut tx);
            assert!(matches!(e, TransportError::CardRemoved), "{e}");
        }
        assert!(!r.slot().is_present(), "the torn card left the reader");
        // the card comes back: a fresh process reads its image
        let card =
            EmulatedCard::open_image(&path, Knobs::default(), Personalization::default_test_card)
                .unwrap();
        let counter = card.image().counter;
        let mut r = SimReader::with_card("sim", Box::new(card));
        let mut tx = Transaction::begin(&mut r).unwrap();
        send(&mut tx, SELECT);
        let bal = u32::from_be_bytes(send(&mut tx, "805C000204").data.try_into().unwrap());
        let proof = send(&mut tx, "805A0006020000 08");
        if commit {
            assert_eq!((bal, counter), (100_000 - 100, 1));
            assert!(proof.sw.is_ok());
            assert_eq!(proof.data.len(), 8);
        } else {
            assert_eq!((bal, counter), (100_000, 0));
            assert_eq!(proof.sw, StatusWord::MacNotAvailable);
        }
    }
}

#[test]
fn load_credit_and_tac() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    send(&mut tx, "0020000003123456");
    let init = send(&mut tx, &format!("805000020B060000C350{TID}10"));
    assert!(init.sw.is_ok(), "{init:?}");
    let d = &init.data;
    let mut ctx = LoadContext {
        card_id: "650200D1560000050011223344556677".parse().unwrap(),
        amount: 50_000,
        balance: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        online_counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[8], d[9], d[10], d[11]],
        terminal_id: TID.parse().unwrap(),
        date: [0x20, 0x26, 0x11, 0x23],
        time: [0x10, 0, 0],
    };
    let skl = ctx.session_key(keys().get(KeyPurpose::Load));
    assert_eq!(d[12..16], ctx.mac1(&skl), "card's MAC1");
    let mac2 = hex::encode(ctx.mac2(&skl));
    let tac = send(&mut tx, &format!("805200000B20261123100000{mac2}04"));
    assert!(tac.sw.is_ok(), "{tac:?}");
    assert_eq!(tac.data, ctx.tac(keys().get(KeyPurpose::Tac)).unwrap());
    assert_eq!(send(&mut tx, "805C000204").data, 150_000u32.to_be_bytes());
    // over 2^31 - 1 is refused
    ctx.amount = i32::MAX as u32;
    assert_eq!(
        send(&mut tx, &format!("805000020B06{:08X}{TID}10", ctx.amount)).sw,
        StatusWord::IncorrectData
    );
}

#[test]
fn block_and_unblock() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    let mac = |tx: &mut Transaction<'_>, ins: u8| {
        let ch: [u8; 8] = send(tx, "0084000008").data.try_into().unwrap();
        hex::encode(crypto::line_mac(
            keys().get(KeyPurpose::Maint),
            &ch,
            [0x84, ins, 0, 0],
            &[],
        ))
    };
    // no challenge: security status; a wrong MAC: MAC invalid
    assert_eq!(
        send(&mut tx, "841E00000400000000").sw,
        StatusWord::SecurityStatusNotSatisfied
    );
    let m = mac(&mut tx, 0x1E);
    assert_eq!(
        send(&mut tx, "841E00000400000000").sw,
        StatusWord::MacInvalid
    );
    let m2 = mac(&mut tx, 0x1E);
    assert_ne!(m, m2);
    assert!(send(&mut tx, &format!("841E000004{m2}")).sw.is_ok());
    assert_eq!(send(&mut tx, SELECT).sw, StatusWord::ApplicationBlocked);
    // EF05 and EF06 stay readable so a terminal can identify the card
    assert!(send(&mut tx, "00A4020002EF05").sw.is_ok());
    assert_eq!(
        send(&mut tx, "00B2070000").data,
        h("0709 413635303230303031")
    );
    assert_eq!(
        send(&mut tx, "805C000204").sw,
        StatusWord::ConditionsNotSatisfied
    );
    let m = mac(&mut tx, 0x18);
    assert!(send(&mut tx, &format!("8418000004{m}")).sw.is_ok());
    assert!(send(&mut tx, SELECT).sw.is_ok());
    assert!(send(&mut tx, "805C000204").sw.is_ok());
}

#[test]
fn update_record_with_maint_mac() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    send(&mut tx, "00A4020002EF15");
    let ch: [u8; 8] = send(&mut tx, "0084000008").data.try_into().unwrap();
    let mac = crypto::line_mac(
        keys().get(KeyPurpose::Maint),
        &ch,
        [0x04, 0xDC, 0x22, 0],
        &h("220102"),
    );
    assert!(
        send(&mut tx, &format!("04DC220007220102{}", hex::encode(mac)))
            .sw
            .is_ok()
    );
    assert_eq!(send(&mut tx, "00B2220000").data, h("220102"));
}

#[test]
fn image_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    let card =
        EmulatedCard::open_image(&path, Knobs::default(), Personalization::default_test_card)
            .unwrap();
    let mut r = SimReader::with_card("sim", Box::new(card));
    {
        let mut tx = Transaction::begin(&mut r).unwrap();
        let (resp, _) = purchase(&mut tx, 500, 1);
        assert!(resp.sw.is_ok());
        send(&mut tx, "0020000003999999");
    }
    let img = CardImage::load(&path).unwrap();
    assert_eq!(
        (img.balance, img.counter, img.pin_tries, img.log.len()),
        (99_500, 1, 2, 1)
    );
    assert!(!format!("{img:?}").contains(&img.keys["PURCHASE"]));
    std::fs::write(&path, b"{\"version\":1").unwrap();
    assert!(matches!(
        CardImage::load(&path),
        Err(ImageError::Corrupt { .. })
    ));
    assert!(matches!(
        CardImage::load(&dir.path().join("none.json")),
        Err(ImageError::Missing(_))
    ));
}

#[test]
fn mute_card_times_out() {
    let mut r = reader(Knobs {
        mute: true,
        ..Knobs::default()
    });
    let mut tx = Transaction::begin(&mut r).unwrap();
    let e = tx
        .transmit(&CommandApdu::parse(&h(SELECT)).unwrap())
        .unwrap_err();
    assert!(matches!(e, TransportError::Timeout(_)));
}

#[test]
fn any_bytes_get_a_status_word() {
    let mut card = EmulatedCard::default_test_card();
    for len in 0..40usize {
        for seed in 0..16u8 {
            let b: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
                .collect();
            match card.process(&b) {
                Reply::Answer(a) => assert!(a.len() >= 2),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn tear_spec_parsing() {
    assert_eq!(
        Knobs::parse_tear("54:2:nocommit").unwrap(),
        Tear {
            ins: 0x54,
            nth: 2,
            commit: false
        }
    );
    assert_eq!(
        Knobs::parse_tear("54:1").unwrap(),
        Tear {
            ins: 0x54,
            nth: 1,
            commit: true
        }
    );
    assert!(Knobs::parse_tear("zz:1").is_err());
    assert!(Knobs::parse_tear("54:0").is_err());
    assert!(Knobs::parse_tear("54:1:maybe").is_err());
}
