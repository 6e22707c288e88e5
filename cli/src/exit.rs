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
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
    pub fn usage(m: impl Into<String>) -> Self {
        Self::new(2, m)
    }
    pub fn failed(m: impl Into<String>) -> Self {
        Self::new(1, m)
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
