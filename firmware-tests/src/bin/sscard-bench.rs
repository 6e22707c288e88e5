//! `sscard-bench`: purchase latency through the real stack (pcscd → vpcd →
//! `sscard-vcard`). Run inside `scripts/with-pcscd` with a card served on the reader
//! given by `--reader` (scripts/bench does all of it). Results go to
//! docs/performance.md; nothing here asserts a time.
//!
//! Two modes:
//! - default: per APDU (GET BALANCE) and per purchase (VERIFY, INITIALIZE, DEBIT)
//!   through the driver's PC/SC backend;
//! - `--raw`: the baseline of issue 9, APDUs sent raw through the `pcsc` crate, one PC/SC
//!   transaction per sequence: the national read-then-pay sequence (19 commands) and the
//!   five-APDU payment, interleaved; medians and p90, and a `result …` line of
//!   `key=value` fields for `sscardd-bench`.

use clap::Parser;
use sscard_driver::app::{self, Pin};
use sscard_driver::keyprovider::{KeyProvider, PurchaseInit, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::pcsc::{PcscContext, ShareMode};
use sscard_driver::transport::Transaction;
use sscard_driver::types::CardId;
use std::ffi::CString;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "sscard-bench", about = "Purchase latency through pcscd")]
struct Args {
    #[arg(long, default_value = "sscard 0 00 00")]
    reader: String,
    /// Purchases in the default mode.
    #[arg(long, default_value_t = 200)]
    purchases: usize,
    /// The raw baseline instead: the 19-APDU sequence and the 5-APDU payment sent raw
    /// through the `pcsc` crate.
    #[arg(long)]
    raw: bool,
    /// Rounds of the raw baseline (each: one 19-APDU sequence, one 5-APDU payment).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

fn q(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "min {:.3} ms, median {:.3} ms, p99 {:.3} ms, max {:.3} ms (n = {})",
        q(&v, 0.0),
        q(&v, 0.5),
        q(&v, 0.99),
        q(&v, 1.0),
        v.len()
    )
}

fn fail(msg: String) -> ! {
    eprintln!("sscard-bench: {msg}");
    std::process::exit(1)
}

fn purchases(a: &Args) {
    let ctx = PcscContext::establish().unwrap_or_else(|e| fail(format!("pcscd: {e}")));
    let mut card = ctx
        .connect(&a.reader, ShareMode::Shared, None)
        .unwrap_or_else(|e| fail(format!("connect {}: {e}", a.reader)));
    let mut keys = SoftwareKeys::test_keys(
        "650200".parse().expect("region"),
        "650200000001".parse().expect("terminal id"),
        &[KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase],
    );
    let pin = Pin::new("123456").expect("pin");
    let when = chrono::Local::now().naive_local();
    let mut single = Vec::new();
    let mut purchases = Vec::new();
    let mut tx = Transaction::begin(&mut card).unwrap_or_else(|e| fail(format!("begin: {e}")));
    let id = app::read_card(&mut tx)
        .unwrap_or_else(|e| fail(format!("read: {e}")))
        .card_id;
    for _ in 0..a.purchases {
        let t = Instant::now();
        app::balance(&mut tx).unwrap_or_else(|e| fail(format!("balance: {e}")));
        single.push(t.elapsed());
        let t = Instant::now();
        app::verify_pin(&mut tx, &pin).unwrap_or_else(|e| fail(format!("PIN: {e}")));
        let p = app::initialize_purchase(&mut tx, &mut keys, &id, 1, when)
            .unwrap_or_else(|e| fail(format!("initialize: {e}")));
        p.debit(&mut tx, &mut keys)
            .unwrap_or_else(|e| fail(format!("debit: {e}")));
        purchases.push(t.elapsed());
    }
    println!("one APDU (GET BALANCE):            {}", stats(single));
    println!("one purchase (VERIFY, INIT, DEBIT): {}", stats(purchases));
}

/// One PC/SC transaction's raw exchanges, counted: the commands of the sequence, and
/// the GET RESPONSE a T=0 `61xx` answer takes.
struct Raw<'a> {
    tx: pcsc::Transaction<'a>,
    buf: Vec<u8>,
    commands: usize,
    get_responses: usize,
}

