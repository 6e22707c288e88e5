//! Property tests of the serial reader protocol (`transport::serial`): the frame
//! decoder and the CCID message parsers return a value or an error on any input and
//! never panic; encoding then decoding gives the same value back.

use proptest::prelude::*;
use sscard_driver::transport::serial::ccid::{
    Command, CommandBody, Response, ResponseBody, Status,
};
use sscard_driver::transport::serial::frame::{self, Decoder, Event};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn command() -> impl Strategy<Value = Command> {
    let body = prop_oneof![
        any::<u8>().prop_map(|power_select| CommandBody::IccPowerOn { power_select }),
        Just(CommandBody::IccPowerOff),
        Just(CommandBody::GetSlotStatus),
        Just(CommandBody::GetParameters),
        (any::<u8>(), any::<u16>(), bytes(300)).prop_map(|(bwi, level_parameter, data)| {
            CommandBody::XfrBlock {
                bwi,
                level_parameter,
                data,
            }
        }),
        (any::<u8>(), any::<u16>(), bytes(40)).prop_map(|(bwi, level_parameter, data)| {
            CommandBody::Secure {
                bwi,
                level_parameter,
                data,
            }
        }),
        (any::<u8>(), bytes(8))
            .prop_map(|(protocol, data)| CommandBody::SetParameters { protocol, data }),
        bytes(60).prop_map(|data| CommandBody::Escape { data }),
    ];
    (any::<u8>(), any::<u8>(), body).prop_map(|(slot, seq, body)| Command { slot, seq, body })
}

fn response() -> impl Strategy<Value = Response> {
    let body = prop_oneof![
        (any::<u8>(), bytes(300)).prop_map(|(chain, data)| ResponseBody::DataBlock { chain, data }),
        any::<u8>().prop_map(|clock_status| ResponseBody::SlotStatus { clock_status }),
        (any::<u8>(), bytes(8))
            .prop_map(|(protocol, data)| ResponseBody::Parameters { protocol, data }),
        (any::<u8>(), bytes(60)).prop_map(|(rfu, data)| ResponseBody::Escape { rfu, data }),
    ];
    (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), body).prop_map(
        |(slot, seq, status, error, body)| Response {
            slot,
            seq,
            status: Status(status),
            error,
            body,
        },
    )
}

proptest! {
    #[test]
    fn ccid_decode_never_panics(b in bytes(400)) {
        let _ = Command::decode(&b);
        let _ = Response::decode(&b);
    }

    #[test]
    fn ccid_decode_with_a_consistent_length_never_panics(kind in any::<u8>(), rest in bytes(300)) {
        let mut b = vec![kind];
        b.extend_from_slice(&(rest.len().saturating_sub(5) as u32).to_le_bytes());
        b.extend_from_slice(&rest);
        let _ = Command::decode(&b);
        let _ = Response::decode(&b);
    }

    #[test]
    fn commands_round_trip(c in command()) {
        let b = c.encode().unwrap();
        prop_assert_eq!(Command::decode(&b).unwrap(), c);
    }

    #[test]
    fn responses_round_trip(r in response()) {
        let b = r.encode().unwrap();
        prop_assert_eq!(Response::decode(&b).unwrap(), r);
    }

    #[test]
    fn frame_decoder_never_panics(chunks in proptest::collection::vec(bytes(64), 0..20)) {
        let mut d = Decoder::new();
        for c in &chunks {
            d.push(c);
            let _ = d.drain_events();
        }
        while d.resync().is_some() {
            let _ = d.drain_events();
        }
        prop_assert_eq!(d.buffered(), 0);
    }

    /// Any message survives framing, cut into any chunks, after any garbage that
    /// holds no SYNC, notification or time request.
    #[test]
    fn frames_round_trip(
        c in command(),
        noise in proptest::collection::vec(0x04u8..0x50, 0..10),
        cut in any::<prop::sample::Index>(),
    ) {
        let msg = c.encode().unwrap();
        let mut line = noise.clone();
        line.extend_from_slice(&frame::encode(&msg));
        let at = cut.index(line.len() + 1);
        let mut d = Decoder::new();
        d.push(&line[..at]);
        let mut ev = d.drain_events();
        d.push(&line[at..]);
        ev.extend(d.drain_events());
        let want: Vec<Event> = noise.iter().map(|b| Event::Garbage(*b))
            .chain([Event::Message(msg)]).collect();
        prop_assert_eq!(ev, want);
    }
}
