//! End to end through the real stack: pcscd → vpcd → `sscard-vcard`, with the driver's
//! PC/SC backend and `Transaction` (T=0 rules), raw APDUs and the profile's crypto.
//! Run under `scripts/with-pcscd` (scripts/test does).

use sscard_driver::apdu::{CommandApdu, ResponseApdu};
use sscard_driver::crypto::{self, LoadContext, PurchaseContext};
use sscard_driver::keys::{CardKeys, KeyPurpose};
use sscard_driver::status::StatusWord;
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::transport::pcsc::{PcscContext, ReaderEvent};
use sscard_driver::transport::{CardTransport, Protocol, Transaction, TransportError};
use sscard_driver::CardId;
use sscard_firmware_tests::testbed::{SlotLease, Vcard};
use std::time::{Duration, Instant};

const SELECT: &str = "00A404000F7378312E73682EC9E7BBE1B1A3D5CF";
const TID: &str = "650200000001";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}
fn send(tx: &mut Transaction<'_>, apdu: &str) -> ResponseApdu {
    tx.transmit(&CommandApdu::parse(&h(apdu)).unwrap()).unwrap()
}
fn card_id() -> CardId {
    "650200D1560000050011223344556677".parse().unwrap()
}
fn keys() -> CardKeys {
    test_master_keys().card_keys(&card_id())
}

#[test]
fn atr_protocol_and_every_record_t1() {
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    let st = card.status().unwrap();
    assert!(st.present);
    assert_eq!(st.protocol, Some(Protocol::T1));
    assert_eq!(st.atr[0], 0x3B);
    let mut tx = Transaction::begin(&mut card).unwrap();
    assert!(send(&mut tx, SELECT).sw.is_ok());
    let expect: [(&str, &[u8]); 3] = [
        ("EF05", &[0x01, 0x02, 0x03, 0x05, 0x06, 0x07]),
        ("EF06", &[0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D]),
        ("EF15", &[0x20, 0x21, 0x22]),
    ];
    for (ef, tags) in expect {
        assert!(send(&mut tx, &format!("00A40200 02 {ef}")).sw.is_ok());
        for tag in tags {
            let r = send(&mut tx, &format!("00B2{tag:02X}0000"));
            assert!(r.sw.is_ok(), "{ef} {tag:02X}: {r:?}");
            assert_eq!(r.data[0], *tag);
            assert_eq!(r.data[1] as usize, r.data.len() - 2);
        }
    }
    send(&mut tx, "00A4020002EF05");
    assert_eq!(send(&mut tx, "00B2010000").data[2..], *card_id().as_bytes());
}

#[test]
fn t0_card_get_response_chains_and_6c() {
    let v = Vcard::start(&["--t0"]);
    let mut card = v.connect();
    assert_eq!(card.status().unwrap().protocol, Some(Protocol::T0));
    let mut tx = Transaction::begin(&mut card).unwrap();
    // SELECT with Le: the FCI comes through 61xx + GET RESPONSE
    let fci = send(&mut tx, &format!("{SELECT}00"));
    assert!(fci.sw.is_ok());
    assert_eq!(fci.data[0], 0x6F);
    // INTERNAL AUTHENTICATE (case 4) through a GET RESPONSE chain
    let r = send(&mut tx, "00880002080102030405060708 10");
    assert_eq!(
        r.data,
        crypto::auth_cryptogram(keys().get(KeyPurpose::Int), &[1, 2, 3, 4, 5, 6, 7, 8])
    );
    // READ RECORD with a wrong non-zero Le: 6C20, resent by the transport
    send(&mut tx, "00A4020002EF06");
    let name = send(&mut tx, "00B2090004");
    assert!(name.sw.is_ok());
    assert_eq!(name.data.len(), 32);
}

#[test]
fn pin_right_wrong_blocked() {
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    send(&mut tx, SELECT);
    assert_eq!(
        send(&mut tx, "0020000000").sw,
        StatusWord::WrongPin { tries_left: 3 }
    );
    assert!(send(&mut tx, "0020000003123456").sw.is_ok());
    for left in [2, 1] {
        assert_eq!(
            send(&mut tx, "0020000003000000").sw,
            StatusWord::WrongPin { tries_left: left }
        );
    }
    assert_eq!(
        send(&mut tx, "0020000003000000").sw,
        StatusWord::AuthMethodBlocked
    );
    assert_eq!(
        send(&mut tx, "0020000003123456").sw,
        StatusWord::AuthMethodBlocked
    );
}

#[test]
fn a_vpcd_reader_is_no_pin_pad_and_says_so() {
    use sscard_driver::transport::pinpad::PadRequest;
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    // GET_FEATURE_REQUEST went to the reader at connect; vpcd lists no feature
    assert!(!card.capabilities().pin_pad);
    let mut tx = Transaction::begin(&mut card).unwrap();
    send(&mut tx, SELECT);
    for r in [PadRequest::verify(5), PadRequest::change(5)] {
        assert!(matches!(
            tx.pin_pad(&r),
            Err(TransportError::Unsupported(_))
        ));
    }
    // and the card is still there to talk to: no try was used
    assert_eq!(
        send(&mut tx, "0020000000").sw,
        StatusWord::WrongPin { tries_left: 3 }
    );
}

