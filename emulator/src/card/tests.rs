//! Unit tests of the emulator through the in-process reader and the driver's
//! `Transaction` (so the T=0 rules are exercised as a terminal sees them).

use super::*;
use crate::sim::{SimReader, SimSlot};
use sscard_driver::apdu::ResponseApdu;
use sscard_driver::atr::Atr;
use sscard_driver::crypto::PurchaseContext;
use sscard_driver::testkeys::{test_manufacturer_key, test_master_keys};
use sscard_driver::transport::{CardTransport, Protocol};
use sscard_driver::transport::{Transaction, TransportError};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn reader(knobs: Knobs) -> SimReader<EmulatedCard> {
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
    // Lc that does not match the command: 6700; bad P1-P2: 6A86
    assert_eq!(send(&mut tx, "00A4020001EF").sw, StatusWord::WrongLength);
    assert_eq!(send(&mut tx, "0084000004").sw, StatusWord::WrongLength);
    assert_eq!(send(&mut tx, "805C000104").sw, StatusWord::IncorrectP1P2);
    assert_eq!(send(&mut tx, "00B201C717").sw, StatusWord::IncorrectP1P2);
    // another application's name is not found
    assert_eq!(
        send(&mut tx, "00A4040005A000000003").sw,
        StatusWord::FileNotFound
    );
    // after a failed SELECT by name nothing is selected any more
    assert_eq!(
        send(&mut tx, "805C000204").sw,
        StatusWord::ConditionsNotSatisfied
    );
}

#[test]
fn select_without_le_and_before_the_application() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    // EFs are inside the application only
    assert_eq!(send(&mut tx, "00A4020002EF05").sw, StatusWord::FileNotFound);
    assert!(send(&mut tx, "00A40000023F00").sw.is_ok());
    assert_eq!(
        send(&mut tx, "0020000003123456").sw,
        StatusWord::ConditionsNotSatisfied
    );
    let plain = send(&mut tx, SELECT);
    assert!(plain.sw.is_ok());
    assert!(plain.data.is_empty(), "no FCI without Le");
    // GET DATA answers in every state
    assert_eq!(send(&mut tx, "80CA000108").data, h("0011223344556677"));
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
    // the log holds a load record (type 02) with the online counter used
    let log = send(&mut tx, "00B201C417");
    assert_eq!(log.data[..2], ctx.online_counter.to_be_bytes());
    assert_eq!(log.data[5..9], 50_000u32.to_be_bytes());
    assert_eq!(log.data[9], 0x02);
    // the online counter went up; the purse (offline) counter did not
    let again = send(&mut tx, &format!("805000020B0600000001{TID}10"));
    assert_eq!(
        again.data[4..6],
        (ctx.online_counter + 1).to_be_bytes(),
        "online counter"
    );
    let (_, p) = purchase(&mut tx, 1, 7);
    assert_eq!(p.counter, 0, "purchase counter untouched by loads");
    // a wrong MAC2 changes nothing
    send(&mut tx, "0020000003123456");
    assert!(send(&mut tx, &format!("805000020B0600000064{TID}10"))
        .sw
        .is_ok());
    assert_eq!(
        send(&mut tx, "805200000B2026112310000000000000").sw,
        StatusWord::MacInvalid
    );
    assert_eq!(send(&mut tx, "805C000204").data, 149_999u32.to_be_bytes());
    // no PIN since selection: 6982
    send(&mut tx, SELECT);
    assert_eq!(
        send(&mut tx, &format!("805000020B0600000001{TID}10")).sw,
        StatusWord::SecurityStatusNotSatisfied
    );
    // over 2^31 - 1 is refused
    send(&mut tx, "0020000003123456");
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

