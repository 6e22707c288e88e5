//! `sscard-vcard`: plug an emulated social-security card (or a blank chip, or a PSAM)
//! into pcscd through vsmartcard's vpcd, or into a serial CCID reader emulated on a
//! pseudo-terminal (`--serial-reader`, what libccid's `libccidtwin` drives). See
//! `docs/emulator.md`.

use clap::Parser;
use sscard_driver::testkeys::test_manufacturer_key;
use sscard_firmware_tests::card::{AtrChoice, EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::perso::{Chip, IssueFactory};
use sscard_firmware_tests::psam::Psam;
use sscard_firmware_tests::serial_reader::{
    install_presence_signals, serve, update_link, Faults, Hit, Model, OnXfr, Pty, ReaderOptions,
    SerialReader, T1Wtx, TimeRequests,
};
use sscard_firmware_tests::vpcd::{control, serve_with, BridgeOptions, Presence, WireTime};
use sscard_firmware_tests::VirtualCard;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sscard-vcard",
    version,
    about = "Serve an emulated SSC-AES card to pcscd through vpcd"
)]
struct Args {
    /// vpcd port (35963 is the stock first slot, 35964 the second).
    #[arg(long, default_value_t = 35963)]
    port: u16,
    /// Card image (JSON): loaded if it exists, else created from the default card.
    #[arg(long)]
    image: Option<PathBuf>,
    /// T=0 mode: case-4 answers come as 61xx and GET RESPONSE.
    #[arg(long)]
    t0: bool,
    /// ATR: t0, t1 or hex bytes (default: follows --t0).
    #[arg(long)]
    atr: Option<String>,
    /// Delay before every answer, in milliseconds (a blank chip's too: a slow
    /// personalization, for tests that interrupt one).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Tear the card out after the Nth command with INS (hex): INS:N[:commit|nocommit].
    #[arg(long)]
    tear_after: Option<String>,
    /// After a tear, how long the card stays out before it is re-inserted.
    #[arg(long, default_value_t = 300)]
    reinsert_ms: u64,
    /// At a tear, how long the torn command stays unanswered (card still in) before
    /// the card leaves.
    #[arg(long, default_value_t = 0)]
    tear_hold_ms: u64,
    /// A file written when a tear begins.
    #[arg(long)]
    tear_signal: Option<PathBuf>,
    /// Never answer a command.
    #[arg(long)]
    mute: bool,
    /// A blank chip (to personalize) instead of an issued card.
    #[arg(long)]
    blank: bool,
    /// Chip serial (16 hex digits) of a blank chip, or of the default card.
    #[arg(long)]
    serial: Option<String>,
    /// Serve a PSAM (card profile §8) instead of a card.
    #[arg(long)]
    psam: bool,
    /// Region of the default card or PSAM.
    #[arg(long, default_value = "650200")]
    region: String,
    /// Terminal id of the PSAM (12 hex digits).
    #[arg(long, default_value = "650200000001")]
    terminal_id: String,
    /// Initial balance of the default card, in fen.
    #[arg(long)]
    balance: Option<u32>,
    /// Answer at a real card's speed: the line's bit rate (etu a second, e.g. 9600);
    /// 0 = answer at once. See docs/emulator.md, "Wire time".
    #[arg(long, default_value_t = 0)]
    bit_rate: u32,
    /// Etu a byte takes on the line (with --bit-rate).
    #[arg(long, default_value_t = 12)]
    etu_per_byte: u32,
    /// The card's processing time a command, in milliseconds (default 2 with
    /// --bit-rate, else 0).
    #[arg(long)]
    processing_ms: Option<u64>,
    /// Read `remove` / `insert` lines on stdin, each answered `ok remove` / `ok insert`
    /// on stdout once done (the end of stdin leaves the card as it is).
    #[arg(long)]
    control_stdin: bool,
    /// Instead of vpcd: emulate a serial CCID reader on a new pseudo-terminal pair,
    /// print `pty: <path of the host side>` as the first line on stdout, and serve the
    /// card in slot 0 until stopped. SIGUSR1 pulls the card out, SIGUSR2 puts it back.
    #[arg(long)]
    serial_reader: bool,
    /// Serial reader model: GemPCTwin (echo, 1 slot), GemCorePOSPro (no echo, 5 slots)
    /// or GemPCPinPad (echo, 1 slot, a keypad: see --keypad-file).
    #[arg(long, default_value = "GemCorePOSPro")]
    model: String,
    /// Keep a symbolic link at PATH to the current pty (with --serial-reader).
    #[arg(long)]
    link: Option<PathBuf>,
    /// A PSAM (region, terminal id as given) in slot 1 (with --serial-reader, on a
    /// model with several slots).
    #[arg(long)]
    with_psam: bool,
    /// The card in slot 0 starts out of the reader (SIGUSR2 puts it in).
    #[arg(long)]
    start_absent: bool,
    /// With --with-psam: the PSAM leaves and comes back with the card in slot 0
    /// (SIGUSR1, SIGUSR2, --start-absent), so that a test bed's reader holds no PSAM
    /// while no test uses it.
    #[arg(long, requires = "with_psam")]
    sam_follows_card: bool,
    /// GemPCPinPad: what the holder types at each PIN prompt is the first line of
    /// PATH, read then: PINs separated by spaces (a change: `current new new`),
    /// `cancel`, or `timeout`; no file or an empty line is a timeout.
    #[arg(long, value_name = "PATH")]
    keypad_file: Option<PathBuf>,
    /// GemPCPinPad: the holder takes MS milliseconds to type (the answer is held back,
    /// in silence).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    keypad_typing_ms: u64,
    /// Echo a command frame longer than N bytes as its header alone (libccid reads an
    /// echo into the buffer of the answer it expects: a GemPCPinPad for libccid needs
    /// --echo-limit 20).
    #[arg(long, value_name = "N")]
    echo_limit: Option<usize>,
    /// Fault (--serial-reader): flip a bit of the byte before the LRC of the Nth answer
    /// frame (`N`) or of every Nth (`every:N`). A frame resent on a NAK goes intact.
    #[arg(long, value_name = "HIT", help_heading = "Serial reader faults")]
    corrupt: Option<String>,
    /// Fault: leave out the middle byte of these answer frames (HIT: N or every:N).
    #[arg(long, value_name = "HIT", help_heading = "Serial reader faults")]
    drop_byte: Option<String>,
    /// Fault: answer these command frames (HIT: N or every:N, counting intact command
    /// frames) with a NAK, without running them.
    #[arg(long, value_name = "HIT", help_heading = "Serial reader faults")]
    nak: Option<String>,
    /// Fault: hold these answer frames back MS milliseconds, in silence
    /// (HIT:MS, e.g. every:1:2500).
    #[arg(long, value_name = "HIT:MS", help_heading = "Serial reader faults")]
    answer_delay: Option<String>,
    /// Fault: before these answer frames, COUNT T=0 time requests (byte 80), each
    /// after MS milliseconds, and the answer MS after the last (HIT:COUNT:MS).
    #[arg(
        long,
        value_name = "HIT:COUNT:MS",
        help_heading = "Serial reader faults"
    )]
    time_requests: Option<String>,
    /// Fault: echo command frames (on) or not (off), whatever the model does.
    #[arg(long, value_name = "on|off", help_heading = "Serial reader faults")]
    echo: Option<String>,
    /// Fault: pull the card out of its slot on the Nth XfrBlock (counted over every
    /// slot); `:run` lets the card run the command first. It comes back after
    /// --reinsert-ms.
    #[arg(long, value_name = "N[:run]", help_heading = "Serial reader faults")]
    pull_on_xfr: Option<String>,
    /// Fault: unplug the reader on the Nth XfrBlock, leaving it unanswered (`:run`:
    /// the card runs it first): the pty is closed and the --link removed, and MS
    /// milliseconds later a new pty is opened behind the link (its path printed as
    /// another `pty:` line), the reader reset as from a power cycle.
    #[arg(long, value_name = "N:MS[:run]", help_heading = "Serial reader faults")]
    unplug_on_xfr: Option<String>,
    /// Fault (T=1): flip a bit of the EDC of these blocks the card sends (HIT: N or
    /// every:N, counting every block the card sends).
    #[arg(long, value_name = "HIT", help_heading = "Serial reader faults")]
    t1_corrupt: Option<String>,
    /// Fault (T=1): before these answers (HIT over the APDUs answered in T=1) the card
    /// asks S(WTX) with multiplier MULT, then holds its answer MS milliseconds.
    #[arg(
        long,
        value_name = "HIT:MULT:MS",
        help_heading = "Serial reader faults"
    )]
    t1_wtx: Option<String>,
}

