//! `sscard audit verify --journal PATH`: check the daemon's audit chain and the
//! payments anchored to it (docs/operations.md, "What the audit chain proves"), or an
//! issuing office's journal (its hash chain and its blacklist, docs/office.md); every
//! finding is listed, one a line (exit code 4).

use crate::exit::CliError;
use crate::print::Printer;
use std::path::PathBuf;

/// Findings listed in full; the rest are counted.
const SHOWN: usize = 20;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Verify the SHA-256 chain of the audit log and the payments anchored to it (a
    /// daemon's journal), or of the office log and its blacklist (an office journal).
    ///
    /// Example: `sscard audit verify --journal /var/lib/sscard/journal.db`
    Verify {
        /// The daemon's journal or an office journal (SQLite).
        #[arg(long)]
        journal: PathBuf,
    },
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let Sub::Verify { journal } = a.cmd;
    if !journal.exists() {
        return Err(CliError::new(
            5,
            format!("{}: no such journal", journal.display()),
        ));
    }
    if sscard_journal::office::has_office_log(&journal).map_err(|e| CliError::new(5, e))? {
        return verify_office(&journal, out);
    }
    let v = sscard_journal::verify(&journal).map_err(|e| CliError::new(5, e))?;
    if v.findings.is_empty() {
        let head = v
            .head
            .as_ref()
            .map_or("none".to_string(), |h| format!("{} {}", h.seq, h.hash));
        let mut fields = vec![
            ("audit chain", "intact".to_string()),
            ("entries", v.entries.to_string()),
            ("head", head),
        ];
        if v.schema >= 2 {
            fields.push(("payments", format!("{} anchored", v.payments)));
        } else {
            fields.push((
                "payments",
                format!("not checked (schema {}: not anchored)", v.schema),
            ));
        }
        out.record(&fields);
        return Ok(());
    }
    let n = v.findings.len();
    let mut msg = format!(
        "audit chain broken: {n} finding{} ({} entries, {} payments)",
        if n == 1 { "" } else { "s" },
        v.entries,
        v.payments
    );
    for t in v.findings.iter().take(SHOWN) {
        msg.push_str(&format!("\n  - {t}"));
    }
    if n > SHOWN {
        msg.push_str(&format!("\n  … and {} more", n - SHOWN));
    }
    Err(CliError::new(4, msg))
}

fn verify_office(journal: &std::path::Path, out: &Printer) -> Result<(), CliError> {
    let v = sscard_journal::office::verify_office(journal).map_err(|e| CliError::new(5, e))?;
    if v.findings.is_empty() {
        let head = v
            .head
            .as_ref()
            .map_or("none".to_string(), |h| format!("{} {}", h.seq, h.hash));
        out.record(&[
            ("office journal", "intact".to_string()),
            ("entries", v.entries.to_string()),
            ("head", head),
        ]);
        return Ok(());
    }
    let n = v.findings.len();
    let mut msg = format!(
        "office journal broken: {n} finding{} ({} entries)",
        if n == 1 { "" } else { "s" },
        v.entries
    );
    for t in v.findings.iter().take(SHOWN) {
        msg.push_str(&format!("\n  - {t}"));
    }
    if n > SHOWN {
        msg.push_str(&format!("\n  … and {} more", n - SHOWN));
    }
    Err(CliError::new(4, msg))
}
