//! `sscardd-bench`: the benchmark of issue 9 (docs/performance.md). Run inside
//! `scripts/with-pcscd` (`scripts/bench` builds in release and does it); it starts
//! everything itself:
//!
//! 1. card speed: an `sscard-vcard` in each of the two vpcd slots with a wire time
//!    (T=0, `--bit-rate 9600 --etu-per-byte 12 --processing-ms 2`) and `--control-stdin`;
//!    the raw baseline (`sscard-bench --raw`: R19, the 19-APDU read-then-pay sequence,
//!    and R5, the five-APDU payment, through the `pcsc` crate); then `sscardd --dev`:
//!    `pay.debit` right after `card.read` on the same presentation (P_cached), `pay.debit`
//!    as soon as the daemon reports a card inserted, `card.read` one second after an
//!    insertion, and payments/s on one reader and on two;
//! 2. fast cards (no wire time): the raw baseline again, P_cached, the durable journal
//!    commits a debit makes (counted by the daemon, `system.health.journal_commits`, or
//!    given with `--durable-commits`), the time of one durable commit on the journal's filesystem
//!    (a WAL SQLite database with `synchronous=FULL` in the journal's directory, one tiny
//!    transaction), and ten clients on two readers.
//!
//! It prints one summary table of the ratios the issue targets. Nothing here asserts a
//! time. Each payment is a `pay.debit` of 1 fen with its own order.
#![forbid(unsafe_code)]

use clap::Parser;
use serde_json::{json, Value};
use sscard_driver::transport::pcsc::PcscContext;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

type R<T> = Result<T, String>;

#[derive(Parser)]
#[command(
    name = "sscardd-bench",
    about = "Issue 9's benchmark: raw APDUs against pay.debit through sscardd, at a real card's speed and with a fast card"
)]
struct Args {
    /// Where `sscardd`, `sscard-vcard` and `sscard-bench` are (default: beside this
    /// program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The test bed's two readers, in vpcd port order.
    #[arg(long = "reader", default_values = ["sscard 0 00 00", "sscard 0 00 01"])]
    readers: Vec<String>,
    /// vpcd port of the first reader (default: $SSCARD_VPCD_BASE_PORT, else 40000).
    #[arg(long)]
    base_port: Option<u16>,
    /// Card speed: the line's bit rate.
    #[arg(long, default_value_t = 9600)]
    bit_rate: u32,
    /// Card speed: etu a byte.
    #[arg(long, default_value_t = 12)]
    etu_per_byte: u32,
    /// Card speed: processing time a command.
    #[arg(long, default_value_t = 2)]
    processing_ms: u64,
    /// Raw baseline rounds at card speed (each: one 19-APDU sequence, one 5-APDU payment).
    #[arg(long, default_value_t = 20)]
    raw_rounds: usize,
    /// Raw baseline rounds with the fast card.
    #[arg(long, default_value_t = 200)]
    fast_raw_rounds: usize,
    /// `card.read` + `pay.debit` pairs at card speed.
    #[arg(long, default_value_t = 10)]
    payments: usize,
    /// Insertions at card speed (for `pay.debit` right after, then again for `card.read`
    /// one second after).
    #[arg(long, default_value_t = 5)]
    insertions: usize,
    /// Payments on each reader in the throughput rounds (card speed).
    #[arg(long, default_value_t = 10)]
    throughput_payments: usize,
    /// `card.read` + `pay.debit` pairs with the fast card.
    #[arg(long, default_value_t = 200)]
    fast_payments: usize,
    /// With the fast card, the raw baseline and the daemon take turns in this many
    /// blocks (the rounds and pairs above are split among them).
    #[arg(long, default_value_t = 5)]
    fast_blocks: usize,
    /// Debits counted to find the durable journal commits of one.
    #[arg(long, default_value_t = 20)]
    commit_payments: usize,
    /// Durable commits a debit makes, instead of counting them.
    #[arg(long)]
    durable_commits: Option<f64>,
    /// Concurrent clients on the two fast readers (last round).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Payments each of those clients makes.
    #[arg(long, default_value_t = 100)]
    client_payments: usize,
    /// Do not pass `card_id` to `pay.debit` (a daemon before API 1.1's `card_id`).
    #[arg(long)]
    no_card_id: bool,
    /// The cards' PIN.
    #[arg(long, default_value = "123456")]
    pin: String,
}