impl Raw<'_> {
    fn exchange(&mut self, apdu: &[u8]) -> Result<Vec<u8>, String> {
        let r = self
            .tx
            .transmit(apdu, &mut self.buf)
            .map_err(|e| format!("transmit {}: {e}", hex::encode_upper(&apdu[..4])))?;
        if r.len() < 2 {
            return Err(format!(
                "{}: answer of {} bytes",
                hex::encode_upper(&apdu[..4]),
                r.len()
            ));
        }
        Ok(r.to_vec())
    }

    /// Send one command of the sequence; a `61xx` is answered with GET RESPONSE. The
    /// data of a `9000` answer, else an error naming the command.
    fn send(&mut self, what: &str, apdu: &[u8]) -> Result<Vec<u8>, String> {
        self.commands += 1;
        let mut r = self.exchange(apdu)?;
        if r.len() == 2 && r[0] == 0x61 {
            self.get_responses += 1;
            r = self.exchange(&[0x00, 0xC0, 0x00, 0x00, r[1]])?;
        }
        let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
        if sw != 0x9000 {
            return Err(format!("{what}: card answered {sw:04X}"));
        }
        r.truncate(r.len() - 2);
        Ok(r)
    }
}

/// The application, by name (card profile §3).
const SELECT_AID: [u8; 20] = [
    0x00, 0xA4, 0x04, 0x00, 0x0F, 0x73, 0x78, 0x31, 0x2E, 0x73, 0x68, 0x2E, 0xC9, 0xE7, 0xBB, 0xE1,
    0xB1, 0xA3, 0xD5, 0xCF,
];
const EF05_TAGS: [u8; 6] = [0x01, 0x02, 0x03, 0x05, 0x06, 0x07];
const EF06_TAGS: [u8; 6] = [0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D];
const PIN: [u8; 3] = [0x12, 0x34, 0x56];

/// Where the raw payments' money comes from: test keys, the default terminal.
struct Terminal {
    keys: SoftwareKeys,
}

impl Terminal {
    /// INTERNAL AUTHENTICATE with a fresh random, checked against the card id's Kc[INT].
    fn internal_authenticate(&mut self, raw: &mut Raw, id: &CardId) -> Result<(), String> {
        let r: [u8; 8] = rand::random();
        let mut apdu = vec![0x00, 0x88, 0x00, 0x02, 0x08];
        apdu.extend_from_slice(&r);
        apdu.push(0x10);
        let answer = raw.send("INTERNAL AUTHENTICATE", &apdu)?;
        match self.keys.verify_internal_auth(id, &r, &answer) {
            Ok(true) => Ok(()),
            Ok(false) => Err("INTERNAL AUTHENTICATE: not genuine".into()),
            Err(e) => Err(format!("INTERNAL AUTHENTICATE: {e}")),
        }
    }

    /// VERIFY, INITIALIZE FOR PURCHASE, DEBIT of 1 fen (MAC1 and MAC2 with the driver's
    /// crypto).
    fn pay(&mut self, raw: &mut Raw, id: &CardId) -> Result<(), String> {
        let mut verify = vec![0x00, 0x20, 0x00, 0x00, PIN.len() as u8];
        verify.extend_from_slice(&PIN);
        raw.send("VERIFY", &verify)?;
        let amount: u32 = 1;
        let mut init = vec![0x80, 0x50, 0x01, 0x02, 0x0B, KeyPurpose::Purchase.id()];
        init.extend_from_slice(&amount.to_be_bytes());
        init.extend_from_slice(&self.keys.terminal_id().0);
        init.push(0x0F);
        let d = raw.send("INITIALIZE FOR PURCHASE", &init)?;
        if d.len() != 15 {
            return Err(format!("INITIALIZE FOR PURCHASE: {} bytes", d.len()));
        }
        let (date, time) = app::bcd_datetime(chrono::Local::now().naive_local());
        let (seq, mac1, session) = self
            .keys
            .purchase_mac1(&PurchaseInit {
                card_id: *id,
                amount,
                counter: u16::from_be_bytes([d[4], d[5]]),
                random: [d[11], d[12], d[13], d[14]],
                key_version: d[9],
                algorithm: d[10],
                date,
                time,
            })
            .map_err(|e| format!("MAC1: {e}"))?;
        let mut debit = vec![0x80, 0x54, 0x01, 0x00, 0x0F];
        debit.extend_from_slice(&seq.to_be_bytes());
        debit.extend_from_slice(&date);
        debit.extend_from_slice(&time);
        debit.extend_from_slice(&mac1);
        debit.push(0x08);
        let r = raw.send("DEBIT", &debit)?;
        if r.len() != 8 {
            return Err(format!("DEBIT: {} bytes", r.len()));
        }
        match self.keys.verify_purchase_mac2(session, &r[4..8]) {
            Ok(true) => Ok(()),
            Ok(false) => Err("DEBIT: MAC2 does not verify".into()),
            Err(e) => Err(format!("MAC2: {e}")),
        }
    }

