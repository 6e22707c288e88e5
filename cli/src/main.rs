//! `sscard`: the technician's and issuing office's command line.
//!
//! Thin by design: parsing flags, calling the libraries, printing. Exit codes are
//! documented in README.md ("The `sscard` command") and in [`exit`].
#![forbid(unsafe_code)]

mod cmd;
mod exit;
mod office;
mod print;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sscard",
    version,
    about = "Social-security card tool: readers, cards, audit, issuance"
)]
struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace; trace shows
    /// APDUs with PINs and keys redacted).
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List PC/SC readers, with card presence and ATR.
    Readers(cmd::readers::Args),
    /// Live reader and card events, one line each (`--json`: JSON lines).
    Watch(cmd::watch::Args),
    /// Explain an ATR (of the card in a reader, or given in hex).
    Atr(cmd::atr::Args),
    /// Read the card's records (card, holder, insurance).
    Read(cmd::read::Args),
    /// Everything about the card: records, state, PIN tries left (no try used),
    /// balance, last transactions, genuine (with keys).
    Info(cmd::info::Args),
    /// The holder's PIN: verify, change; reload (the office, with the PIN key). PINs
    /// come from the reader's pad, the terminal (no echo) or --pin-stdin, never from
    /// the command line.
    #[command(subcommand)]
    Pin(cmd::pin::PinCommand),
    /// Explain a status word (SW1-SW2), e.g. `sscard sw 63C2`.
    Sw(cmd::sw::Args),
    /// Send raw command APDUs (T=0 rules applied, status words explained; PINs
    /// redacted), e.g. `sscard apdu 00A404000F7378312E73682EC9E7BBE1B1A3D5CF 00B2010000`.
    Apdu(cmd::apdu::ApduArgs),
    /// Run a script of APDUs with the status words expected; stops at the first mismatch.
    Script(cmd::apdu::ScriptArgs),
    /// Audit log: verify the daemon journal's hash chain.
    Audit(cmd::audit::Args),
    /// Back up the daemon's journal now (online; the daemon may be running).
    Backup(cmd::backup::Args),
    /// Keys: create and show keystores (written 0600), derive a region's K2/K3 and a
    /// card's Kc from master keys; check values only unless --reveal on a terminal.
    #[command(alias = "keystore")]
    Keys(cmd::keys::Args),
    /// The office's changes to a card it holds: update (insurance), block, unblock,
    /// replace. Example: `sscard card block --reason "reported lost" --keystore office.ks
    /// --secret-file office.secret --journal office.db`
    #[command(subcommand)]
    Card(cmd::card::CardCommand),
    /// Load money onto the card's purse (the office, LOAD key, PIN verified), journaled
    /// pending before CREDIT. Example: `sscard load --amount 10000 --keystore office.ks
    /// --secret-file office.secret --journal office.db`
    Load(cmd::load::Args),
    /// Personalize blank cards (issuing office): one from flags or a day's batch from CSV,
    /// resumable after a crash (issuance journal), a summary report.
    Personalize(Box<cmd::personalize::Args>),
    /// Shell completions for bash, zsh, fish, elvish or powershell, on standard output
    /// (e.g. `sscard completions bash > /usr/share/bash-completion/completions/sscard`).
    Completions { shell: clap_complete::Shell },
    /// The manual page (roff), on standard output (e.g. `sscard man | man -l -`).
    Man,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .init();
    let out = print::Printer::new(cli.json);
    let result = match cli.command {
        Command::Readers(a) => cmd::readers::run(a, &out),
        Command::Atr(a) => cmd::atr::run(a, &out),
        Command::Watch(a) => cmd::watch::run(a, &out),
        Command::Read(a) => cmd::read::run(a, &out),
        Command::Info(a) => cmd::info::run(a, &out),
        Command::Sw(a) => cmd::sw::run(a, &out),
        Command::Pin(c) => cmd::pin::run(c, &out),
        Command::Apdu(a) => cmd::apdu::run_apdu(a, &out),
        Command::Script(a) => cmd::apdu::run_script(a, &out),
        Command::Audit(a) => cmd::audit::run(a, &out),
        Command::Backup(a) => cmd::backup::run(a, &out),
        Command::Keys(a) => cmd::keys::run(a, &out),
        Command::Card(c) => cmd::card::run(c, &out),
        Command::Load(a) => cmd::load::run(a, &out),
        Command::Personalize(a) => cmd::personalize::run(*a, &out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sscard", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                // `sscard man | head`: the reader went away, nothing more to say
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(exit::CliError::new(5, format!("standard output: {e}")))
                }
                _ => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        out.error(&e);
        std::process::exit(e.code());
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command a user runs shows an example in its `--help`.
    #[test]
    fn every_command_has_an_example_in_its_help() {
        fn walk(c: &mut clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", c.get_name()).trim().to_string();
            let subs: Vec<String> = c
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .filter(|n| n != "help")
                .collect();
            if subs.is_empty() {
                let help = c.render_long_help().to_string();
                if !help.contains("Example") && !matches!(c.get_name(), "completions" | "man") {
                    missing.push(name);
                }
                return;
            }
            for s in subs {
                if let Some(sc) = c.find_subcommand_mut(&s) {
                    walk(sc, &name, missing);
                }
            }
        }
        let mut missing = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        walk(&mut cli, "", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }
}
