//! `sscard-vcard`: plug an emulated social-security card (or a blank chip, or a PSAM)
//! into pcscd through vsmartcard's vpcd. See `docs/emulator.md`.

use clap::Parser;
use sscard_driver::testkeys::test_manufacturer_key;
use sscard_firmware_tests::card::{AtrChoice, EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::perso::{Chip, IssueFactory};
use sscard_firmware_tests::psam::Psam;
use sscard_firmware_tests::vpcd::{control, serve_with, BridgeOptions, Presence, WireTime};
use sscard_firmware_tests::VirtualCard;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Delay before every answer, in milliseconds.
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
        (
            Box::new(chip),
            format!("blank chip {}", hex::encode_upper(s)),
        )
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
