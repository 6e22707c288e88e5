//! Sessions and roles (api.md "Sessions and roles").
//!
//! A connection logs in once (`session.login`); the session remembers the operator's
//! name and token hash. Every later call looks the operator up again in the current
//! configuration, so a `SIGHUP` that disables an operator, removes them or changes
//! their token stops their sessions at their very next call.

use crate::config::{Config, Operator};
use crate::error::{ApiError, ErrorKind};
use serde::Deserialize;

/// A staff role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Cashier,
    Supervisor,
    Auditor,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Cashier => "cashier",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// A logged-in connection.
#[derive(Clone, Debug, Default)]
pub struct Session {
    login: Option<(String, String)>,
}

impl Session {
    /// Log in with a token; a disabled operator is refused.
    pub fn login(&mut self, config: &Config, token: &str) -> Result<Operator, ApiError> {
        let op = config
            .operator_by_token(token)
            .ok_or_else(|| ApiError::kind(ErrorKind::Unauthenticated, "unknown token"))?;
        if !op.enabled {
            return Err(ApiError::kind(
                ErrorKind::OperatorDisabled,
                format!("operator {} is disabled", op.name),
            ));
        }
        self.login = Some((op.name.clone(), op.token_sha256.clone()));
        Ok(op.clone())
    }

    /// The name the session logged in with, if it did.
    pub fn name(&self) -> Option<&str> {
        self.login.as_ref().map(|(n, _)| n.as_str())
    }

    /// The operator of this session as the configuration says now.
    pub fn operator(&self, config: &Config) -> Result<Operator, ApiError> {
        let (name, hash) = self.login.as_ref().ok_or_else(|| {
            ApiError::kind(ErrorKind::Unauthenticated, "call session.login first")
        })?;
        let op = config
            .operator(name)
            .filter(|o| sscard_driver::crypto::ct_eq(o.token_sha256.as_bytes(), hash.as_bytes()))
            .ok_or_else(|| {
                ApiError::kind(
                    ErrorKind::Unauthenticated,
                    "the operator or their token changed; log in again",
                )
            })?;
        if !op.enabled {
            return Err(ApiError::kind(
                ErrorKind::OperatorDisabled,
                format!("operator {} is disabled", op.name),
            ));
        }
        Ok(op.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::token_hash;

    fn config(enabled: bool) -> Config {
        let mut c = Config::test("650200".parse().unwrap(), "650200000001".parse().unwrap());
        c.operators.push(Operator {
            name: "li".into(),
            token_sha256: token_hash("t"),
            role: Role::Cashier,
            enabled,
        });
        c
    }

    #[test]
    fn operators_are_rechecked_on_every_call() {
        let mut s = Session::default();
        assert_eq!(
            s.operator(&config(true)).unwrap_err().kind,
            Some(ErrorKind::Unauthenticated)
        );
        assert_eq!(
            s.login(&config(true), "x").unwrap_err().kind,
            Some(ErrorKind::Unauthenticated)
        );
        assert_eq!(
            s.login(&config(false), "t").unwrap_err().kind,
            Some(ErrorKind::OperatorDisabled)
        );
        s.login(&config(true), "t").unwrap();
        assert_eq!(s.operator(&config(true)).unwrap().name, "li");
        assert_eq!(
            s.operator(&config(false)).unwrap_err().kind,
            Some(ErrorKind::OperatorDisabled)
        );
        let mut changed = config(true);
        changed.operators[0].token_sha256 = token_hash("new");
        assert_eq!(
            s.operator(&changed).unwrap_err().kind,
            Some(ErrorKind::Unauthenticated)
        );
    }
}