fn fail(msg: String) -> ! {
    eprintln!("sscard-vcard: {msg}");
    std::process::exit(2)
}

fn knobs(a: &Args) -> Knobs {
    let atr = match a.atr.as_deref() {
        None => AtrChoice::Auto,
        Some("t0") => AtrChoice::T0,
        Some("t1") => AtrChoice::T1,
        Some(h) => match hex::decode(h) {
            Ok(_) => AtrChoice::Custom(h.to_string()),
            Err(_) => fail(format!("--atr {h:?}: t0, t1 or hex bytes")),
        },
    };
    let tear = a
        .tear_after
        .as_deref()
        .map(|s| Knobs::parse_tear(s).unwrap_or_else(|e| fail(e)));
    Knobs {
        t0: a.t0,
        atr,
        delay_ms: a.delay_ms,
        tear,
        mute: a.mute,
    }
}

fn wire(a: &Args) -> WireTime {
    if a.etu_per_byte == 0 {
        fail("--etu-per-byte: at least 1".into());
    }
    let default_processing = if a.bit_rate > 0 { 2 } else { 0 };
    WireTime {
        bit_rate: a.bit_rate,
        etu_per_byte: a.etu_per_byte,
        processing: Duration::from_millis(a.processing_ms.unwrap_or(default_processing)),
    }
}

