//! `sscard audit verify --journal PATH`: check the daemon's audit chain; any changed or
//! deleted entry is reported by sequence number (exit code 4).

use crate::exit::CliError;
use crate::print::Printer;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Verify the SHA-256 chain of the audit log.
    Verify {
        /// The daemon's journal (SQLite).
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
    match sscard_daemon::journal::verify_chain(&journal) {
        Ok(n) => {
            out.record(&[("audit chain", "intact".into()), ("entries", n.to_string())]);
            Ok(())
        }
        Err(sscard_daemon::journal::Tamper::Db(e)) => Err(CliError::new(5, e)),
        Err(t) => Err(CliError::new(4, format!("audit chain broken: {t}"))),
    }
}