#[test]
fn log_is_cyclic_with_ten_records() {
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    for i in 0..12u32 {
        let (resp, _) = purchase(&mut tx, 10 + i, i);
        assert!(resp.sw.is_ok(), "purchase {i}: {resp:?}");
    }
    // record 1 is the newest (counter 11), record 10 the oldest kept (counter 2)
    for n in 1..=10u16 {
        let rec = send(&mut tx, &format!("00B2{n:02X}C417"));
        assert_eq!(rec.data.len(), 23);
        assert_eq!(rec.data[..2], (12 - n).to_be_bytes(), "record {n}");
        assert_eq!(rec.data[5..9], (10 + 12 - n as u32).to_be_bytes());
    }
    assert_eq!(send(&mut tx, "00B20BC417").sw, StatusWord::RecordNotFound);
    assert_eq!(send(&mut tx, "00B200C417").sw, StatusWord::RecordNotFound);
}

#[test]
fn failed_save_answers_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("cards");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("card.json");
    let card =
        EmulatedCard::open_image(&path, Knobs::default(), Personalization::default_test_card)
            .unwrap();
    let mut r = SimReader::with_card("sim", Box::new(card));
    // the directory disappears: the next save cannot happen
    std::fs::remove_dir_all(&sub).unwrap();
    let mut tx = Transaction::begin(&mut r).unwrap();
    let (resp, ctx) = purchase(&mut tx, 700, 3);
    assert_eq!(resp.sw.to_bytes(), [0x65, 0x81], "{resp:?}");
    assert_eq!(send(&mut tx, "805C000204").data, 100_000u32.to_be_bytes());
    assert_eq!(
        send(&mut tx, &format!("805A000602{:04X}08", ctx.counter)).sw,
        StatusWord::MacNotAvailable
    );
    // a failed save of a wrong PIN try does not pretend either
    assert_eq!(
        send(&mut tx, "0020000003999999").sw.to_bytes(),
        [0x65, 0x81]
    );
    drop(tx);
    assert_eq!(
        r.slot().with_card(|c| c.image().pin_tries).unwrap(),
        PIN_TRIES
    );
}

