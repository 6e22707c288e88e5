//! Online backups of the journal: the backups themselves are `sscard_journal::backup`
//! (re-exported here whole), which `sscard backup` shares; the daemon adds their
//! schedule.

pub use sscard_journal::backup::*;

use crate::state::State;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// The schedule: look at start and every hour (the configuration is re-read each time).
pub async fn run(st: Arc<State>) {
    loop {
        let config = st.config();
        let cfg = config.backup.clone();
        let journal = config.journal.clone();
        let now = Utc::now();
        match due(&cfg, now) {
            Ok(false) => {}
            Ok(true) => {
                let c = cfg.clone();
                let r = tokio::task::spawn_blocking(move || take_and_prune(&journal, &c)).await;
                let outcome = match r {
                    Ok(Ok((b, gone))) => {
                        tracing::info!(
                            "backup {} taken; {} old backups deleted",
                            b.path.display(),
                            gone.len()
                        );
                        format!(
                            "ok {} ({} older than {} weeks deleted)",
                            b.path.display(),
                            gone.len(),
                            cfg.retention_weeks
                        )
                    }
                    Ok(Err(e)) => {
                        tracing::error!("scheduled backup failed: {e}");
                        format!("failed: {e}")
                    }
                    Err(e) => format!("failed: {e}"),
                };
                let _ = st.audit("sscardd", "backup", "", "", &outcome).await;
            }
            Err(e) => tracing::error!("backup directory: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