#[test]
fn external_and_internal_authentication() {
    let v = Vcard::start(&[]);
    let mut card = v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    send(&mut tx, SELECT);
    let ch: [u8; 8] = send(&mut tx, "0084000008").data.try_into().unwrap();
    let c = crypto::auth_cryptogram(keys().get(KeyPurpose::Ext), &ch);
    assert!(send(&mut tx, &format!("0082000110{}", hex::encode(c)))
        .sw
        .is_ok());
    send(&mut tx, "0084000008");
    assert_eq!(
        send(&mut tx, &format!("0082000110{}", hex::encode(c))).sw,
        StatusWord::AuthenticationFailed
    );
    let r: [u8; 8] = rand::random();
    let ans = send(&mut tx, &format!("0088000208{}10", hex::encode(r)));
    assert_eq!(
        ans.data,
        crypto::auth_cryptogram(keys().get(KeyPurpose::Int), &r)
    );
    // a card with other keys is not genuine: its answer differs
    let other = crypto::auth_cryptogram(&sscard_driver::Key16::from_bytes([9; 16]), &r);
    assert_ne!(ans.data, other);
}

/// INIT → MAC1 → DEBIT; returns the DEBIT answer (or transport error) and the context.
fn purchase(
    tx: &mut Transaction<'_>,
    amount: u32,
    seq: u32,
) -> (Result<ResponseApdu, TransportError>, PurchaseContext) {
    assert!(send(tx, SELECT).sw.is_ok());
    assert!(send(tx, "0020000003123456").sw.is_ok());
    let init = send(tx, &format!("805001020B05{amount:08X}{TID}0F"));
    assert!(init.sw.is_ok(), "{init:?}");
    let d = &init.data;
    let ctx = PurchaseContext {
        card_id: card_id(),
        amount,
        counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[11], d[12], d[13], d[14]],
        terminal_id: TID.parse().unwrap(),
        terminal_seq: seq,
        date: [0x20, 0x26, 0x11, 0x23],
        time: [0x12, 0x30, 0x00],
    };
    let sk = ctx.session_key(keys().get(KeyPurpose::Purchase));
    let mac1 = hex::encode(ctx.mac1(&sk));
    let cmd =
        CommandApdu::parse(&h(&format!("805401000F{seq:08X}20261123123000{mac1}08"))).unwrap();
    (tx.transmit(&cmd), ctx)
}

#[test]
fn purchase_verified_against_mac2_and_tac_then_load() {
    let v = Vcard::start(&["--t0"]);
    let mut card = v.connect();
    let mut tx = Transaction::begin(&mut card).unwrap();
    let (r, ctx) = purchase(&mut tx, 1234, 77);
    let r = r.unwrap();
    assert!(r.sw.is_ok(), "{r:?}");
    let sk = ctx.session_key(keys().get(KeyPurpose::Purchase));
    assert_eq!(r.data[4..], ctx.mac2(&sk), "MAC2");
    assert_eq!(r.data[..4], ctx.tac(keys().get(KeyPurpose::Tac)), "TAC");
    assert_eq!(
        send(&mut tx, "805C000204").data,
        (100_000u32 - 1234).to_be_bytes()
    );
    // load 500.00 CNY back
    let init = send(&mut tx, &format!("805000020B060000C350{TID}10"));
    assert!(init.sw.is_ok(), "{init:?}");
    let d = &init.data;
    let lctx = LoadContext {
        card_id: card_id(),
        amount: 50_000,
        balance: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        online_counter: u16::from_be_bytes([d[4], d[5]]),
        random: [d[8], d[9], d[10], d[11]],
        terminal_id: TID.parse().unwrap(),
        date: [0x20, 0x26, 0x11, 0x23],
        time: [0x12, 0x31, 0x00],
    };
    let skl = lctx.session_key(keys().get(KeyPurpose::Load));
    assert_eq!(d[12..16], lctx.mac1(&skl));
    let tac = send(
        &mut tx,
        &format!("805200000B20261123123100{}04", hex::encode(lctx.mac2(&skl))),
    );
    assert_eq!(tac.data, lctx.tac(keys().get(KeyPurpose::Tac)).unwrap());
    assert_eq!(
        send(&mut tx, "805C000204").data,
        (100_000u32 - 1234 + 50_000).to_be_bytes()
    );
}