fn serial(a: &Args, default: &str) -> [u8; 8] {
    let s = a.serial.as_deref().unwrap_or(default);
    let mut b = [0u8; 8];
    hex::decode_to_slice(s, &mut b)
        .unwrap_or_else(|_| fail(format!("--serial {s:?}: 16 hex digits")));
    b
}

fn psam_card(a: &Args) -> Psam {
    let region = a
        .region
        .parse()
        .unwrap_or_else(|e| fail(format!("--region: {e}")));
    let tid = a
        .terminal_id
        .parse()
        .unwrap_or_else(|e| fail(format!("--terminal-id: {e}")));
    let mut p = Psam::test_psam(region, tid);
    p.set_t0(a.t0);
    p
}

/// A HIT (`N` or `every:N`) at the start of `parts`, taken off.
fn take_hit(flag: &str, parts: &mut Vec<&str>) -> Hit {
    let n = if parts.first() == Some(&"every") {
        2
    } else {
        1
    };
    if parts.len() < n {
        fail(format!("--{flag}: HIT is N or every:N"));
    }
    let hit: Vec<&str> = parts.drain(..n).collect();
    Hit::parse(&hit.join(":")).unwrap_or_else(|e| fail(format!("--{flag}: {e}")))
}

fn number<T: std::str::FromStr>(flag: &str, s: Option<&str>) -> T {
    s.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fail(format!("--{flag}: a number expected")))
}

fn on_xfr(flag: &str, n: Option<&str>, run: Option<&str>) -> OnXfr {
    let nth: u32 = number(flag, n);
    if nth == 0 {
        fail(format!("--{flag}: XfrBlocks count from 1"));
    }
    let card_runs = match run {
        None => false,
        Some("run") => true,
        Some(o) => fail(format!("--{flag}: {o:?}: `run` or nothing")),
    };
    OnXfr { nth, card_runs }
}

