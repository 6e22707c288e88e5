//! The checks behind each fuzz target (docs/fuzzing.md). Each takes any bytes, runs one
//! parser that reads bytes from outside the daemon, and panics (a finding) when the
//! parser panics or breaks one of its own invariants. The binaries in `src/bin` feed
//! them from AFL; the tests below run every committed seed through them.

use sscard_daemon::config::Config;
use sscard_driver::atr::Atr;
use sscard_driver::transport::serial::ccid::{Command, Response};
use sscard_driver::transport::serial::frame::{self, Decoder, Event};
use sscard_driver::tlv::{BerTlv, SimpleTlv};
use sscard_driver::{CommandApdu, ResponseApdu, StatusWord};

/// The line number `line N` / `line N, key K: …` messages begin with, if any.
fn line_number(message: &str) -> Option<usize> {
    let rest = message.strip_prefix("line ")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The number of lines `text` has for an error to point at (a final line may be empty).
fn lines_in(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count() + 1
}

/// `sscard_daemon::config::Config::parse`: a parsed configuration holds every bound
/// the parser promises; an error names a line of the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            assert!(c.socket_mode <= 0o777, "socket_mode {:o}", c.socket_mode);
            assert!(c.tcp.is_none_or(|a| a.ip().is_loopback()), "{:?}", c.tcp);
            assert!(c.max_connections >= 1);
            assert!(c.login_timeout_ms >= 100);
            assert!(
                (1..=c.max_connections).contains(&c.max_unauthenticated),
                "max_unauthenticated {} of {}",
                c.max_unauthenticated,
                c.max_connections
            );
            assert!(c.limits.per_transaction_fen > 0 && c.limits.per_card_per_day_fen > 0);
            assert!(c.backup.retention_weeks > 0);
            assert!(["daily", "weekly", "off"].contains(&c.backup.schedule.as_str()));
            if let Some(u) = &c.upload {
                assert!(u.endpoint.starts_with("http://") || u.endpoint.starts_with("https://"));
                assert!(u.batch_size > 0 && u.interval_minutes > 0);
            }
            for (i, o) in c.operators.iter().enumerate() {
                assert!(!o.name.trim().is_empty());
                assert_eq!(o.token_sha256.len(), 64);
                assert!(o.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()));
                assert_eq!(o.token_sha256, o.token_sha256.to_ascii_lowercase());
                for p in &c.operators[..i] {
                    assert_ne!(p.name, o.name);
                    assert_ne!(p.token_sha256, o.token_sha256);
                }
            }
        }
        Err(e) => {
            assert!(!e.is_empty());
            if let Some(n) = line_number(&e) {
                assert!(
                    n >= 1 && n <= lines_in(text),
                    "{e:?} in {} lines",
                    lines_in(text)
                );
            }
        }
    }
}

/// Whether `s` is exactly `YYYY-MM-DD` (what the journal compares as text).
fn is_canonical_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// `sscard_daemon::journal::parse_blacklist`: every entry has a card and a reason that
/// may be journaled, and an `until` the journal can compare as text; an error names a
/// line of the file.
pub fn blacklist(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match sscard_daemon::journal::parse_blacklist(text) {
        Ok(entries) => {
            assert!(entries.len() <= text.lines().count());
            for e in &entries {
                assert!(
                    !e.card.is_empty() && e.card.len() <= 32,
                    "card {:?}",
                    e.card
                );
                assert!(
                    e.card.chars().all(|c| c.is_ascii_alphanumeric()),
                    "card {:?}",
                    e.card
                );
                assert!(!e.reason.is_empty(), "empty reason");
                assert!(
                    e.reason.chars().count() <= sscard_daemon::text::MAX_REASON,
                    "reason of {} characters",
                    e.reason.chars().count()
                );
                assert!(
                    !e.reason.chars().any(sscard_daemon::text::is_hidden),
                    "reason {:?}",
                    e.reason
                );
                assert_eq!(e.reason.trim(), e.reason);
                if let Some(u) = &e.until {
                    assert!(is_canonical_date(u), "until {u:?}");
                }
            }
        }
        Err(e) => {
            let n = line_number(&e).unwrap_or_else(|| panic!("no line in {e:?}"));
            assert!(n >= 1 && n <= text.lines().count(), "{e:?}");
        }
    }
}