#[test]
fn tear_after_debit_then_proof_when_the_card_is_back() {
    for commit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("card.json");
        let tear = format!("54:1:{}", if commit { "commit" } else { "nocommit" });
        let v = Vcard::start(&[
            "--image",
            image.to_str().unwrap(),
            "--tear-after",
            &tear,
            "--reinsert-ms",
            "200",
        ]);
        let mut card = v.connect();
        let counter = {
            let mut tx = Transaction::begin(&mut card).unwrap();
            let (r, ctx) = purchase(&mut tx, 500, 5);
            let e = r.unwrap_err();
            assert!(e.outcome_unknown(), "{e}");
            ctx.counter
        };
        // the card comes back by itself after 200 ms; reconnect and settle
        let deadline = Instant::now() + Duration::from_secs(10);
        let atr = loop {
            match card.reset() {
                Ok(a) if !a.is_empty() => break a,
                _ => {
                    assert!(Instant::now() < deadline, "card never came back");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert_eq!(atr[0], 0x3B);
        let mut tx = Transaction::begin(&mut card).unwrap();
        send(&mut tx, SELECT);
        let proof = send(&mut tx, &format!("805A000602{counter:04X}08"));
        let balance = u32::from_be_bytes(send(&mut tx, "805C000204").data.try_into().unwrap());
        if commit {
            assert!(proof.sw.is_ok(), "{proof:?}");
            assert_eq!(balance, 100_000 - 500);
        } else {
            assert_eq!(proof.sw, StatusWord::MacNotAvailable);
            assert_eq!(balance, 100_000);
        }
    }
}

#[test]
fn readers_and_card_events() {
    let lease = SlotLease::acquire();
    let reader = lease.reader.clone();
    let ctx = PcscContext::establish().unwrap();
    assert!(ctx.list_readers().unwrap().contains(&reader));
    let mut mon = ctx.monitor().unwrap();
    // first wait reports what is there now
    let first = mon.wait(Duration::from_millis(100)).unwrap();
    assert!(
        first.contains(&ReaderEvent::ReaderAdded(reader.clone())),
        "{first:?}"
    );
    let mut v = Vcard::start_in(lease, &[]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|e| matches!(e, ReaderEvent::CardInserted { reader: r, .. } if *r == reader))
    {
        assert!(Instant::now() < deadline, "no insertion event: {seen:?}");
        seen.extend(mon.wait(Duration::from_millis(500)).unwrap());
    }
    v.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|e| {
        *e == ReaderEvent::CardRemoved {
            reader: reader.clone(),
        }
    }) {
        assert!(Instant::now() < deadline, "no removal event: {seen:?}");
        seen.extend(mon.wait(Duration::from_millis(500)).unwrap());
    }
}

#[test]
fn no_card_and_unknown_reader_are_clean_errors() {
    let lease = SlotLease::acquire();
    let ctx = PcscContext::establish().unwrap();
    let e = ctx
        .connect(
            &lease.reader,
            sscard_driver::transport::pcsc::ShareMode::Shared,
            None,
        )
        .err()
        .expect("no card in the slot");
    assert!(
        matches!(e, TransportError::NoCard | TransportError::Timeout(_)),
        "{e}"
    );
    let e = ctx
        .connect(
            "no such reader",
            sscard_driver::transport::pcsc::ShareMode::Shared,
            None,
        )
        .err()
        .unwrap();
    assert!(matches!(e, TransportError::NoReader(_)), "{e}");
}

/// A card swapped while nobody waits on the monitor leaves the presence bit set; pcscd's
/// event counter moved twice, and the monitor reports a removal and an insertion.
#[test]
fn a_swap_between_two_waits_is_a_removal_and_an_insertion() {
    let lease = SlotLease::acquire();
    let reader = lease.reader.clone();
    let ctx = PcscContext::establish().unwrap();
    let v = Vcard::start_in(lease, &["--serial", "1111111111111111"]);
    let mut mon = ctx.monitor().unwrap();
    // drain what is there now (the card present)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = mon.wait(Duration::from_millis(100)).unwrap();
    while !seen
        .iter()
        .any(|e| matches!(e, ReaderEvent::CardInserted { reader: r, .. } if *r == reader))
    {
        assert!(Instant::now() < deadline, "no card: {seen:?}");
        seen.extend(mon.wait(Duration::from_millis(200)).unwrap());
    }
    while !mon.wait(Duration::from_millis(200)).unwrap().is_empty() {}
    // out and another card in, the monitor not waiting meanwhile
    let lease = v.into_lease();
    let _w = Vcard::start_in(lease, &["--serial", "2222222222222222"]);
    let ours = |e: &ReaderEvent| match e {
        ReaderEvent::CardRemoved { reader: r } | ReaderEvent::CardInserted { reader: r, .. } => {
            *r == reader
        }
        _ => false,
    };
    let events: Vec<ReaderEvent> = mon
        .wait(Duration::from_secs(2))
        .unwrap()
        .into_iter()
        .filter(ours)
        .collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                ReaderEvent::CardRemoved { .. },
                ReaderEvent::CardInserted { .. }
            ]
        ),
        "{events:?}"
    );
}
