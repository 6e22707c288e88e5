//! `sscard backup`: an online backup of the daemon's journal now, with the daemon
//! running or not, then the retention of the configuration (docs/operations.md,
//! "Backups"). The journal, the directory and the retention come from the daemon's
//! configuration unless given: only its `journal` key and `[backup]` section are read
//! (`sscard_journal::config::JournalFiles`), the rest of the file is the daemon's.

use crate::exit::CliError;
use crate::print::Printer;
use sscard_journal::backup::{self, BackupError};
use sscard_journal::config::{BackupConfig, JournalFiles, DEFAULT_PATH};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard backup                                   per /etc/sscard/sscardd.toml
  sscard backup --journal /var/lib/sscard/journal.db --dir /var/backups/sscard")]
pub struct Args {
    /// The daemon's configuration [default: /etc/sscard/sscardd.toml, unless both
    /// --journal and --dir are given].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The journal to back up (overrides the configuration).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Where backups go (overrides the configuration's backup.dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Delete backups older than this many weeks, never the newest (overrides
    /// backup.retention_weeks; default 26).
    #[arg(long)]
    retention_weeks: Option<u32>,
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let config = match (&a.config, &a.journal, &a.dir) {
        (None, Some(_), Some(_)) => None,
        (c, _, _) => {
            let path = c.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
            Some(JournalFiles::load(&path).map_err(|e| CliError::new(5, e.to_string()))?)
        }
    };
    let mut cfg = config
        .as_ref()
        .map(|c| c.backup.clone())
        .unwrap_or_default();
    let journal = match (a.journal, &config) {
        (Some(j), _) => j,
        (None, Some(c)) => c.journal.clone(),
        (None, None) => return Err(CliError::usage("--journal is required")),
    };
    if let Some(d) = a.dir {
        cfg.dir = d;
    }
    if let Some(w) = a.retention_weeks {
        if w == 0 {
            return Err(CliError::usage("--retention-weeks must be positive"));
        }
        cfg.retention_weeks = w;
    }
    let (b, gone) = take(&journal, &cfg)?;
    let mut fields = vec![
        ("backup", b.path.display().to_string()),
        ("taken", b.taken.to_rfc3339()),
        ("deleted", gone.len().to_string()),
    ];
    for g in &gone {
        fields.push(("deleted file", g.display().to_string()));
    }
    out.record(&fields);
    Ok(())
}

fn take(
    journal: &std::path::Path,
    cfg: &BackupConfig,
) -> Result<(backup::BackupFile, Vec<PathBuf>), CliError> {
    backup::take_and_prune(journal, cfg).map_err(|e| match e {
        BackupError::Integrity(..) => CliError::failed(e.to_string()),
        _ => CliError::new(5, e.to_string()),
    })
}
