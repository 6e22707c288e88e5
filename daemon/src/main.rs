//! `sscardd`: parse flags, set up logging, build the options, serve until SIGTERM or
//! SIGINT; SIGHUP re-reads the configuration. Exit codes: 0 after a clean shutdown,
//! 2 when the configuration or start-up is refused (the message says why).
#![forbid(unsafe_code)]

use clap::Parser;
use sscard_daemon::config::{token_hash, Config, KeysConfig, Operator, SerialConfig, DEFAULT_PATH};
use sscard_daemon::keys::KeySource;
use sscard_daemon::readers::pcsc::PcscSource;
use sscard_daemon::readers::serial;
use sscard_daemon::readers::sim::SimControl;
use sscard_daemon::readers::source::ReaderSource;
use sscard_daemon::session::Role;
use sscard_daemon::{Daemon, Options};
use sscard_emulator::card::EmulatedCard;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "sscardd",
    version,
    about = "Social-security card daemon: the local payment API"
)]
struct Args {
    /// Configuration file [default: /etc/sscard/sscardd.toml; none with --simulate/--dev].
    #[arg(long)]
    config: Option<PathBuf>,
    /// No hardware: an in-process reader ("sim 0") with the default test card, test
    /// keys, a temporary journal and a demo supervisor.
    #[arg(long, conflicts_with = "dev")]
    simulate: bool,
    /// The machine's PC/SC readers with the test keys, a temporary journal and a demo
    /// supervisor.
    #[arg(long)]
    dev: bool,
    /// Socket path (overrides the configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Journal path (overrides the configuration). In --simulate/--dev the journal is
    /// a temporary one unless this is given, and backups never go to the configured
    /// backup.dir: they go to `backup/` in the temporary directory, or beside this file.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// With --simulate/--dev: a serial reader `PATH[:MODEL]` (GemPCTwin, GemPCPinPad,
    /// GemCorePOSPro, GemCoreSIMPro; the path is split at its last colon), repeatable.
    /// A configuration declares its readers with `[[serial]]`.
    #[arg(long = "serial", value_name = "PATH[:MODEL]")]
    serial: Vec<String>,
}

/// Where a demo mode's backups go: `backup/` beside its journal.
fn demo_backup_dir(journal: &Path) -> PathBuf {
    journal
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("backup")
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("sscardd: {msg}");
    std::process::exit(2)
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SSCARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let a = Args::parse();
    let demo = a.simulate || a.dev;
    let config_path = match (&a.config, demo) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some(PathBuf::from(DEFAULT_PATH)),
    };
    let mut config = match &config_path {
        Some(p) => Config::load(p).unwrap_or_else(|e| fail(e)),
        None => Config::test(
            "650200".parse().unwrap_or_else(|e| fail(e)),
            "650200000001".parse().unwrap_or_else(|e| fail(e)),
        ),
    };
    let mut tmp = None;
    let mut token = None;
    if demo {
        let dir = std::env::temp_dir().join(format!("sscardd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
        if config_path.is_none() {
            config.socket = dir.join("sscard.sock");
        }
        // backups stay beside the demo's journal, never in the configured
        // (production) directory
        config.journal = a.journal.clone().unwrap_or_else(|| dir.join("journal.db"));
        config.backup.dir = demo_backup_dir(&config.journal);
        config.test_mode = true;
        config.keys = Some(KeysConfig::Test);
        let t = hex::encode(rand::random::<[u8; 16]>());
        config.operators.retain(|o| o.name != "demo");
        config.operators.push(Operator {
            name: "demo".into(),
            token_sha256: token_hash(&t),
            role: Role::Supervisor,
            enabled: true,
        });
        token = Some(t);
        tmp = Some(dir);
    }
    if !a.serial.is_empty() && !demo {
        fail("--serial goes with --simulate or --dev; a configuration has [[serial]]");
    }
    for s in &a.serial {
        config
            .serial
            .push(SerialConfig::from_arg(s).unwrap_or_else(|e| fail(e)));
    }
    if let Some(s) = a.socket {
        config.socket = s;
    }
    if let Some(j) = a.journal {
        config.journal = j;
    }
    // a PSAM in a serial reader's SAM slot: that reader is opened now, for the keys, and
    // shared with the serial readers' source
    let psam_serial = if demo {
        None
    } else {
        serial::psam_port(&config).unwrap_or_else(|e| fail(e))
    };
    let keys = match (&psam_serial, demo) {
        (_, true) => KeySource::test(config.region, config.terminal_id),
        (Some((reader, slot)), false) => {
            let card = reader
                .connect(*slot)
                .unwrap_or_else(|e| fail(format!("keys.psam: {e}")));
            KeySource::psam(Box::new(card), &config).unwrap_or_else(|e| fail(e))
        }
        (None, false) => KeySource::from_config(&config).unwrap_or_else(|e| fail(e)),
    };
    let serial_opened: Vec<_> = psam_serial.into_iter().map(|(r, _)| r).collect();
    let readers: Box<dyn ReaderSource> = if a.simulate {
        let sim = SimControl::new();
        sim.add_reader_with_card("sim 0", Box::new(EmulatedCard::default_test_card()));
        Box::new(sim.source())
    } else {
        let ignore = match &config.keys {
            Some(KeysConfig::Psam { reader }) => vec![reader.clone()],
            _ => Vec::new(),
        };
        Box::new(PcscSource::new(ignore))
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(format!("runtime: {e}")));
    rt.block_on(async move {
        let d = Daemon::start(Options {
            config: config.clone(),
            readers,
            keys,
            serial: serial_opened,
        })
        .await
        .unwrap_or_else(|e| fail(e));
        // a closed stdout (the parent stopped reading) must not stop the daemon
        let mut out = std::io::stdout();
        let _ = writeln!(out, "socket: {}", d.socket().display());
        if let Some(t) = &token {
            let _ = writeln!(out, "token: {t}");
        }
        let _ = out.flush();
        let state = d.state();
        if let Some(path) = config_path {
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    let r = match Config::load(&path) {
                        Ok(mut c) => {
                            if demo {
                                // keep what the demo flags chose
                                let now = state.config();
                                c.keys = now.keys.clone();
                                c.test_mode = now.test_mode;
                                c.journal = now.journal.clone();
                                c.socket = now.socket.clone();
                                c.backup.dir = now.backup.dir.clone();
                                if let Some(op) = now.operator("demo") {
                                    c.operators.retain(|o| o.name != "demo");
                                    c.operators.push(op.clone());
                                }
                            }
                            state.reload(c).await
                        }
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(()) => tracing::info!("configuration reloaded"),
                        Err(e) => {
                            tracing::error!("reload refused, the old configuration stays: {e}")
                        }
                    }
                }
            });
        }
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut t) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = t.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        d.serve(shutdown).await;
    });
    // the journal is closed; an upload still waiting on the network is abandoned (its
    // payments stay unacknowledged and go again at the next start)
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Some(dir) = tmp {
        let _ = std::fs::remove_dir_all(dir);
    }
}
