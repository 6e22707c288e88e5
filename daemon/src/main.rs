//! `sscardd`: parse flags, set up logging, build the state, serve.

use clap::Parser;
use sscard_daemon::config::{token_hash, Config, Operator, Role};
use sscard_daemon::journal::Journal;
use sscard_daemon::methods::State;
use sscard_daemon::readers::{watch_pcsc, Backend, Reader};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::transport::pcsc::PcscContext;
use sscard_firmware_tests::card::EmulatedCard;
use sscard_firmware_tests::sim::SimReader;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "sscardd",
    version,
    about = "Social-security card daemon: the local payment API"
)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/sscard/sscardd.toml")]
    config: PathBuf,
    /// No hardware: an in-process reader with the default test card, test keys, a
    /// temporary journal and a demo supervisor.
    #[arg(long)]
    simulate: bool,
    /// Real PC/SC readers with the test keys, a temporary journal and a demo supervisor.
    #[arg(long)]
    dev: bool,
    /// Socket path (overrides the configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Journal path (overrides the configuration).
    #[arg(long)]
    journal: Option<PathBuf>,
}

fn fail(msg: String) -> ! {
    eprintln!("sscardd: {msg}");
    std::process::exit(2)
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
    let demo = a.simulate || a.dev;
    let tmp = std::env::temp_dir().join(format!("sscardd-{}", std::process::id()));
    let mut token = String::new();
    let mut config = if demo && !a.config.exists() {
        token = hex::encode(rand::random::<[u8; 16]>());
        Config {
            socket: tmp.join("sscard.sock"),
            journal: tmp.join("journal.db"),
            terminal_id: "650200000001".into(),
            region: "650200".into(),
            limits: Default::default(),
            reader_wait_ms: 10_000,
            operators: vec![Operator {
                name: "demo".into(),
                token_sha256: token_hash(&token),
                role: Role::Supervisor,
                enabled: true,
            }],
            test_keys: true,
            test_mode: true,
        }
    } else {
        Config::load(&a.config).unwrap_or_else(|e| fail(e))
    };
    if let Some(s) = a.socket {
        config.socket = s;
    }
    if let Some(j) = a.journal {
        config.journal = j;
    } else if demo {
        config.journal = tmp.join("journal.db");
    }
    if !config.test_keys {
        fail("only test keys are supported by this build (set test_mode and test_keys)".into());
    }
    let region = config
        .region
        .parse()
        .unwrap_or_else(|e| fail(format!("region: {e}")));
    let terminal_id = config
        .terminal_id
        .parse()
        .unwrap_or_else(|e| fail(format!("terminal_id: {e}")));
    let m = test_master_keys();
    let purposes = [
        KeyPurpose::Ext,
        KeyPurpose::Int,
        KeyPurpose::Purchase,
        KeyPurpose::Maint,
    ];
    let k3 = purposes.iter().map(|p| (*p, m.k3(*p, region))).collect();
    for p in [&config.journal, &config.socket] {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
    }
    let journal = Journal::open(&config.journal)
        .unwrap_or_else(|e| fail(format!("journal {}: {e}", config.journal.display())));
    match journal.pending() {
        Ok(p) if !p.is_empty() => {
            for x in &p {
                tracing::warn!(
                    "pending payment {} of card {} ({} fen): settles when the card is seen",
                    x.order_id,
                    x.card_number,
                    x.amount_fen
                );
            }
        }
        Ok(_) => {}
        Err(e) => fail(format!("journal: {e}")),
    }
    let readers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if a.simulate {
        let card: Box<dyn sscard_firmware_tests::VirtualCard> =
            Box::new(EmulatedCard::default_test_card());
        let r = SimReader::with_card("sim 0", card);
        if let Ok(mut l) = readers.lock() {
            l.push(Reader::spawn("sim 0".into(), Backend::Sim(r)));
        }
    } else {
        match PcscContext::establish() {
            Ok(ctx) => {
                if let Ok(infos) = ctx.reader_states() {
                    if let Ok(mut l) = readers.lock() {
                        for i in infos {
                            let r = Reader::spawn(
                                i.name.clone(),
                                Backend::Pcsc {
                                    ctx: ctx.clone(),
                                    name: i.name.clone(),
                                    card: None,
                                },
                            );
                            r.set_presence(i.card_present, i.atr.clone());
                            l.push(r);
                        }
                    }
                }
                watch_pcsc(ctx, readers.clone(), stop.clone());
            }
            Err(e) => tracing::warn!("PC/SC unavailable: {e}; readers will not appear"),
        }
    }
    let state = Arc::new(State {
        config: config.clone(),
        journal: Arc::new(Mutex::new(journal)),
        readers,
        k3: Arc::new(k3),
        region,
        terminal_id,
    });
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(format!("runtime: {e}")));
    rt.block_on(async move {
        let _ = std::fs::remove_file(&config.socket);
        let listener = tokio::net::UnixListener::bind(&config.socket)
            .unwrap_or_else(|e| fail(format!("socket {}: {e}", config.socket.display())));
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o660));
        // a closed stdout (the parent stopped reading) must not stop the daemon
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "socket: {}", config.socket.display());
        let _ = writeln!(out, "token: {token}");
        let _ = out.flush();
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
        };
        sscard_daemon::server::run(listener, state, shutdown).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&config.socket);
    });
}
