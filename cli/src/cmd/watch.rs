//! `sscard watch`: reader and card events as they happen, one line each (`--json`: one
//! JSON object a line): PC/SC readers plugged and unplugged, cards inserted (with
//! their ATR) and removed, through pcscd's monitor; and the slots of serial readers
//! named with `--serial`, polled, with the port vanishing and coming back.
//!
//! It runs until interrupted, or until `--count` events or `--seconds` have passed.

use crate::exit::CliError;
use crate::print::Printer;
use serde_json::json;
use sscard_driver::transport::pcsc::{PcscContext, ReaderEvent};
use sscard_driver::transport::serial::model::split_spec;
use sscard_driver::transport::serial::reader::SerialReader;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard watch                                    card and reader events until Ctrl-C
  sscard --json watch --serial /dev/ttyUSB0:GemPCTwin")]
pub struct Args {
    /// A serial reader `PATH[:MODEL]` to watch too (polled every 200 ms), repeatable.
    #[arg(long = "serial", value_name = "PATH[:MODEL]")]
    serial: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u64>,
    /// Do not report the readers and cards there are at start, only changes.
    #[arg(long)]
    changes_only: bool,
}

/// One event line.
struct Line {
    event: &'static str,
    reader: String,
    atr: Option<Vec<u8>>,
}

impl Line {
    fn print(&self, out: &Printer) {
        let time = chrono::Local::now().format("%H:%M:%S%.3f").to_string();
        let mut v = json!({"time": time, "event": self.event, "reader": self.reader});
        let mut t = format!("{time}  {:<15} {}", self.event, self.reader);
        if let Some(a) = &self.atr {
            v["atr"] = hex::encode_upper(a).into();
            t.push_str(&format!("  {}", hex::encode_upper(a)));
        }
        out.value(&v, &t);
    }
}

/// A serial port watched: its reader, and what each slot held at the last look.
struct Watched {
    spec: String,
    reader: SerialReader,
    up: bool,
    present: Vec<bool>,
}

impl Watched {
    fn name(&self, slot: u8) -> String {
        let (path, model) = split_spec(&self.spec);
        format!("{} {path} {slot}", model.name())
    }

    fn poll(&mut self) -> Vec<Line> {
        let mut lines = Vec::new();
        match self.reader.poll() {
            Ok(slots) => {
                if !self.up {
                    self.up = true;
                    self.present = vec![false; slots.len()];
                    for s in &slots {
                        lines.push(Line {
                            event: "reader.added",
                            reader: self.name(s.slot),
                            atr: None,
                        });
                    }
                }
                for s in slots {
                    let was = self
                        .present
                        .get(usize::from(s.slot))
                        .copied()
                        .unwrap_or(false);
                    if s.present != was {
                        lines.push(Line {
                            event: if s.present {
                                "card.inserted"
                            } else {
                                "card.removed"
                            },
                            reader: self.name(s.slot),
                            atr: None,
                        });
                    }
                    if let Some(p) = self.present.get_mut(usize::from(s.slot)) {
                        *p = s.present;
                    }
                }
            }
            Err(e) => {
                if self.up {
                    self.up = false;
                    for slot in 0..self.present.len() {
                        if self.present[slot] {
                            lines.push(Line {
                                event: "card.removed",
                                reader: self.name(slot as u8),
                                atr: None,
                            });
                        }
                        lines.push(Line {
                            event: "reader.removed",
                            reader: self.name(slot as u8),
                            atr: None,
                        });
                    }
                    tracing::debug!("{}: {e}", self.spec);
                }
            }
        }
        lines
    }
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let until = a.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut left = a.count;
    let mut watched: Vec<Watched> = Vec::new();
    for spec in &a.serial {
        let (path, model) = split_spec(spec);
        watched.push(Watched {
            spec: spec.clone(),
            reader: SerialReader::open(path, model)
                .map_err(|e| CliError::from(e).context(format!("serial reader {spec}")))?,
            up: false,
            present: Vec::new(),
        });
    }
    let mut monitor = match PcscContext::establish().and_then(|c| c.monitor()) {
        Ok(m) => Some(m),
        Err(e) if !watched.is_empty() => {
            tracing::warn!("PC/SC: {e}; watching the serial readers only");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut first = true;
    loop {
        let mut lines = Vec::new();
        let wait = if watched.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(200)
        };
        if let Some(m) = monitor.as_mut() {
            for e in m.wait(wait)? {
                lines.push(match e {
                    ReaderEvent::ReaderAdded(r) => Line {
                        event: "reader.added",
                        reader: r,
                        atr: None,
                    },
                    ReaderEvent::ReaderRemoved(r) => Line {
                        event: "reader.removed",
                        reader: r,
                        atr: None,
                    },
                    ReaderEvent::CardInserted { reader, atr } => Line {
                        event: "card.inserted",
                        reader,
                        atr: Some(atr),
                    },
                    ReaderEvent::CardRemoved { reader } => Line {
                        event: "card.removed",
                        reader,
                        atr: None,
                    },
                });
            }
        } else {
            std::thread::sleep(wait);
        }
        for w in &mut watched {
            lines.extend(w.poll());
        }
        let skip = first && a.changes_only;
        first = false;
        if !skip {
            for l in lines {
                l.print(out);
                if let Some(n) = left.as_mut() {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        return Ok(());
                    }
                }
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Ok(());
        }
    }
}