/// Chip serials of the two virtual cards (two card ids).
const SERIALS: [&str; 2] = ["0000000000000001", "0000000000000002"];

/// Median and p90 of a sample, in ms.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    p90: f64,
    n: usize,
}

fn stat(mut v: Vec<Duration>) -> Stat {
    v.sort_unstable();
    if v.is_empty() {
        return Stat {
            median: f64::NAN,
            p90: f64::NAN,
            n: 0,
        };
    }
    let q = |f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize].as_secs_f64() * 1e3;
    Stat {
        median: q(0.5),
        p90: q(0.9),
        n: v.len(),
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {}, p90 {} (n = {})",
            ms(self.median),
            ms(self.p90),
            self.n
        )
    }
}

/// A time in ms with sensible digits.
fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.1} ms")
    } else if v >= 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.3} ms")
    }
}

/// Everything the phases share.
struct Ctx {
    a: Args,
    bin: PathBuf,
    base_port: u16,
    dir: PathBuf,
    stamp: i64,
}

impl Ctx {
    fn order(&self, tag: &str, i: usize) -> String {
        format!("bench-{}-{tag}-{i}", self.stamp)
    }
}

// ---------------------------------------------------------------------------------------
// the virtual cards

/// An `sscard-vcard` process with `--control-stdin`, killed on drop.
struct Vcard {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Vcard {
    fn start(ctx: &Ctx, slot: usize, card_speed: bool) -> R<Vcard> {
        let exe = ctx.bin.join("sscard-vcard");
        let port = ctx.base_port + slot as u16;
        let mut c = Command::new(&exe);
        c.args([
            "--port",
            &port.to_string(),
            "--t0",
            "--balance",
            "100000000",
        ])
        .args(["--serial", SERIALS[slot], "--control-stdin"]);
        if card_speed {
            c.args(["--bit-rate", &ctx.a.bit_rate.to_string()])
                .args(["--etu-per-byte", &ctx.a.etu_per_byte.to_string()])
                .args(["--processing-ms", &ctx.a.processing_ms.to_string()]);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => {
                let _ = child.kill();
                return Err("sscard-vcard: no pipes".into());
            }
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Vcard {
            child,
            stdin,
            lines,
        })
    }

    /// `remove` or `insert`, answered `ok …` once done.
    fn control(&mut self, cmd: &str) -> R<()> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("sscard-vcard stdin: {e}"))?;
        let want = format!("ok {cmd}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == want => return Ok(()),
                Ok(l) if l.starts_with("error") => return Err(format!("sscard-vcard: {l}")),
                Ok(_) => {}
                Err(_) => return Err(format!("sscard-vcard: no {want:?} within 30 s")),
            }
        }
    }
}

