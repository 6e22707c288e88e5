//! Property tests: every parser of untrusted bytes (APDU, ATR, SIMPLE-TLV, BER-TLV)
//! returns a value or an error on any input, never panics; encoding what parsed gives
//! the same bytes back.

use proptest::prelude::*;
use sscard_driver::apdu::{CommandApdu, ResponseApdu};
use sscard_driver::atr::{Atr, AtrError, InterfaceGroup};
use sscard_driver::tlv::{BerTlv, SimpleTlv};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Fi by TA1's high nibble and Di by its low nibble (ISO 7816-3 Tables 7 and 8).
const FI: [(u8, u32); 12] = [
    (0, 372),
    (1, 372),
    (2, 558),
    (3, 744),
    (4, 1116),
    (5, 1488),
    (6, 1860),
    (9, 512),
    (10, 768),
    (11, 1024),
    (12, 1536),
    (13, 2048),
];
const DI: [(u8, u32); 9] = [
    (1, 1),
    (2, 2),
    (3, 4),
    (4, 8),
    (5, 16),
    (6, 32),
    (7, 64),
    (8, 12),
    (9, 20),
];

/// One generated interface group: which of TA/TB/TC it has, and the protocol its TD
/// names (if a group follows).
#[derive(Clone, Debug)]
struct Group {
    ta: Option<u8>,
    tb: Option<u8>,
    tc: Option<u8>,
    proto: u8,
}

fn group() -> impl Strategy<Value = Group> {
    (
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        0u8..=15,
    )
        .prop_map(|(ta, tb, tc, proto)| Group { ta, tb, tc, proto })
}

/// The Y nibble announcing a group.
fn y(g: &Group, td: bool) -> u8 {
    u8::from(g.ta.is_some())
        | u8::from(g.tb.is_some()) << 1
        | u8::from(g.tc.is_some()) << 2
        | u8::from(td) << 3
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn apdu_parsers_never_panic(b in bytes(600)) {
        if let Ok(c) = CommandApdu::parse(&b) {
            prop_assert_eq!(CommandApdu::parse(&c.to_bytes()).unwrap(), c);
        }
        if let Ok(r) = ResponseApdu::parse(&b) {
            prop_assert_eq!(r.to_bytes(), b);
        }
    }

    #[test]
    fn atr_parser_never_panics(b in bytes(40)) {
        if let Ok(a) = Atr::parse(&b) {
            prop_assert_eq!(a.as_bytes(), &b[..]);
            let _ = a.describe();
        }
    }

    #[test]
    fn atr_parser_on_atr_shaped_bytes(ts in prop_oneof![Just(0x3Bu8), Just(0x3F)], rest in bytes(32)) {
        let mut b = vec![ts];
        b.extend(rest);
        if let Ok(a) = Atr::parse(&b) {
            let _ = (a.protocols(), a.baud_rate(3_571_200), a.ifsc(), a.describe());
        }
    }

    /// Built ATRs: random interface-byte chains (1 to 4 groups, any TA/TB/TC, any
    /// protocol in the TDs), TA1 from the ISO tables or absent, historical bytes and a
    /// right TCK parse back to the groups, protocols, Fi/Di and baud rate they were
    /// built from; a changed TCK is reported with the right one.
    #[test]
    fn generated_atrs_parse(
        mut groups in proptest::collection::vec(group(), 1..=4),
        ta1 in proptest::option::of((0..FI.len(), 0..DI.len())),
        hist in bytes(11),
        flip in 1u8..=255,
    ) {
        groups[0].ta = ta1.map(|(f, d)| FI[f].0 << 4 | DI[d].0);
        let n = groups.len();
        let mut b = vec![0x3B, y(&groups[0], n > 1) << 4 | hist.len() as u8];
        let mut want = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            b.extend(g.ta.iter().chain(&g.tb).chain(&g.tc));
            let td = (i + 1 < n).then(|| y(&groups[i + 1], i + 2 < n) << 4 | g.proto);
            b.extend(td);
            want.push(InterfaceGroup { ta: g.ta, tb: g.tb, tc: g.tc, td });
        }
        b.extend(&hist);
        let offered: Vec<u8> = groups[..n - 1].iter().map(|g| g.proto).collect();
        let with_tck = offered.iter().any(|t| *t != 0);
        if with_tck {
            b.push(b[1..].iter().fold(0, |x, y| x ^ y));
        }
        let a = Atr::parse(&b).unwrap();
        prop_assert_eq!(&a.groups, &want);
        prop_assert_eq!(&a.historical, &hist);
        let mut protocols: Vec<u8> = Vec::new();
        for t in offered.into_iter().filter(|t| *t != 15) {
            if !protocols.contains(&t) {
                protocols.push(t);
            }
        }
        if protocols.is_empty() {
            protocols.push(0);
        }
        prop_assert_eq!(a.protocol_numbers(), protocols);
        let (fi, di) = ta1.map_or((372, 1), |(f, d)| (FI[f].1, DI[d].1));
        prop_assert_eq!((a.fi(), a.di()), (Some(fi), Some(di)));
        prop_assert_eq!(a.baud_rate(3_571_200), Some((3_571_200u64 * di as u64 / fi as u64) as u32));
        let _ = a.describe();
        if with_tck {
            let tck = b[b.len() - 1];
            prop_assert_eq!(a.tck, Some(tck));
            let last = b.len() - 1;
            b[last] ^= flip;
            prop_assert_eq!(
                Atr::parse(&b),
                Err(AtrError::TckMismatch { expected: tck, got: tck ^ flip })
            );
        } else {
            prop_assert_eq!(a.tck, None);
        }
    }

    /// Reserved TA1 nibbles are reported as unknown Fi / Di, not as numbers.
    #[test]
    fn rfu_ta1_is_unknown(fi in prop_oneof![Just(7u8), Just(8), Just(14), Just(15)],
                          di in prop_oneof![Just(0u8), 10u8..=15]) {
        let b = [0x3B, 0x10, fi << 4 | 1];
        let a = Atr::parse(&b).unwrap();
        prop_assert_eq!((a.fi(), a.di()), (None, Some(1)));
        prop_assert_eq!(a.baud_rate(3_571_200), None);
        let b = [0x3B, 0x10, 0x10 | di];
        let a = Atr::parse(&b).unwrap();
        prop_assert_eq!((a.fi(), a.di()), (Some(372), None));
        prop_assert!(a.describe().contains("reserved"));
    }

    #[test]
    fn simple_tlv_never_panics(b in bytes(300)) {
        if let Ok(all) = SimpleTlv::parse_all(&b) {
            let again: Vec<u8> = all.iter().flat_map(|t| t.to_bytes().unwrap()).collect();
            // the short form is canonical for lengths under FF
            prop_assert_eq!(SimpleTlv::parse_all(&again).unwrap(), all);
        }
    }

    #[test]
    fn simple_tlv_round_trip(tag in 1u8..=0xFE, value in bytes(400)) {
        let t = SimpleTlv::new(tag, value);
        prop_assert_eq!(SimpleTlv::parse_exact(&t.to_bytes().unwrap()).unwrap(), t);
    }

    #[test]
    fn ber_tlv_never_panics(b in bytes(300)) {
        if let Ok(all) = BerTlv::parse_all(&b) {
            let again: Vec<u8> = all.iter().flat_map(|t| t.to_bytes()).collect();
            prop_assert_eq!(BerTlv::parse_all(&again).unwrap(), all);
        }
    }
}
