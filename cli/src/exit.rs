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
            T::ServiceUnavailable(_) | T::NoReader(_) | T::NoCard | T::CardRemoved => 3,
            _ => 1,
        };
        let msg = match &e {
            T::ServiceUnavailable(_) => format!("{e} (is pcscd running?)"),
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
