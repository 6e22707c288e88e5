//! Errors and exit codes of `sscard`.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (card answered an error, verification failed) |
//! | 2 | usage error (bad arguments) |
//! | 3 | no reader / no card / pcscd unavailable |
//! | 4 | security: authentication, PIN, tampered audit chain |
//! | 5 | file or database error |

use std::fmt;

#[derive(Debug)]
pub struct CliError {
    code: i32,
    message: String,
    /// The command has already printed the failure (its `--json` output carries it).
    reported: bool,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            reported: false,
        }
    }
    /// Exit with `code`; the command has printed why (as part of its `--json` answer).
    pub fn reported(code: i32, message: impl Into<String>) -> Self {
        CliError {
            reported: true,
            ..Self::new(code, message)
        }
    }
    pub fn is_reported(&self) -> bool {
        self.reported
    }
    pub fn usage(m: impl Into<String>) -> Self {
        Self::new(2, m)
    }
    pub fn failed(m: impl Into<String>) -> Self {
        Self::new(1, m)
    }
    /// The same error, its message prefixed with what was being done.
    pub fn context(self, what: impl fmt::Display) -> Self {
        CliError {
            code: self.code,
            message: format!("{what}: {}", self.message),
            reported: self.reported,
        }
    }
    pub fn code(&self) -> i32 {
        self.code
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<sscard_driver::TransportError> for CliError {
    fn from(e: sscard_driver::TransportError) -> Self {
        use sscard_driver::TransportError as T;
        let code = match &e {
            T::ServiceUnavailable(_) | T::NoReader(_) | T::NoCard | T::CardRemoved | T::Busy => 3,
            _ => 1,
        };
        let msg = match &e {
            T::ServiceUnavailable(_) => format!("{e} (is pcscd running?)"),
            T::NoCard => format!("{e}: insert a card, or pick another reader with --reader"),
            T::NoReader(_) => format!("{e}: `sscard readers` lists the readers"),
            T::Busy => match running_daemon() {
                Some(pid) => format!(
                    "the reader is held by a running sscardd (pid {pid}): stop it for office work \
                     on this reader (systemctl stop sscardd), or use the commands that go through \
                     its socket (sscard pay, query, refund, settle, health)"
                ),
                None => format!("{e}: close the program that holds it, or pick another reader"),
            },
            _ => e.to_string(),
        };
        CliError::new(code, msg)
    }
}

impl From<sscard_driver::app::AppError> for CliError {
    fn from(e: sscard_driver::app::AppError) -> Self {
        use sscard_driver::app::AppError as A;
        match e {
            A::Transport(t) => t.into(),
            A::PinWrong { .. }
            | A::PinBlocked
            | A::AuthFailed
            | A::NotGenuine
            | A::MacMismatch(_) => CliError::new(4, e.to_string()),
            other => CliError::failed(other.to_string()),
        }
    }
}

/// The pid of a running `sscardd`, if there is one (from /proc): when a reader is busy,
/// it is most often the daemon that holds it.
fn running_daemon() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|d| {
        let pid: u32 = d.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(d.path().join("comm")).ok()?;
        (comm.trim_end() == "sscardd").then_some(pid)
    })
}
