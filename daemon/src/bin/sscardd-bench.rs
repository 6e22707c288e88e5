//! `sscardd-bench`: payment latency and throughput through a running `sscardd`'s socket
//! (docs/performance.md; `scripts/bench` starts `sscardd --dev` with virtual cards in
//! two readers and runs it). Each payment is a `pay.debit` of 1 fen with its own order.
#![forbid(unsafe_code)]

use clap::Parser;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "sscardd-bench", about = "pay.debit latency through sscardd")]
struct Args {
    /// The daemon's socket.
    #[arg(long)]
    socket: PathBuf,
    /// A cashier's or supervisor's token.
    #[arg(long)]
    token: String,
    /// Readers to pay on (repeat the flag); clients are spread over them.
    #[arg(long = "reader", required = true)]
    readers: Vec<String>,
    /// Payments per client.
    #[arg(long, default_value_t = 100)]
    payments: usize,
    /// Concurrent clients in the second round.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// The card's PIN.
    #[arg(long, default_value = "123456")]
    pin: String,
}

struct Client {
    r: BufReader<UnixStream>,
    id: u64,
}

impl Client {
    fn connect(a: &Args) -> Result<Client, String> {
        let s =
            UnixStream::connect(&a.socket).map_err(|e| format!("{}: {e}", a.socket.display()))?;
        let mut c = Client {
            r: BufReader::new(s),
            id: 0,
        };
        c.call("session.login", json!({"token": a.token}))?;
        Ok(c)
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        self.r
            .get_mut()
            .write_all(format!("{req}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match v.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(v["result"].clone()),
        }
    }
}

/// Pay `n` times on `reader`; the latency of each call.
fn pay(a: &Args, reader: &str, tag: &str, n: usize) -> Result<Vec<Duration>, String> {
    let mut c = Client::connect(a)?;
    let stamp = chrono::Utc::now().timestamp_micros();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let p = c.call(
            "pay.debit",
            json!({"order_id": format!("bench-{stamp}-{tag}-{i}"), "amount_fen": 1,
                   "pin": a.pin, "reader": reader}),
        )?;
        out.push(t.elapsed());
        if p["status"] != "completed" {
            return Err(format!("payment not completed: {p}"));
        }
    }
    Ok(out)
}

fn report(what: &str, mut d: Vec<Duration>, wall: Duration) {
    if d.is_empty() {
        println!("{what}: no payments");
        return;
    }
    d.sort_unstable();
    let q = |f: f64| d[((d.len() as f64 - 1.0) * f).round() as usize].as_secs_f64() * 1e3;
    println!(
        "{what}: {} payments, median {:.2} ms, p99 {:.2} ms, {:.0} payments/s",
        d.len(),
        q(0.5),
        q(0.99),
        d.len() as f64 / wall.as_secs_f64()
    );
}

fn main() {
    let a = Args::parse();
    let run = || -> Result<(), String> {
        // warm-up: connections, card reads
        pay(&a, &a.readers[0], "warm", 5)?;
        let t = Instant::now();
        let one = pay(&a, &a.readers[0], "seq", a.payments)?;
        report("one client, one reader", one, t.elapsed());
        let t = Instant::now();
        let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..a.clients)
                .map(|i| {
                    let a = &a;
                    s.spawn(move || {
                        pay(
                            a,
                            &a.readers[i % a.readers.len()],
                            &format!("c{i}"),
                            a.payments,
                        )
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into())))
                .collect()
        });
        let wall = t.elapsed();
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        report(
            &format!("{} clients, {} readers", a.clients, a.readers.len()),
            all,
            wall,
        );
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("sscardd-bench: {e}");
        std::process::exit(1);
    }
}
