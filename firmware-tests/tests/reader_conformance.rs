//! The reader conformance suite (`sscard_firmware_tests::reader_conformance`) against
//! the emulated serial readers: through the project's own serial backend
//! (`sscard-vcard --serial-reader` on a pty: a GemCore POS Pro with a PSAM in its first
//! SAM slot, a GemPC Twin, and a GemPC PinPad whose keypad the tests type on) and
//! through pcscd with libccid's `libccidtwin` (the test bed's emulated readers,
//! `SerialReaderLease`). Every check must pass; the only skips allowed are those the
//! reader cannot have (no PIN pad, no SAM slot or no PSAM in it).
//!
//! With `SSCARD_CONFORMANCE_READER` set (`serial:/dev/ttyUSB0:GemCorePOSPro` or
//! `pcsc:<reader name>`), only that reader is tested (docs/serial-readers.md, "The
//! reader conformance suite").
//!
//! Reports go to `$SSCARD_CONFORMANCE_REPORT` (a directory), else to
//! `target/tmp/reader-conformance/`, as `reader-conformance-<reader>.txt` and `.json`.
//! Run under `scripts/with-pcscd` (scripts/test does): the libccid tests need its
//! private pcscd.

use sscard_driver::transport::serial::model::Model;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::CardTransport;
use sscard_firmware_tests::reader_conformance::{
    check_names, open_target, run, Hands, Keypad, Outcome, PadAction, ReaderSpec, ReaderTarget,
    Report, SuiteConfig, REPORT_ENV,
};
use sscard_firmware_tests::testbed::{wait_present, SerialReaderLease, SerialVcard};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn report_dir() -> PathBuf {
    std::env::var_os(REPORT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reader-conformance"))
}

fn write(report: &Report) {
    let (text, json) = report.write(&report_dir()).expect("write the report");
    println!("{}", report.to_text());
    println!("report: {} and {}", text.display(), json.display());
}

/// True (and says so) when a real reader is named: the emulator tests stand aside.
fn real_reader_named() -> bool {
    let named = ReaderSpec::from_env().is_some();
    if named {
        println!("SSCARD_CONFORMANCE_READER is set: only that reader is tested");
    }
    named
}

/// Every check passed, but those in `skips` (check name, part of the reason), which
/// must have been skipped.
fn assert_conforms(report: &Report, skips: &[(&str, &str)]) {
    assert_eq!(report.results.len(), check_names().len());
    assert!(report.failures().is_empty(), "{}", report.to_text());
    for r in &report.results {
        match (&r.outcome, skips.iter().find(|(n, _)| *n == r.name)) {
            (Outcome::Passed(_), None) => {}
            (Outcome::Skipped(why), Some((_, want))) if why.contains(want) => {}
            (o, want) => panic!(
                "{}: {o:?}, expected {}\n{}",
                r.name,
                want.map_or("a pass".to_string(), |w| format!("a skip for {w:?}")),
                report.to_text()
            ),
        }
    }
    assert!(
        report
            .timings
            .iter()
            .any(|t| t.command == "APDU (all, card slot)" && t.count > 50),
        "{:?}",
        report.timings
    );
}

const PIN_PAD: &str = "PIN pad entry";
const SAM: &str = "SAM slot while the card slot is in a transaction";
const CHAIN_61XX: &str = "61xx chain and GET RESPONSE";

/// The suite through the project's serial backend on an emulated `model`.
fn serial_backend(model: Model, args: &[&str]) -> Report {
    serial_backend_with(SerialVcard::start(model.name(), args), model, None)
}

/// What the holder does, written where the emulated pad reads it (`--keypad-file`).
fn keypad_file(path: &Path, action: PadAction<'_>) {
    let line = match action {
        PadAction::Type(digits) => digits,
        PadAction::Cancel => "cancel",
    };
    std::fs::write(path, format!("{line}\n")).unwrap();
}

/// The suite through the project's serial backend on the emulated reader `v`, its
/// keypad the file `keypad` if it has one.
fn serial_backend_with(v: SerialVcard, model: Model, keypad: Option<&Path>) -> Report {
    let path = v.pty.to_string_lossy().to_string();
    let reader = SerialReader::open(&path, model).unwrap();
    let card = reader.connect(0).unwrap();
    let sam: Result<Box<dyn CardTransport>, String> = if model.slots() > 1 {
        reader
            .connect(1)
            .map(|s| Box::new(s) as Box<dyn CardTransport>)
            .map_err(|e| format!("slot 1: {e}"))
    } else {
        Err(format!("a {model} has no SAM slot"))
    };
    let mut target = ReaderTarget {
        label: format!("emulated {model} through the serial backend"),
        card: Box::new(card),
        sam,
        pin_pad: model.pin_pad(),
        keypad: match keypad {
            Some(path) => Keypad::Driven(Box::new(move |a| keypad_file(path, a))),
            None => Keypad::Nobody("no keypad file".into()),
        },
        hands: Hands::Driven {
            remove: Box::new(|| v.signal("USR1")),
            insert: Box::new(|| v.signal("USR2")),
        },
        pcsc_events: None,
    };
    let report = run(&mut target, &SuiteConfig::default());
    write(&report);
    report
}

#[test]
fn gemcore_pos_pro_with_a_psam_through_the_serial_backend() {
    if real_reader_named() {
        return;
    }
    let r = serial_backend(Model::GemCorePosPro, &["--with-psam"]);
    assert_conforms(&r, &[(PIN_PAD, "no PIN pad")]);
}

#[test]
fn a_t1_card_in_a_gemcore_pos_pro_with_a_psam_through_the_serial_backend() {
    if real_reader_named() {
        return;
    }
    let v = SerialVcard::start_t1("GemCorePOSPro", &["--with-psam"]);
    let r = serial_backend_with(v, Model::GemCorePosPro, None);
    assert_conforms(&r, &[(PIN_PAD, "no PIN pad"), (CHAIN_61XX, "speaks T=1")]);
    assert!(r.to_text().contains("T=1"), "{}", r.to_text());
}

#[test]
fn gempc_twin_through_the_serial_backend() {
    if real_reader_named() {
        return;
    }
    let r = serial_backend(Model::GemPcTwin, &[]);
    assert_conforms(&r, &[(PIN_PAD, "no PIN pad"), (SAM, "no SAM slot")]);
}

#[test]
fn gempc_pinpad_through_the_serial_backend() {
    if real_reader_named() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keypad");
    let v = SerialVcard::start("GemPCPinPad", &["--keypad-file", &keys.to_string_lossy()]);
    let r = serial_backend_with(v, Model::GemPcPinPad, Some(&keys));
    assert_conforms(&r, &[(SAM, "no SAM slot")]);
    assert!(r.to_text().contains("6401"), "{}", r.to_text());
}

/// The suite through pcscd and libccid on the test bed's emulated `model`.
fn libccid(model: &str) -> Report {
    let lease = SerialReaderLease::acquire(model);
    let card = lease.connect();
    // a test bed reader with SAM slots holds a PSAM in the first while leased
    // (scripts/with-pcscd: --with-psam --sam-follows-card)
    let sam: Result<Box<dyn CardTransport>, String> = match lease.readers().get(1) {
        None => Err(format!("a {model} has no SAM slot")),
        Some(name) => sscard_driver::transport::pcsc::PcscContext::establish()
            .and_then(|c| {
                wait_present(&c, name, true, Duration::from_secs(10));
                c.connect(
                    name,
                    sscard_driver::transport::pcsc::ShareMode::Shared,
                    None,
                )
            })
            .map(|s| Box::new(s) as Box<dyn CardTransport>)
            .map_err(|e| format!("no PSAM in {name:?}: {e}")),
    };
    let reader0 = lease.reader(0).to_string();
    // what libccid reports for the model (the part 10 features)
    let pin_pad = card.capabilities().pin_pad;
    let mut target = ReaderTarget {
        label: format!("emulated {model} through pcscd and libccid ({reader0})"),
        card: Box::new(card),
        sam,
        pin_pad,
        keypad: Keypad::Driven(Box::new(|a| {
            lease.keypad(match a {
                PadAction::Type(digits) => digits,
                PadAction::Cancel => "cancel",
            })
        })),
        hands: Hands::Driven {
            remove: Box::new(|| lease.remove()),
            insert: Box::new(|| lease.insert()),
        },
        pcsc_events: Some(reader0),
    };
    let report = run(&mut target, &SuiteConfig::default());
    write(&report);
    report
}

#[test]
fn gemcore_pos_pro_through_pcscd_and_libccid() {
    if real_reader_named() {
        return;
    }
    let r = libccid("GemCorePOSPro");
    // the SAM slot used while the card slot is busy, through libccid's shared bSeq
    assert_conforms(&r, &[(PIN_PAD, "no PIN pad")]);
}

#[test]
fn a_t1_card_in_a_gempc_twin_through_pcscd_and_libccid() {
    if real_reader_named() {
        return;
    }
    let r = libccid("GemPCTwin-t1");
    assert_conforms(
        &r,
        &[
            (PIN_PAD, "no PIN pad"),
            (SAM, "no SAM slot"),
            (CHAIN_61XX, "speaks T=1"),
        ],
    );
}

#[test]
fn gempc_twin_through_pcscd_and_libccid() {
    if real_reader_named() {
        return;
    }
    let r = libccid("GemPCTwin");
    assert_conforms(&r, &[(PIN_PAD, "no PIN pad"), (SAM, "no SAM slot")]);
}

#[test]
fn a_t1_card_in_a_gempc_pinpad_through_pcscd_and_libccid() {
    if real_reader_named() {
        return;
    }
    let r = libccid("GemPCPinPad-t1");
    assert_conforms(&r, &[(SAM, "no SAM slot"), (CHAIN_61XX, "speaks T=1")]);
    assert!(r.to_text().contains("6401"), "{}", r.to_text());
}

/// The reader `SSCARD_CONFORMANCE_READER` names, if any: no check may fail (skips are
/// in the report, with their reasons).
#[test]
fn the_named_reader() {
    let Some(spec) = ReaderSpec::from_env() else {
        return;
    };
    let spec = spec.unwrap_or_else(|e| panic!("SSCARD_CONFORMANCE_READER: {e}"));
    let mut target = open_target(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let report = run(&mut target, &SuiteConfig::default());
    write(&report);
    assert!(report.failures().is_empty(), "{}", report.to_text());
}