impl Drop for Vcard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until pcscd sees `reader` with (or without) a card.
fn wait_pcscd(reader: &str, present: bool) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let ctx = PcscContext::establish().map_err(|e| format!("pcscd: {e}"))?;
    loop {
        if let Ok(states) = ctx.reader_states() {
            if states
                .iter()
                .any(|r| r.name == reader && r.card_present == present)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pcscd: {reader} {} a card after 15 s",
                if present { "without" } else { "still with" }
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// the raw baseline

struct Raw {
    r19: f64,
    r19_p90: f64,
    r5: f64,
    r5_p90: f64,
    /// What each sent: `19 + 3 GET RESPONSE`.
    r19_sent: String,
    r5_sent: String,
}

impl Raw {
    /// Several runs as one: the median of their medians (and of their p90s).
    fn median_of(runs: &[Raw]) -> Raw {
        let m = |f: &dyn Fn(&Raw) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        Raw {
            r19: m(&|r| r.r19),
            r19_p90: m(&|r| r.r19_p90),
            r5: m(&|r| r.r5),
            r5_p90: m(&|r| r.r5_p90),
            r19_sent: runs.first().map(|r| r.r19_sent.clone()).unwrap_or_default(),
            r5_sent: runs.first().map(|r| r.r5_sent.clone()).unwrap_or_default(),
        }
    }
}

/// `sscard-bench --raw` on `reader`: its lines, and the `raw …` fields.
fn raw(ctx: &Ctx, reader: &str, rounds: usize) -> R<Raw> {
    let exe = ctx.bin.join("sscard-bench");
    let out = Command::new(&exe)
        .args(["--raw", "--rounds", &rounds.to_string(), "--reader", reader])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("sscard-bench --raw: {}", out.status));
    }
    let mut fields = std::collections::HashMap::new();
    for line in text.lines() {
        match line.strip_prefix("result ") {
            Some(rest) => {
                for kv in rest.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        fields.insert(k.to_string(), v.to_string());
                    }
                }
            }
            None => println!("  {line}"),
        }
    }
    let f = |k: &str| -> R<f64> {
        fields
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or(format!("sscard-bench --raw: no {k}"))
    };
    let s = |k: &str| fields.get(k).cloned().unwrap_or_else(|| "?".into());
    Ok(Raw {
        r19: f("r19_median_ms")?,
        r19_p90: f("r19_p90_ms")?,
        r5: f("r5_median_ms")?,
        r5_p90: f("r5_p90_ms")?,
        r19_sent: format!(
            "{} + {} GET RESPONSE",
            s("r19_commands"),
            s("r19_get_responses")
        ),
        r5_sent: format!(
            "{} + {} GET RESPONSE",
            s("r5_commands"),
            s("r5_get_responses")
        ),
    })
}

// ---------------------------------------------------------------------------------------
// the daemon

/// `sscardd --dev` with its journal in a directory of ours; stopped with SIGTERM on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    token: String,
    journal: PathBuf,
}

