//! Every hex ATR of pcsc-tools' `smartcard_list.txt` (Debian `pcsc-tools`, which
//! `scripts/setup` installs): each is decoded, and a malformed one (real cards send
//! them) is read as far as it goes with what is wrong named, never just "invalid".

use sscard_driver::atr::{Atr, AtrProblem};
use std::path::Path;

const LIST: &str = "/usr/share/pcsc/smartcard_list.txt";

fn hex_atrs() -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read(Path::new(LIST))
        .unwrap_or_else(|e| panic!("{LIST}: {e} (scripts/setup installs pcsc-tools)"));
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t', '#']))
        .filter_map(|l| {
            let compact = l.trim().replace(' ', "");
            // entries with wildcards (`..`, `[…]`) are patterns, not ATRs
            hex::decode(&compact)
                .ok()
                .map(|b| (l.trim().to_string(), b))
        })
        .collect()
}

#[test]
fn every_atr_of_the_list_is_decoded_or_its_fault_named() {
    let atrs = hex_atrs();
    assert!(atrs.len() > 3000, "{} hex ATRs in {LIST}", atrs.len());
    let mut invalid = 0;
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (line, b) in &atrs {
        let a = Atr::analyse(b).unwrap_or_else(|e| panic!("{line}: {e}"));
        let d = a.describe();
        assert!(d.starts_with("ATR: "), "{line}: {d}");
        match Atr::parse(b) {
            Ok(parsed) => {
                assert!(a.is_valid(), "{line}");
                assert_eq!(parsed, a.atr);
                assert!(d.contains("protocols offered: T="), "{line}: {d}");
            }
            Err(e) => {
                invalid += 1;
                assert!(
                    !a.is_valid(),
                    "{line}: parse says {e}, the analysis nothing"
                );
                assert!(d.contains("INVALID ATR:\n- "), "{line}: {d}");
                // the decode went on: T0 is explained whenever it is there
                if b.len() > 1 {
                    assert!(d.contains("T0 = "), "{line}: {d}");
                }
                for p in &a.problems {
                    *kinds
                        .entry(match p {
                            AtrProblem::BadTs(_) => "TS",
                            AtrProblem::TooLong(_) => "too long",
                            AtrProblem::Missing { .. } => "interface byte missing",
                            AtrProblem::HistoricalMissing { .. } => "historical missing",
                            AtrProblem::TckMissing => "TCK missing",
                            AtrProblem::TckMismatch { .. } => "TCK wrong",
                            AtrProblem::TrailingBytes { .. } => "bytes after the end",
                        })
                        .or_default() += 1;
                }
            }
        }
    }
    println!("{} ATRs, {invalid} malformed: {kinds:?}", atrs.len());
    assert!(invalid > 0, "the list holds malformed ATRs; none found");
    // the faults the list's malformed ATRs have, each named
    for k in [
        "historical missing",
        "TCK missing",
        "TCK wrong",
        "bytes after the end",
    ] {
        assert!(kinds.contains_key(k), "{k}: {kinds:?}");
    }
}