/// ISO 7816-3 §8 encoding of a parsed ATR, from its fields alone.
fn encode_atr(a: &Atr) -> Vec<u8> {
    let mut out = vec![a.as_bytes()[0], a.t0];
    for g in &a.groups {
        out.extend(g.ta.iter().chain(&g.tb).chain(&g.tc).chain(&g.td));
    }
    out.extend_from_slice(&a.historical);
    out.extend(a.tck);
    out
}

/// `sscard_driver::Atr::parse`: a parsed ATR re-encodes from its fields to the very
/// bytes, its interface bytes are the ones T0/TDi announce, its TCK checks, and every
/// accessor answers.
pub fn atr(data: &[u8]) {
    let Ok(a) = Atr::parse(data) else {
        return;
    };
    assert_eq!(a.as_bytes(), data);
    assert_eq!(encode_atr(&a), data);
    assert!(data.len() <= 33);
    assert_eq!(a.historical.len(), usize::from(a.t0 & 0x0F));
    let mut y = a.t0 >> 4;
    for (i, g) in a.groups.iter().enumerate() {
        let present = [g.ta, g.tb, g.tc, g.td].map(|b| b.is_some());
        for (bit, p) in present.iter().enumerate() {
            assert_eq!(y & (1 << bit) != 0, *p, "group {}", i + 1);
        }
        match g.td {
            Some(td) => y = td >> 4,
            None => assert_eq!(i + 1, a.groups.len()),
        }
    }
    let not_t0 = a
        .groups
        .iter()
        .any(|g| g.td.is_some_and(|td| td & 0x0F != 0));
    assert_eq!(a.tck.is_some(), not_t0);
    if a.tck.is_some() {
        assert_eq!(data[1..].iter().fold(0u8, |x, b| x ^ b), 0);
    }
    assert!(!a.protocol_numbers().is_empty());
    let _ = (
        a.protocols(),
        a.fi(),
        a.di(),
        a.fmax_hz(),
        a.extra_guard_time(),
    );
    let _ = (
        a.baud_rate(u32::MAX),
        a.baud_rate(0),
        a.specific_mode(),
        a.wi(),
    );
    let _ = (a.ifsc(), a.bwi_cwi(), a.clock_stop_and_class());
    assert!(a.describe().starts_with("ATR: "));
    assert_eq!(Atr::parse(a.as_bytes()).as_ref(), Ok(&a));
}

/// The driver's SIMPLE-TLV and BER-TLV parsers on the same bytes: every object parsed
/// encodes to bytes that parse back to it (parse ∘ serialize), and a canonical encoding
/// is never longer than what was read.
pub fn tlv(data: &[u8]) {
    if let Ok(all) = SimpleTlv::parse_all(data) {
        let mut total = 0;
        for o in &all {
            let b = o.to_bytes().expect("a parsed object encodes");
            total += b.len();
            assert_eq!(SimpleTlv::parse_exact(&b).as_ref(), Ok(o));
        }
        assert!(total <= data.len());
        if let Ok(one) = SimpleTlv::parse_exact(data) {
            assert_eq!(all, vec![one]);
        }
    }
    if let Ok((first, rest)) = SimpleTlv::parse_one(data) {
        assert!(rest.len() < data.len());
        assert!(data.ends_with(rest));
        let _ = first;
    }
    if let Ok(all) = BerTlv::parse_all(data) {
        let mut total = 0;
        for o in &all {
            let b = o.to_bytes();
            total += b.len();
            let (back, rest) = BerTlv::parse_one(&b).expect("an encoded object parses");
            assert_eq!(&back, o);
            assert!(rest.is_empty());
            assert_eq!(o.find(&[o.tag]), Some(o));
        }
        assert!(total <= data.len());
    }
}

/// Response APDUs (what a card answers) and command APDUs (what an emulated card is
/// sent): a response re-encodes to its bytes and its status word round-trips; a
/// command re-encodes to bytes that parse back to the same command.
pub fn response_apdu(data: &[u8]) {
    match ResponseApdu::parse(data) {
        Ok(r) => {
            assert_eq!(r.to_bytes(), data);
            let code = u16::from_be_bytes([data[data.len() - 2], data[data.len() - 1]]);
            assert_eq!(r.sw.code(), code);
            assert_eq!(StatusWord::from(code), r.sw);
            assert_eq!(r.sw.to_bytes(), code.to_be_bytes());
            let ok = r.sw.is_ok();
            assert_eq!(ok, code == 0x9000);
            assert_eq!(r.into_result().is_ok(), ok);
        }
        Err(_) => assert!(data.len() < 2),
    }
    if let Ok(c) = CommandApdu::parse(data) {
        let b = c.to_bytes();
        let back = CommandApdu::parse(&b).expect("an encoded command parses");
        assert_eq!(
            (back.cla, back.ins, back.p1, back.p2, back.le),
            (c.cla, c.ins, c.p1, c.p2, c.le)
        );
        assert_eq!(back.data(), c.data());
        assert_eq!(back.case(), c.case());
        assert!(b.len() <= data.len());
    }
}

