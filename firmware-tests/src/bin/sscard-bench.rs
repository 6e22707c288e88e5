//! `sscard-bench`: purchase latency through the real stack (pcscd → vpcd →
//! `sscard-vcard`), per APDU and per purchase. Run inside `scripts/with-pcscd` with a
//! card served on the reader given by `--reader` (scripts/bench does all of it).
//! Results go to docs/performance.md; nothing here asserts a time.

use clap::Parser;
use sscard_driver::app::{self, Pin};
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::pcsc::{PcscContext, ShareMode};
use sscard_driver::transport::Transaction;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "sscard 0 00 00")]
    reader: String,
    #[arg(long, default_value_t = 200)]
    purchases: usize,
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
    format!(
        "min {:.3} ms, median {:.3} ms, p99 {:.3} ms, max {:.3} ms (n = {})",
        q(0.0),
        q(0.5),
        q(0.99),
        q(1.0),
        v.len()
    )
}

fn main() {
    let a = Args::parse();
    let ctx = PcscContext::establish().unwrap_or_else(|e| panic!("pcscd: {e}"));
    let mut card = ctx
        .connect(&a.reader, ShareMode::Shared, None)
        .unwrap_or_else(|e| panic!("connect {}: {e}", a.reader));
    let mut keys = SoftwareKeys::test_keys(
        "650200".parse().expect("region"),
        "650200000001".parse().expect("terminal id"),
        &[KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase],
    );
    let pin = Pin::new("123456").expect("pin");
    let when = chrono::Local::now().naive_local();
    let mut single = Vec::new();
    let mut purchases = Vec::new();
    let mut tx = Transaction::begin(&mut card).expect("transaction");
    let id = app::read_card(&mut tx).expect("read").card_id;
    for _ in 0..a.purchases {
        let t = Instant::now();
        app::balance(&mut tx).expect("balance");
        single.push(t.elapsed());
        let t = Instant::now();
        app::verify_pin(&mut tx, &pin).expect("pin");
        let p = app::initialize_purchase(&mut tx, &mut keys, &id, 1, when).expect("init");
        p.debit(&mut tx, &mut keys).expect("debit");
        purchases.push(t.elapsed());
    }
    assert!(keys.supports(KeyPurpose::Purchase));
    println!("one APDU (GET BALANCE):            {}", stats(single));
    println!("one purchase (VERIFY, INIT, DEBIT): {}", stats(purchases));
}