impl Daemon {
    fn start(ctx: &Ctx, name: &str) -> R<Daemon> {
        let dir = ctx.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let journal = dir.join("journal.db");
        let exe = ctx.bin.join("sscardd");
        let mut child = Command::new(&exe)
            .arg("--dev")
            .arg("--journal")
            .arg(&journal)
            .env("SSCARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("sscardd: no stdout".into());
        };
        let mut d = Daemon {
            child,
            socket: PathBuf::new(),
            token: String::new(),
            journal,
        };
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while d.socket.as_os_str().is_empty() || d.token.is_empty() {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return Err("sscardd exited before its socket and token".into()),
                Ok(_) => {}
            }
            if let Some(s) = line.trim_end().strip_prefix("socket: ") {
                d.socket = PathBuf::from(s);
            } else if let Some(t) = line.trim_end().strip_prefix("token: ") {
                d.token = t.to_string();
            }
        }
        // keep reading whatever else it prints
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        Ok(d)
    }

    /// Wait until the daemon lists every reader with a card.
    fn wait_cards(&self, readers: &[String]) -> R<()> {
        let mut c = Client::connect(self)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let l = c.call("reader.list", json!({}))?;
            let ok = readers.iter().all(|r| {
                l.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|e| e["name"] == r.as_str() && e["card_present"] == true)
                })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("sscardd: readers after 15 s: {l}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exited = false;
        while !exited && Instant::now() < deadline {
            exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if !exited {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // --dev leaves its (empty) temporary directory, the socket's, behind
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// One logged-in JSON-RPC connection.
struct Client {
    r: BufReader<UnixStream>,
    id: u64,
}

impl Client {
    fn connect(d: &Daemon) -> R<Client> {
        let s =
            UnixStream::connect(&d.socket).map_err(|e| format!("{}: {e}", d.socket.display()))?;
        let mut c = Client {
            r: BufReader::new(s),
            id: 0,
        };
        c.call("session.login", json!({"token": d.token}))?;
        Ok(c)
    }

    fn call(&mut self, method: &str, params: Value) -> R<Value> {
        self.id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        self.r
            .get_mut()
            .write_all(format!("{req}\n").as_bytes())
            .map_err(|e| format!("{method}: {e}"))?;
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => return Err(format!("{method}: the daemon closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(format!("{method}: {e}")),
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("{method}: {e}"))?;
            if v.get("id").is_none() {
                continue; // a notification
            }
            return match v.get("error") {
                Some(e) => Err(format!("{method}: {e}")),
                None => Ok(v["result"].clone()),
            };
        }
    }

    /// `card.read`: the card id and the call's time.
    fn read(&mut self, reader: &str) -> R<(String, Duration)> {
        let t = Instant::now();
        let v = self.call("card.read", json!({"reader": reader}))?;
        let d = t.elapsed();
        let id = v["card_id"]
            .as_str()
            .ok_or(format!("card.read: no card_id in {v}"))?;
        Ok((id.to_string(), d))
    }

    /// `pay.debit` of 1 fen, which must complete: the call's time.
    fn debit(
        &mut self,
        ctx: &Ctx,
        reader: &str,
        order: String,
        card_id: Option<&str>,
    ) -> R<Duration> {
        let mut p = json!({"order_id": order, "amount_fen": 1, "pin": ctx.a.pin, "reader": reader});
        if let (Some(id), false) = (card_id, ctx.a.no_card_id) {
            p["card_id"] = json!(id);
        }
        let t = Instant::now();
        let v = self.call("pay.debit", p).map_err(|e| {
            if e.contains("card_id") && !ctx.a.no_card_id {
                format!("{e} (a daemon without API 1.1's card_id: pass --no-card-id)")
            } else {
                e
            }
        })?;
        let d = t.elapsed();
        if v["status"] != "completed" {
            return Err(format!("payment not completed: {v}"));
        }
        Ok(d)
    }
}

/// A connection subscribed to the daemon's events.
struct Events {
    rx: Receiver<Value>,
}

impl Events {
    fn subscribe(d: &Daemon) -> R<Events> {
        let mut c = Client::connect(d)?;
        c.call("events.subscribe", json!({}))?;
        let (tx, rx) = mpsc::channel();
        let mut r = c.r;
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v.get("method").is_some() && tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Events { rx })
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Wait for `method` on `reader`.
    fn wait(&self, method: &str, reader: &str) -> R<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v["method"] == method && v["params"]["reader"] == reader => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("no {method} on {reader} within 15 s")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// the phases

/// `card.read` then `pay.debit` (with the card id read), `n` times: the debits' times.
fn cached(c: &mut Client, ctx: &Ctx, reader: &str, tag: &str, n: usize) -> R<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (id, _) = c.read(reader)?;
        out.push(c.debit(ctx, reader, ctx.order(tag, i), Some(&id))?);
    }
    Ok(out)
}

/// Take the card out (until the daemon reports it gone) and put it back (until the
/// daemon reports it inserted): the time from the `insert` to the event.
fn reinsert(v: &mut Vcard, ev: &Events, reader: &str) -> R<Duration> {
    v.control("remove")?;
    ev.wait("card.removed", reader)?;
    ev.drain();
    let t = Instant::now();
    v.control("insert")?;
    ev.wait("card.inserted", reader)?;
    Ok(t.elapsed())
}

/// Payments/s of one client per reader, each paying `n` times at once.
fn throughput(ctx: &Ctx, d: &Daemon, readers: &[String], tag: &str, n: usize) -> R<f64> {
    let barrier = std::sync::Barrier::new(readers.len());
    let runs: Vec<R<(Instant, Instant)>> = std::thread::scope(|s| {
        let hs: Vec<_> = readers
            .iter()
            .enumerate()
            .map(|(k, reader)| {
                let barrier = &barrier;
                s.spawn(move || -> R<(Instant, Instant)> {
                    let prepared = Client::connect(d).and_then(|mut c| {
                        let (id, _) = c.read(reader)?;
                        Ok((c, id))
                    });
                    barrier.wait();
                    let (mut c, id) = prepared?;
                    let t = Instant::now();
                    for i in 0..n {
                        c.debit(ctx, reader, ctx.order(&format!("{tag}{k}"), i), Some(&id))?;
                    }
                    Ok((t, Instant::now()))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into())))
            .collect()
    });
    let mut span: Option<(Instant, Instant)> = None;
    for r in runs {
        let (a, b) = r?;
        span = Some(match span {
            None => (a, b),
            Some((x, y)) => (x.min(a), y.max(b)),
        });
    }
    let (a, b) = span.ok_or("no readers")?;
    Ok((n * readers.len()) as f64 / (b - a).as_secs_f64())
}

/// `clients` clients spread over the readers, `n` payments each (no card.read): the
/// latencies and payments/s.
fn load(ctx: &Ctx, d: &Daemon, readers: &[String], clients: usize, n: usize) -> R<(Stat, f64)> {
    let t = Instant::now();
    let results: Vec<R<Vec<Duration>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|k| {
                let reader = &readers[k % readers.len()];
                s.spawn(move || -> R<Vec<Duration>> {
                    let mut c = Client::connect(d)?;
                    (0..n)
                        .map(|i| c.debit(ctx, reader, ctx.order(&format!("load{k}"), i), None))
                        .collect()
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
    let per_s = all.len() as f64 / wall.as_secs_f64();
    Ok((stat(all), per_s))
}

/// Count the durable commits `n` debits make, per debit: the daemon's own count
/// (`system.health.journal_commits`, every commit but the unsynced write probes) before
/// and after.
fn count_commits(ctx: &Ctx, c: &mut Client, reader: &str, n: usize) -> R<f64> {
    let (id, _) = c.read(reader)?;
    let commits = |c: &mut Client| -> R<u64> {
        c.call("system.health", json!({}))?["journal_commits"]
            .as_u64()
            .ok_or_else(|| {
                "system.health has no journal_commits (or pass --durable-commits N)".into()
            })
    };
    let before = commits(c)?;
    for i in 0..n {
        c.debit(ctx, reader, ctx.order("commits", i), Some(&id))?;
    }
    let after = commits(c)?;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// The time of one durable commit of a debit, on the journal's filesystem, by the
/// journal's own code: `n` debits' two commits (the pending row with its terminal
/// sequence, `Journal::insert`; the outcome with its audit entry,
/// `Journal::audit_settling`) on a journal of its own beside the daemon's, each timed;
/// the mean of the two medians.
fn commit_time(dir: &Path, n: usize) -> R<(Stat, Stat, f64)> {
    use sscard_daemon::journal::{Journal, Payment, PaymentKind, PaymentStatus};
    let e = |e: rusqlite::Error| format!("commit timing: {e}");
    let path = dir.join("commit-timing.db");
    let mut j = Journal::open(&path).map_err(e)?;
    let first = u32::try_from(j.stored_next_seq().map_err(e)?).unwrap_or(1);
    let (mut ins, mut fin) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 5 {
        let seq = first.saturating_add(i as u32);
        let mut p = Payment {
            order_id: format!("timing-{i}"),
            txn_id: format!("650200000001-{seq:08}"),
            kind: PaymentKind::Debit,
            status: PaymentStatus::Pending,
            card_id: "650200D1560000050011223344556677".into(),
            card_number: "A65020001".into(),
            amount_fen: 1,
            balance_before_fen: 100_000,
            balance_after_fen: 99_999,
            counter: i64::from(seq),
            terminal_id: "650200000001".into(),
            terminal_seq: i64::from(seq),
            time: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            tac: String::new(),
            operator: "bench".into(),
        };
        let t = Instant::now();
        j.insert(&p).map_err(e)?;
        let t_ins = t.elapsed();
        p.status = PaymentStatus::Completed;
        p.tac = "01020304".into();
        let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        let t = Instant::now();
        j.audit_settling(&now, "bench", "pay.debit", "r", "A65020001", "ok", Some(&p))
            .map_err(e)?;
        let t_fin = t.elapsed();
        if i >= 5 {
            ins.push(t_ins);
            fin.push(t_fin);
        }
    }
    drop(j);
    for f in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{f}", path.display()));
    }
    let (ins, fin) = (stat(ins), stat(fin));
    let mean = (ins.median + fin.median) / 2.0;
    Ok((ins, fin, mean))
}

// ---------------------------------------------------------------------------------------

struct Summary {
    slow: Raw,
    p_cached: Stat,
    p_insert: Stat,
    detect: Stat,
    read_1s: Stat,
    one_reader: f64,
    two_readers: f64,
    fast: Raw,
    p_fast: Stat,
    /// P_cached − R5, the median of the blocks' own.
    overhead: f64,
    /// Durable commits a debit makes; none when they could not be counted.
    commits: Option<f64>,
    commits_counted: bool,
    /// One durable commit of a debit (mean of the two), with the two timed apart.
    t_commit: f64,
    t_commits: (Stat, Stat),
    load: (Stat, f64),
}

fn run(ctx: &Ctx) -> R<Summary> {
    let a = &ctx.a;
    let readers = &a.readers;
    let r0 = readers[0].as_str();

    println!(
        "== card speed: T=0, {} bit/s, {} etu a byte, {} ms a command",
        a.bit_rate, a.etu_per_byte, a.processing_ms
    );
    let mut vc = Vec::new();
    for slot in 0..readers.len() {
        vc.push(Vcard::start(ctx, slot, true)?);
    }
    for r in readers {
        wait_pcscd(r, true)?;
    }
    let slow = raw(ctx, r0, a.raw_rounds)?;
    let d = Daemon::start(ctx, "card-speed")?;
    d.wait_cards(readers)?;
    let mut c = Client::connect(&d)?;
    let ev = Events::subscribe(&d)?;
    cached(&mut c, ctx, r0, "warm", 2)?;
    let p_cached = stat(cached(&mut c, ctx, r0, "cached", a.payments)?);
    println!("  pay.debit after card.read (P_cached): {p_cached}");
    let (mut pays, mut detects) = (Vec::new(), Vec::new());
    for i in 0..a.insertions {
        detects.push(reinsert(&mut vc[0], &ev, r0)?);
        pays.push(c.debit(ctx, r0, ctx.order("inserted", i), None)?);
    }
    let (p_insert, detect) = (stat(pays), stat(detects));
    println!("  pay.debit right after card.inserted: {p_insert}");
    println!("  insert → card.inserted event: {detect}");
    let mut reads = Vec::new();
    for _ in 0..a.insertions {
        reinsert(&mut vc[0], &ev, r0)?;
        std::thread::sleep(Duration::from_secs(1));
        reads.push(c.read(r0)?.1);
    }
    let read_1s = stat(reads);
    println!("  card.read 1 s after card.inserted: {read_1s}");
    let one_reader = throughput(ctx, &d, &readers[..1], "one", a.throughput_payments)?;
    let two_readers = throughput(ctx, &d, readers, "two", a.throughput_payments)?;
    println!("  payments/s: one reader {one_reader:.2}, two readers {two_readers:.2}");
    drop((c, ev, d));
    drop(vc);
    for r in readers {
        wait_pcscd(r, false)?;
    }

    println!("== fast cards (no wire time), T=0");
    let mut vc = Vec::new();
    for slot in 0..readers.len() {
        vc.push(Vcard::start(ctx, slot, false)?);
    }
    for r in readers {
        wait_pcscd(r, true)?;
    }
    // with a fast card the machine's drift is of the order of the difference measured:
    // the raw baseline and the daemon take turns, in blocks, on the same card (the raw
    // program's own connection; its disconnect resets the card, so each daemon block
    // starts with a card.read), and the overhead is the median of the blocks' own
    let d = Daemon::start(ctx, "fast")?;
    d.wait_cards(readers)?;
    let mut c = Client::connect(&d)?;
    cached(&mut c, ctx, r0, "fastwarm", 5)?;
    let blocks = a.fast_blocks.max(1);
    let (mut raws, mut p_all, mut overheads) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..blocks {
        let r = raw(ctx, r0, (a.fast_raw_rounds / blocks).max(1))?;
        cached(&mut c, ctx, r0, &format!("fastwarm{b}"), 2)?;
        let p = cached(
            &mut c,
            ctx,
            r0,
            &format!("fast{b}"),
            (a.fast_payments / blocks).max(1),
        )?;
        let pb = stat(p.clone());
        println!("  block {b}: pay.debit after card.read (P_cached): {pb}");
        overheads.push(pb.median - r.r5);
        raws.push(r);
        p_all.extend(p);
    }
    let fast = Raw::median_of(&raws);
    let p_fast = stat(p_all);
    overheads.sort_by(f64::total_cmp);
    let overhead = overheads[overheads.len() / 2];
    println!("  pay.debit after card.read (P_cached), all blocks: {p_fast}");
    let (commits, commits_counted) = match a.durable_commits {
        Some(n) => (Some(n), false),
        None => match count_commits(ctx, &mut c, r0, a.commit_payments) {
            Ok(n) => (Some(n), true),
            Err(e) => {
                eprintln!("sscardd-bench: durable commits not counted: {e}");
                (None, true)
            }
        },
    };
    let journal_dir = d.journal.parent().unwrap_or(&ctx.dir).to_path_buf();
    let (t_insert, t_settle, t_commit) = commit_time(&journal_dir, 200)?;
    println!(
        "  durable journal commits a debit: {}{}; the journal's own: pending row {t_insert}, outcome and audit entry {t_settle}",
        commits.map_or("not counted".into(), |n| format!("{n:.2}")),
        if commits_counted {
            " (counted: system.health.journal_commits)"
        } else {
            " (given)"
        }
    );
    let load = load(ctx, &d, readers, a.clients, a.client_payments)?;
    println!(
        "  {} clients, {} readers: {}, {:.0} payments/s",
        a.clients,
        readers.len(),
        load.0,
        load.1
    );
    drop((c, d));
    drop(vc);
    Ok(Summary {
        slow,
        p_cached,
        p_insert,
        detect,
        read_1s,
        one_reader,
        two_readers,
        fast,
        p_fast,
        overhead,
        commits,
        commits_counted,
        t_commit,
        t_commits: (t_insert, t_settle),
        load,
    })
}

fn print_summary(ctx: &Ctx, s: &Summary) {
    let a = &ctx.a;
    let (r19, r5) = (s.slow.r19, s.slow.r5);
    let overhead = s.overhead;
    let budget = s
        .commits
        .map_or(f64::NAN, |n| n * s.t_commit + 0.1 * s.fast.r19);
    let card_id = if a.no_card_id {
        "without card_id"
    } else {
        "with card_id"
    };
    println!();
    println!(
        "== issue 9 targets ({} bit/s, {} etu a byte, {} ms a command; T=0; pay.debit {card_id})",
        a.bit_rate, a.etu_per_byte, a.processing_ms
    );
    println!();
    println!("| measure | median | p90 | ratio | target |");
    println!("|---|---|---|---|---|");
    let row = |m: &str, med: String, p90: String, ratio: String, target: &str| {
        println!("| {m} | {med} | {p90} | {ratio} | {target} |");
    };
    row(
        &format!(
            "card speed: R19, raw 19-APDU sequence ({})",
            s.slow.r19_sent
        ),
        ms(r19),
        ms(s.slow.r19_p90),
        String::new(),
        "",
    );
    row(
        &format!("card speed: R5, raw 5-APDU payment ({})", s.slow.r5_sent),
        ms(r5),
        ms(s.slow.r5_p90),
        format!("R5/R19 = {:.2}", r5 / r19),
        "",
    );
    row(
        "card speed: P_cached, pay.debit after card.read",
        ms(s.p_cached.median),
        ms(s.p_cached.p90),
        format!(
            "P/R5 = {:.2}; P/R19 = {:.2}",
            s.p_cached.median / r5,
            s.p_cached.median / r19
        ),
        "≤ 1.15; ≈ 0.40",
    );
    row(
        "card speed: pay.debit right after card.inserted",
        ms(s.p_insert.median),
        ms(s.p_insert.p90),
        format!("/R19 = {:.2}", s.p_insert.median / r19),
        "≤ 0.75",
    );
    row(
        "card speed: card.read 1 s after card.inserted",
        ms(s.read_1s.median),
        ms(s.read_1s.p90),
        String::new(),
        "< 5 ms",
    );
    row(
        "card speed: insert → card.inserted event",
        ms(s.detect.median),
        ms(s.detect.p90),
        String::new(),
        "",
    );
    row(
        "card speed: payments/s, one reader → two readers",
        format!("{:.2} → {:.2}", s.one_reader, s.two_readers),
        String::new(),
        format!("{:.2}", s.two_readers / s.one_reader),
        "≥ 1.8",
    );
    row(
        "fast card: R19",
        ms(s.fast.r19),
        ms(s.fast.r19_p90),
        String::new(),
        "",
    );
    row(
        "fast card: R5",
        ms(s.fast.r5),
        ms(s.fast.r5_p90),
        String::new(),
        "",
    );
    row(
        "fast card: P_cached",
        ms(s.p_fast.median),
        ms(s.p_fast.p90),
        String::new(),
        "",
    );
    row(
        "fast card: a debit's commits, timed apart: pending row / outcome + audit entry",
        format!(
            "{} / {}",
            ms(s.t_commits.0.median),
            ms(s.t_commits.1.median)
        ),
        format!("{} / {}", ms(s.t_commits.0.p90), ms(s.t_commits.1.p90)),
        String::new(),
        "",
    );
    row(
        &format!(
            "fast card: budget = {} durable commits{} × {} + 10 % of R19",
            s.commits.map_or("?".into(), |n| format!("{n:.2}")),
            match (s.commits, s.commits_counted) {
                (None, _) => " (not counted: --durable-commits N)",
                (Some(_), true) => " (counted)",
                (Some(_), false) => " (given)",
            },
            ms(s.t_commit)
        ),
        ms(budget),
        String::new(),
        String::new(),
        "",
    );
    row(
        "fast card: daemon overhead = P_cached − R5 (median of the blocks')",
        ms(overhead),
        String::new(),
        format!("/budget = {:.2}", overhead / budget),
        "≤ 1",
    );
    row(
        &format!(
            "fast cards: {} clients on {} readers, pay.debit",
            a.clients,
            a.readers.len()
        ),
        ms(s.load.0.median),
        ms(s.load.0.p90),
        format!("{:.0} payments/s", s.load.1),
        "",
    );
}

fn main() {
    let a = Args::parse();
    if a.readers.len() != SERIALS.len() {
        eprintln!("sscardd-bench: --reader: give the test bed's two readers (or none)");
        std::process::exit(2);
    }
    if std::env::var_os("SSCARD_PCSCD").is_none() {
        eprintln!("sscardd-bench: run inside scripts/with-pcscd (scripts/bench does)");
        std::process::exit(2);
    }
    let bin = match &a.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let base_port = a.base_port.unwrap_or_else(|| {
        std::env::var("SSCARD_VPCD_BASE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(40000)
    });
    let dir = std::env::temp_dir().join(format!("sscardd-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("sscardd-bench: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let ctx = Ctx {
        a,
        bin,
        base_port,
        dir,
        stamp: chrono::Utc::now().timestamp_micros(),
    };
    let result = run(&ctx);
    let _ = std::fs::remove_dir_all(&ctx.dir);
    match result {
        Ok(s) => print_summary(&ctx, &s),
        Err(e) => {
            eprintln!("sscardd-bench: {e}");
            std::process::exit(1);
        }
    }
}