fn faults(a: &Args) -> Faults {
    let mut f = Faults::default();
    let hit = |flag: &str, v: &Option<String>| match v {
        None => Hit::Never,
        Some(s) => Hit::parse(s).unwrap_or_else(|e| fail(format!("--{flag}: {e}"))),
    };
    f.corrupt = hit("corrupt", &a.corrupt);
    f.drop_byte = hit("drop-byte", &a.drop_byte);
    f.nak = hit("nak", &a.nak);
    if let Some(s) = &a.answer_delay {
        let mut p: Vec<&str> = s.split(':').collect();
        let h = take_hit("answer-delay", &mut p);
        let ms: u64 = number("answer-delay", p.first().copied());
        f.delay = Some((h, Duration::from_millis(ms)));
    }
    if let Some(s) = &a.time_requests {
        let mut p: Vec<&str> = s.split(':').collect();
        let h = take_hit("time-requests", &mut p);
        f.time_requests = Some(TimeRequests {
            hit: h,
            count: number("time-requests", p.first().copied()),
            interval: Duration::from_millis(number("time-requests", p.get(1).copied())),
        });
    }
    f.echo = match a.echo.as_deref() {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(o) => fail(format!("--echo {o:?}: on or off")),
    };
    if let Some(s) = &a.pull_on_xfr {
        let p: Vec<&str> = s.split(':').collect();
        f.pull = Some(on_xfr("pull-on-xfr", p.first().copied(), p.get(1).copied()));
    }
    f.t1_corrupt = hit("t1-corrupt", &a.t1_corrupt);
    if let Some(s) = &a.t1_wtx {
        let mut p: Vec<&str> = s.split(':').collect();
        let h = take_hit("t1-wtx", &mut p);
        f.t1_wtx = Some(T1Wtx {
            hit: h,
            multiplier: number("t1-wtx", p.first().copied()),
            hold: Duration::from_millis(number("t1-wtx", p.get(1).copied())),
        });
    }
    if let Some(s) = &a.unplug_on_xfr {
        let p: Vec<&str> = s.split(':').collect();
        let u = on_xfr("unplug-on-xfr", p.first().copied(), p.get(2).copied());
        let ms: u64 = number("unplug-on-xfr", p.get(1).copied());
        f.unplug = Some((u, Duration::from_millis(ms)));
    }
    f
}

/// `--serial-reader`: the card in slot 0 of an emulated serial reader on a new pty.
fn serve_serial(a: &Args, card: Box<dyn VirtualCard>, what: &str) -> ! {
    let model = Model::parse(&a.model).unwrap_or_else(|| {
        let names: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
        fail(format!(
            "--model {:?}: one of {}",
            a.model,
            names.join(", ")
        ))
    });
    let mut cards: Vec<Option<Box<dyn VirtualCard>>> = vec![Some(card)];
    if a.with_psam {
        cards.push(Some(Box::new(psam_card(a))));
    }
    let opts = ReaderOptions {
        reinsert_after: Duration::from_millis(a.reinsert_ms),
        faults: faults(a),
        sam_follows_card: a.sam_follows_card,
        keypad: a.keypad_file.clone(),
        keypad_typing: Duration::from_millis(a.keypad_typing_ms),
        echo_limit: a.echo_limit,
    };
    let mut reader = SerialReader::new(model, cards, opts).unwrap_or_else(|e| fail(e));
    if a.start_absent {
        reader.move_card(false);
    }
    let mut pty = Pty::open().unwrap_or_else(|e| fail(format!("pseudo-terminal: {e}")));
    if let Some(link) = &a.link {
        update_link(link, pty.path())
            .unwrap_or_else(|e| fail(format!("--link {}: {e}", link.display())));
    }
    install_presence_signals();
    println!("pty: {}", pty.path().display());
    println!("sscard-vcard: serving {what} in a {model} reader");
    let _ = std::io::stdout().flush();
    let stop = AtomicBool::new(false);
    let reader = Mutex::new(reader);
    let plugged = |p: &std::path::Path| {
        println!("pty: {}", p.display());
        let _ = std::io::stdout().flush();
    };
    match serve(&reader, &mut pty, a.link.as_deref(), &stop, plugged) {
        Ok(()) => std::process::exit(0),
        Err(e) => fail(format!("serial reader: {e}")),
    }
}

