//! Property tests: every parser of untrusted bytes (APDU, ATR, SIMPLE-TLV, BER-TLV)
//! returns a value or an error on any input, never panics; encoding what parsed gives
//! the same bytes back.

use proptest::prelude::*;
use sscard_driver::apdu::{CommandApdu, ResponseApdu};
use sscard_driver::atr::Atr;
use sscard_driver::tlv::{BerTlv, SimpleTlv};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
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

    /// Built ATRs: random interface groups and historical bytes with a right TCK parse
    /// back to the protocols, TA1 and historical bytes they were built from.
    #[test]
    fn generated_atrs_parse(ta1 in any::<u8>(), t in 0u8..=1, hist in bytes(10), tb in any::<u8>()) {
        let mut b = vec![0x3B, 0x90 | hist.len() as u8, ta1, t];
        if t == 1 {
            // TD1 says T=1 and TD2 follows with TB3
            b[3] = 0x81;
            b.extend([0x21, tb]);
        }
        b.extend(&hist);
        if t == 1 {
            b.push(b[1..].iter().fold(0, |x, y| x ^ y));
        }
        let a = Atr::parse(&b).unwrap();
        prop_assert_eq!(a.protocol_numbers(), vec![t]);
        prop_assert_eq!(a.ta1(), ta1);
        prop_assert_eq!(&a.historical, &hist);
        if t == 1 {
            prop_assert_eq!(a.bwi_cwi(), (tb >> 4, tb & 0x0F));
        }
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