#[test]
fn get_response_wrong_le_and_nothing_pending() {
    let mut card = EmulatedCard::new(
        &Personalization::default_test_card(),
        Knobs {
            t0: true,
            ..Knobs::default()
        },
    )
    .unwrap();
    let mut raw = |apdu: &str| match card.process(&h(apdu)) {
        Reply::Answer(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(raw(SELECT), h("9000"));
    assert_eq!(raw("00C0000010"), h("6985"), "nothing pending");
    assert_eq!(raw("00880002080102030405060708 10"), h("6110"));
    assert_eq!(raw("00C0000008"), h("6C10"), "wrong Le");
    let a = raw("00C0000010");
    assert_eq!(a.len(), 18);
    assert_eq!(a[16..], [0x90, 0x00]);
    assert_eq!(raw("00C0000010"), h("6985"), "taken already");
    // case 2 commands answer directly in T=0 too
    assert_eq!(raw("805C000204"), h("000186A0 9000"));
}

#[test]
fn knobs_change_at_run_time_through_the_slot() {
    let mut r = reader(Knobs::default());
    let slot = r.slot().clone();
    {
        let mut tx = Transaction::begin(&mut r).unwrap();
        assert!(send(&mut tx, SELECT).sw.is_ok());
        slot.with_card(|c| {
            c.set_knobs(Knobs {
                mute: true,
                ..Knobs::default()
            })
        })
        .unwrap();
        let e = tx
            .transmit(&CommandApdu::parse(&h("805C000204")).unwrap())
            .unwrap_err();
        assert!(matches!(e, TransportError::Timeout(_)), "{e}");
        slot.with_card(|c| c.set_knobs(Knobs::default())).unwrap();
        assert!(send(&mut tx, "805C000204").sw.is_ok());
    }
    // T=0 switched on: the status and ATR follow
    assert_eq!(r.status().unwrap().protocol, Some(Protocol::T1));
    slot.with_card(|c| {
        c.set_knobs(Knobs {
            t0: true,
            ..Knobs::default()
        })
    })
    .unwrap();
    let st = r.status().unwrap();
    assert_eq!((st.atr, st.protocol), (T0_ATR.to_vec(), Some(Protocol::T0)));
    // a delay is felt by the terminal
    slot.with_card(|c| {
        c.set_knobs(Knobs {
            delay_ms: 50,
            ..Knobs::default()
        })
    })
    .unwrap();
    let t = std::time::Instant::now();
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, "80CA000108");
    assert!(t.elapsed() >= std::time::Duration::from_millis(50));
}

#[test]
fn reset_power_cycles_and_a_new_card_needs_reconnecting() {
    let mut r = reader(Knobs::default()).require_reconnect(true);
    {
        let mut tx = Transaction::begin(&mut r).unwrap();
        send(&mut tx, SELECT);
        assert!(send(&mut tx, "0020000003123456").sw.is_ok());
    }
    assert_eq!(r.reset().unwrap(), t1_atr());
    {
        // selection and PIN state are gone
        let mut tx = Transaction::begin(&mut r).unwrap();
        assert_eq!(
            send(&mut tx, "805C000204").sw,
            StatusWord::ConditionsNotSatisfied
        );
        send(&mut tx, SELECT);
        assert_eq!(
            send(&mut tx, &format!("805001020B0500000001{TID}0F")).sw,
            StatusWord::SecurityStatusNotSatisfied
        );
    }
    // pulled out: the reader knows its card is gone
    let card = r.slot().remove().unwrap();
    assert!(matches!(
        Transaction::begin(&mut r).err(),
        Some(TransportError::NoCard)
    ));
    assert!(!r.status().unwrap().present);
    assert!(matches!(r.reset(), Err(TransportError::NoCard)));
    // put back: stale until the reader takes it up, as through PC/SC; a transaction
    // does, and says it is on a new presentation
    r.slot().insert(card);
    assert!(!r.status().unwrap().present);
    {
        let raw = r.begin().unwrap();
        assert!(raw.new_presentation());
    }
    assert!(r.status().unwrap().present);
    assert!(!r.begin().unwrap().new_presentation(), "the same one now");
    let mut tx = Transaction::begin(&mut r).unwrap();
    assert!(send(&mut tx, SELECT).sw.is_ok());
    drop(tx);
    // an empty reader given a card later connects to it without a reset
    let slot = SimSlot::<EmulatedCard>::new();
    let mut late = SimReader::new("late", slot.clone()).require_reconnect(true);
    assert!(matches!(
        Transaction::begin(&mut late).err(),
        Some(TransportError::NoCard)
    ));
    slot.insert(Box::new(EmulatedCard::default_test_card()));
    assert!(Transaction::begin(&mut late).is_ok());
    // the default reader follows the slot: no card, then the new card
    let mut easy = SimReader::new("easy", SimSlot::<EmulatedCard>::new());
    easy.slot()
        .insert(Box::new(EmulatedCard::default_test_card()));
    assert!(Transaction::begin(&mut easy).is_ok());
    let card = easy.slot().remove().unwrap();
    assert!(matches!(
        Transaction::begin(&mut easy).err(),
        Some(TransportError::NoCard)
    ));
    easy.slot().insert(card);
    let mut tx = Transaction::begin(&mut easy).unwrap();
    assert!(send(&mut tx, SELECT).sw.is_ok());
}

#[test]
fn a_transaction_is_bound_to_its_card() {
    let mut r = reader(Knobs::default());
    let slot = r.slot().clone();
    let mut tx = Transaction::begin(&mut r).unwrap();
    assert!(send(&mut tx, SELECT).sw.is_ok());
    // another card is swapped in mid-transaction: the transaction is over
    slot.insert(Box::new(EmulatedCard::default_test_card()));
    let e = tx
        .transmit(&CommandApdu::parse(&h("805C000204")).unwrap())
        .unwrap_err();
    assert!(matches!(e, TransportError::CardRemoved), "{e}");
}

#[test]
fn torn_card_in_memory_can_be_put_back() {
    let mut r = reader(Knobs {
        tear: Some(Tear {
            ins: 0x54,
            nth: 2,
            commit: true,
        }),
        ..Knobs::default()
    });
    {
        let mut tx = Transaction::begin(&mut r).unwrap();
        let (first, _) = purchase(&mut tx, 100, 1);
        assert!(first.sw.is_ok(), "the first DEBIT is not torn");
        let e = purchase_expect_tear(&mut tx);
        assert!(matches!(e, TransportError::CardRemoved), "{e}");
        // the rest of the transaction finds no card
        let e = tx
            .transmit(&CommandApdu::parse(&h("805C000204")).unwrap())
            .unwrap_err();
        assert!(matches!(e, TransportError::CardRemoved));
    }
    assert!(!r.slot().is_present());
    let (balance, counter) = r
        .slot()
        .with_torn(|c| (c.image().balance, c.image().counter))
        .unwrap();
    assert_eq!(
        (balance, counter),
        (100_000 - 200, 2),
        "committed before the tear"
    );
    assert!(r.slot().reinsert());
    assert!(!r.slot().reinsert(), "only once");
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    let proof = send(&mut tx, "805A000602000108");
    assert!(proof.sw.is_ok(), "the torn debit's proof: {proof:?}");
    // the tear was one-shot
    let (again, _) = purchase(&mut tx, 1, 3);
    assert!(again.sw.is_ok());
}

#[test]
fn atrs_are_valid_iso7816_3() {
    let t0 = Atr::parse(&T0_ATR).unwrap();
    assert_eq!(t0.protocols(), vec![Protocol::T0]);
    let t1 = Atr::parse(&t1_atr()).unwrap();
    assert_eq!(t1.protocols(), vec![Protocol::T1]);
    assert_eq!(t1.ifsc(), 254);
    // a T=1 ATR with a wrong TCK is refused by the parser, so ours is right
    let mut bad = t1_atr();
    *bad.last_mut().unwrap() ^= 1;
    assert!(Atr::parse(&bad).is_err());
    for atr in [T0_ATR.to_vec(), t1_atr()] {
        assert!(
            atr.windows(7).any(|w| w == b"SSC-AES"),
            "historical bytes name the product"
        );
    }
    let custom = Knobs {
        atr: AtrChoice::Custom("3B00".into()),
        ..Knobs::default()
    };
    assert_eq!(custom.atr_bytes(), h("3B00"));
    let forced = Knobs {
        t0: true,
        atr: AtrChoice::T1,
        ..Knobs::default()
    };
    assert_eq!(forced.atr_bytes(), t1_atr());
}

#[test]
fn a_card_with_given_keys_uses_them() {
    let mine = CardKeys::new(|p| Key16::from_bytes([p.id(); 16]));
    let card = EmulatedCard::with_keys(
        &Personalization::default_test_card(),
        &mine,
        Knobs::default(),
    )
    .unwrap();
    let mut r = SimReader::with_card("sim", Box::new(card));
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    let a = send(&mut tx, "00880002080102030405060708 10");
    assert_eq!(
        a.data,
        crypto::auth_cryptogram(mine.get(KeyPurpose::Int), &[1, 2, 3, 4, 5, 6, 7, 8])
    );
    assert_ne!(
        a.data,
        crypto::auth_cryptogram(keys().get(KeyPurpose::Int), &[1, 2, 3, 4, 5, 6, 7, 8])
    );
    // a bad personalization record is refused with a reason
    let mut p = Personalization::default_test_card();
    p.pin = "12a4".into();
    assert!(matches!(
        EmulatedCard::new(&p, Knobs::default()),
        Err(ImageError::Invalid(_))
    ));
    p = Personalization::default_test_card();
    p.name = "张".repeat(16);
    assert!(EmulatedCard::new(&p, Knobs::default()).is_err());
}

#[test]
fn default_test_card_is_the_vectors_card() {
    let card = EmulatedCard::default_test_card();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors.json");
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // every card id the vectors use is this card's
    let mut ids = Vec::new();
    collect_card_ids(&vectors, &mut ids);
    assert!(!ids.is_empty());
    for id in ids {
        assert!(id.eq_ignore_ascii_case(&card.card_id().to_hex()), "{id}");
    }
    assert_eq!(card.image().balance, 100_000);
    assert_eq!(card.image().record(0x07).unwrap(), b"A65020001");
}

#[test]
fn blank_chip_answers_get_data_only() {
    let serial = [9, 8, 7, 6, 5, 4, 3, 2];
    let mut chip = EmulatedCard::blank(serial, &test_manufacturer_key(), Knobs::default());
    let mut raw = |apdu: &str| match chip.process(&h(apdu)) {
        Reply::Answer(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(raw("80CA000108"), h("0908070605040302 9000"));
    assert_ne!(raw(SELECT)[..], [0x90, 0x00]);
    assert_ne!(raw("805C000204")[..], [0x90, 0x00]);
    // any VirtualCard goes into the default (dyn) reader, as the daemon holds it
    let mut r: SimReader = SimReader::with_card("blank", Box::new(chip));
    let t: &mut dyn CardTransport = &mut r;
    let mut tx = Transaction::begin(t).unwrap();
    assert_eq!(send(&mut tx, "80CA000108").data, serial);
}

fn collect_card_ids(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match x {
                    serde_json::Value::String(s) if k == "card_id" => out.push(s.clone()),
                    _ => collect_card_ids(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_card_ids(x, out)),
        _ => {}
    }
}

/// Card profile 1.1 §1: VERIFY and CHANGE PIN in the fixed 6-byte blocks a PIN pad
/// fills, from `shared/spec/vectors.json` (`pin_blocks`), beside the short forms.
#[test]
fn pins_in_the_fixed_blocks_of_a_pin_pad() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "{} not there: the vectors are checked in the driver's copy",
            path.display()
        );
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let b = |k: &str| v["pin_blocks"][k].as_str().unwrap().to_string();
    let verify = |data: &str| format!("00200000{:02X}{data}", data.len() / 2);
    let mut r = reader(Knobs::default());
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    assert!(send(&mut tx, &verify(&b("verify_short"))).sw.is_ok());
    assert!(send(&mut tx, &verify(&b("verify_fixed"))).sw.is_ok());
    // a digit after the padding is no PIN
    assert_eq!(
        send(&mut tx, &verify("123456FF1FFF")).sw,
        StatusWord::IncorrectData
    );
    // CHANGE PIN in the fixed layout (Lc = 13), then the short form back
    let fixed = b("change_fixed_old_123456_new_654321");
    assert!(
        send(&mut tx, &format!("805E0100{:02X}{fixed}", fixed.len() / 2))
            .sw
            .is_ok()
    );
    assert!(send(&mut tx, &verify("654321")).sw.is_ok());
    assert!(send(&mut tx, "805E010007654321FF123456").sw.is_ok());
    assert!(send(&mut tx, &verify(&b("verify_fixed"))).sw.is_ok());
    // the odd PIN's fixed block, on a card whose PIN has five digits
    drop(tx);
    let odd = b("verify_odd_fixed");
    let mut p = Personalization::default_test_card();
    p.pin = odd.trim_end_matches('F').to_string();
    let mut r = SimReader::with_card(
        "sim",
        Box::new(EmulatedCard::new(&p, Knobs::default()).unwrap()),
    );
    let mut tx = Transaction::begin(&mut r).unwrap();
    send(&mut tx, SELECT);
    assert!(send(&mut tx, &verify(&odd)).sw.is_ok());
}