/// A blank chip answering `--delay-ms` late (the issued card has its own knob).
struct Delayed(Box<dyn VirtualCard>, Duration);

impl VirtualCard for Delayed {
    fn atr(&self) -> Vec<u8> {
        self.0.atr()
    }
    fn power_on(&mut self) {
        self.0.power_on()
    }
    fn power_off(&mut self) {
        self.0.power_off()
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn process(&mut self, command: &[u8]) -> sscard_firmware_tests::Reply {
        std::thread::sleep(self.1);
        self.0.process(command)
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SSCARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let a = Args::parse();
    let k = knobs(&a);
    let (mut card, what): (Box<dyn VirtualCard>, String) = if a.psam {
        let region = a
            .region
            .parse()
            .unwrap_or_else(|e| fail(format!("--region: {e}")));
        let tid = a
            .terminal_id
            .parse()
            .unwrap_or_else(|e| fail(format!("--terminal-id: {e}")));
        let make = || Psam::test_psam(region, tid);
        let mut p = match &a.image {
            Some(path) => Psam::open_image(path, make).unwrap_or_else(|e| fail(e.to_string())),
            None => make(),
        };
        p.set_t0(a.t0);
        (Box::new(p), format!("PSAM {}", a.terminal_id))
    } else if a.blank {
        let s = serial(&a, "0011223344556677");
        let card_image = a.image.as_ref().map(|p| p.with_extension("card.json"));
        let kk = k.clone();
        let factory: IssueFactory = Box::new(move |data| {
            let card = match &card_image {
                Some(p) => EmulatedCard::open_or_issue(p, kk.clone(), data),
                None => EmulatedCard::from_issued(data, kk.clone()),
            };
            match card {
                Ok(c) => Box::new(c),
                Err(e) => fail(e.to_string()),
            }
        });
        let chip = match &a.image {
            Some(p) => Chip::open_image(p, s, &test_manufacturer_key(), factory)
                .unwrap_or_else(|e| fail(e)),
            None => Chip::blank(s, &test_manufacturer_key(), factory),
        };
        let chip: Box<dyn VirtualCard> = match a.delay_ms {
            0 => Box::new(chip),
            ms => Box::new(Delayed(Box::new(chip), Duration::from_millis(ms))),
        };
        (chip, format!("blank chip {}", hex::encode_upper(s)))
    } else {
        let mut p = Personalization::default_test_card();
        p.region = a.region.clone();
        if let Some(s) = &a.serial {
            p.chip_serial = s.clone();
        }
        if let Some(b) = a.balance {
            p.balance = b;
        }
        let card = match &a.image {
            Some(path) => EmulatedCard::open_image(path, k, || p),
            None => EmulatedCard::new(&p, k),
        }
        .unwrap_or_else(|e| fail(e.to_string()));
        let id = card.card_id().to_hex();
        (Box::new(card), format!("card {id}"))
    };
    if a.serial_reader {
        serve_serial(&a, card, &what)
    }
    let mut opts = BridgeOptions::port(a.port);
    opts.reinsert_after = Duration::from_millis(a.reinsert_ms);
    opts.tear_hold = Duration::from_millis(a.tear_hold_ms);
    opts.tear_signal = a.tear_signal.clone();
    opts.wire = wire(&a);
    let presence = Arc::new(Presence::default());
    if a.control_stdin {
        let p = presence.clone();
        std::thread::spawn(move || {
            if let Err(e) = control(&p, std::io::stdin().lock(), std::io::stdout()) {
                tracing::warn!("control on stdin: {e}; the card stays as it is");
            }
        });
    }
    let mut announced = false;
    // never stopped: serves until the process is killed
    serve_with(card.as_mut(), &opts, &presence, || {
        if !announced {
            println!("sscard-vcard: serving {what} on 127.0.0.1:{}", a.port);
            announced = true;
        }
    })
}