/// `sscard_daemon::rpc::parse_line` and `check_params`: a line is a request or refused
/// with a JSON-RPC error; a request's params are checked as its handler reads them; the
/// answer is one JSON object that echoes the id exactly as sent.
pub fn jsonrpc(data: &[u8]) {
    use sscard_daemon::rpc::{check_params, parse_line, reply};
    let (id, answer) = match parse_line(data) {
        Ok(None) => {
            assert!(std::str::from_utf8(data).is_ok_and(|t| t.trim().is_empty()));
            return;
        }
        Ok(Some(req)) => {
            let r = check_params(&req.method, req.params).map(|()| serde_json::Value::Null);
            if let Err(e) = &r {
                assert!([-32601, -32602].contains(&e.code), "{}", e.code);
            }
            (req.id, r)
        }
        Err(refused) => {
            assert!([-32700, -32600].contains(&refused.error.code));
            (refused.id, Err(refused.error))
        }
    };
    let line = reply(id, &answer);
    assert!(!line.contains('\n'));
    // Read back without converting numbers: an id such as 1e400 is valid JSON that
    // only an f64 cannot hold, and it is echoed as sent.
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        jsonrpc: &'a serde_json::value::RawValue,
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
        #[serde(borrow, default)]
        result: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        error: Option<&'a serde_json::value::RawValue>,
    }
    let r: Reply<'_> = serde_json::from_str(&line).expect("the reply is one JSON object");
    assert_eq!(r.jsonrpc.get(), "\"2.0\"");
    assert_eq!(
        r.id.get(),
        id.map_or("null", |i| i.get()),
        "id not echoed as sent"
    );
    // (a `null` result reads as `None`)
    assert!(r.result.is_none() || r.error.is_none());
    assert_eq!(r.error.is_some(), answer.is_err());
}

/// The serial line's frame decoder (`driver/src/transport/serial/frame.rs`): what comes
/// off the line in chunks of any size, the first byte choosing the chunk size. It never
/// holds more than a frame's worth, every message it returns re-encodes to a frame that
/// decodes to the same message, and the CCID decoders take any message without a panic
/// (a command that decodes encodes again to the same bytes).
pub fn serial_frame(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 16) + 1;
    let mut d = Decoder::new();
    let limit = d.max_message() + 16;
    let mut events = Vec::new();
    for chunk in rest.chunks(step) {
        d.push(chunk);
        events.extend(d.drain_events());
        assert!(d.buffered() <= limit + chunk.len(), "{} buffered", d.buffered());
    }
    events.extend(d.resync());
    events.extend(d.drain_events());
    for e in events {
        let (Event::Message(m) | Event::BadLrc(m)) = e else {
            continue;
        };
        let mut again = Decoder::new();
        again.push(&frame::encode(&m));
        assert_eq!(again.next_event(), Some(Event::Message(m.clone())));
        if let Ok(c) = Command::decode(&m) {
            if let Ok(bytes) = c.encode() {
                assert_eq!(Command::decode(&bytes).ok(), Some(c));
            }
        }
        let _ = Response::decode(&m);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed seed passes its target's checks.
    fn seeds(target: &str, check: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("in")
            .join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("seed directory") {
            let p = e.expect("seed entry").path();
            check(&std::fs::read(&p).expect("seed file"));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn config_seeds() {
        seeds("config", super::config);
    }
    #[test]
    fn blacklist_seeds() {
        seeds("blacklist", super::blacklist);
    }
    #[test]
    fn atr_seeds() {
        seeds("atr", super::atr);
    }
    #[test]
    fn tlv_seeds() {
        seeds("tlv", super::tlv);
    }
    #[test]
    fn response_apdu_seeds() {
        seeds("response_apdu", super::response_apdu);
    }
    #[test]
    fn jsonrpc_seeds() {
        seeds("jsonrpc", super::jsonrpc);
    }
    #[test]
    fn serial_frame_seeds() {
        seeds("serial_frame", super::serial_frame);
    }
}