    /// The national read-then-pay sequence: SELECT, EF05 and EF06 read tag by tag,
    /// INTERNAL AUTHENTICATE, VERIFY, INITIALIZE, DEBIT (19 commands). The card id.
    fn sequence19(&mut self, raw: &mut Raw) -> Result<CardId, String> {
        raw.send("SELECT application", &SELECT_AID)?;
        let mut id = None;
        for (fid, tags) in [(0x05u8, EF05_TAGS), (0x06, EF06_TAGS)] {
            raw.send("SELECT EF", &[0x00, 0xA4, 0x02, 0x00, 0x02, 0xEF, fid])?;
            for tag in tags {
                let r = raw.send("READ RECORD", &[0x00, 0xB2, tag, 0x00, 0x00])?;
                if tag == 0x01 {
                    let v = r.get(2..).ok_or("READ RECORD 01: short")?;
                    id = Some(CardId::from_bytes(v).map_err(|e| format!("card id: {e}"))?);
                }
            }
        }
        let id = id.ok_or("no card id")?;
        self.internal_authenticate(raw, &id)?;
        self.pay(raw, &id)?;
        Ok(id)
    }

    /// The shortest payment: SELECT, INTERNAL AUTHENTICATE, VERIFY, INITIALIZE, DEBIT.
    fn sequence5(&mut self, raw: &mut Raw, id: &CardId) -> Result<(), String> {
        raw.send("SELECT application", &SELECT_AID)?;
        self.internal_authenticate(raw, id)?;
        self.pay(raw, id)
    }
}

/// Run `f` inside one PC/SC transaction: its time (begin and end included) and the
/// commands and GET RESPONSEs it sent.
fn timed<T>(
    card: &mut pcsc::Card,
    f: impl FnOnce(&mut Raw) -> Result<T, String>,
) -> Result<(T, Duration, usize, usize), String> {
    let t = Instant::now();
    let tx = card
        .transaction()
        .map_err(|e| format!("transaction: {e}"))?;
    let mut raw = Raw {
        tx,
        buf: vec![0u8; pcsc::MAX_BUFFER_SIZE],
        commands: 0,
        get_responses: 0,
    };
    let v = f(&mut raw)?;
    let (commands, get_responses) = (raw.commands, raw.get_responses);
    drop(raw);
    Ok((v, t.elapsed(), commands, get_responses))
}

fn raw(a: &Args) -> Result<(), String> {
    if a.rounds == 0 {
        return Err("--rounds: at least 1".into());
    }
    let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| format!("pcscd: {e}"))?;
    let name = CString::new(a.reader.clone()).map_err(|e| format!("--reader: {e}"))?;
    let mut card = ctx
        .connect(
            &name,
            pcsc::ShareMode::Shared,
            pcsc::Protocols::T0 | pcsc::Protocols::T1,
        )
        .map_err(|e| format!("connect {}: {e}", a.reader))?;
    let region = "650200".parse().map_err(|e| format!("region: {e}"))?;
    let tid = "650200000001"
        .parse()
        .map_err(|e| format!("terminal id: {e}"))?;
    let mut term = Terminal {
        keys: SoftwareKeys::test_keys(region, tid, &[KeyPurpose::Int, KeyPurpose::Purchase]),
    };
    // warm-up (not counted): the card id for the five-APDU payment
    let (id, ..) = timed(&mut card, |r| term.sequence19(r))?;
    timed(&mut card, |r| term.sequence5(r, &id))?;
    let (mut d19, mut d5) = (Vec::new(), Vec::new());
    let (mut n19, mut n5) = ((0, 0), (0, 0));
    for _ in 0..a.rounds {
        let (_, d, c, g) = timed(&mut card, |r| term.sequence19(r))?;
        d19.push(d);
        n19 = (c, g);
        let (_, d, c, g) = timed(&mut card, |r| term.sequence5(r, &id))?;
        d5.push(d);
        n5 = (c, g);
    }
    d19.sort();
    d5.sort();
    println!(
        "raw 19-APDU sequence ({} commands + {} GET RESPONSE): median {:.3} ms, p90 {:.3} ms (n = {})",
        n19.0,
        n19.1,
        q(&d19, 0.5),
        q(&d19, 0.9),
        d19.len()
    );
    println!(
        "raw 5-APDU payment   ({} commands + {} GET RESPONSE): median {:.3} ms, p90 {:.3} ms (n = {})",
        n5.0,
        n5.1,
        q(&d5, 0.5),
        q(&d5, 0.9),
        d5.len()
    );
    println!(
        "result r19_median_ms={:.3} r19_p90_ms={:.3} r19_commands={} r19_get_responses={} \
         r5_median_ms={:.3} r5_p90_ms={:.3} r5_commands={} r5_get_responses={} rounds={}",
        q(&d19, 0.5),
        q(&d19, 0.9),
        n19.0,
        n19.1,
        q(&d5, 0.5),
        q(&d5, 0.9),
        n5.0,
        n5.1,
        a.rounds
    );
    Ok(())
}

fn main() {
    let a = Args::parse();
    if a.raw {
        if let Err(e) = raw(&a) {
            fail(e)
        }
    } else {
        purchases(&a)
    }
}
