//! JSON-RPC 2.0 envelopes (api.md "Transport"): one request object a line in, one
//! response object a line out.
//!
//! The request's `id` is kept as the raw JSON text the client sent and echoed exactly
//! (`123456789012345678901234567890` comes back as written, not as a float), and its
//! `params` stay raw until the method's own typed parameters read them
//! ([`crate::methods::Params::parse`]). A request without `id` is a notification; the
//! dispatcher refuses those for every method (they would act without an answer).

use crate::error::ApiError;
use crate::methods::{Method, Params};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// One request, borrowed from its line.
#[derive(Debug)]
pub struct Request<'a> {
    /// `None` for a notification; `Some("null")` for an explicit null id.
    pub id: Option<&'a RawValue>,
    pub method: String,
    pub params: Option<&'a RawValue>,
}

/// A line that is not a request: the id to answer with (when it could be read) and the
/// JSON-RPC error.
#[derive(Debug)]
pub struct Refused<'a> {
    pub id: Option<&'a RawValue>,
    pub error: ApiError,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<&'a RawValue>,
    /// Present (even `null`) or absent: `Option<&RawValue>` alone would fold an
    /// explicit `null` into "absent".
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn refuse(id: Option<&RawValue>, error: ApiError) -> Refused<'_> {
    Refused { id, error }
}

/// Parse one line (without its `\n`). `Ok(None)` for a blank line (ignored).
pub fn parse_line(line: &[u8]) -> Result<Option<Request<'_>>, Refused<'_>> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(refuse(None, ApiError::parse("invalid UTF-8")));
    };
    let t = text.trim_start();
    if t.is_empty() {
        return Ok(None);
    }
    if t.starts_with('[') {
        // still must be JSON to be told apart from garbage
        return Err(match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => refuse(
                None,
                ApiError::invalid_request("batches are not supported: send one request a line"),
            ),
            Err(e) => refuse(None, ApiError::parse(format!("invalid JSON: {e}"))),
        });
    }
    if !t.starts_with('{') {
        return Err(match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => refuse(
                None,
                ApiError::invalid_request("a request is a JSON object"),
            ),
            Err(e) => refuse(None, ApiError::parse(format!("invalid JSON: {e}"))),
        });
    }
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) if e.is_data() => {
            return Err(refuse(
                None,
                ApiError::invalid_request(format!("not a request: {}", strip_position(&e))),
            ))
        }
        Err(e) => return Err(refuse(None, ApiError::parse(format!("invalid JSON: {e}")))),
    };
    let id = env.id;
    if let Some(i) = id {
        let first = i.get().as_bytes().first().copied();
        let ok = matches!(first, Some(b'"' | b'-' | b'0'..=b'9')) || i.get() == "null";
        if !ok {
            return Err(refuse(
                None,
                ApiError::invalid_request("id: a string, a number or null"),
            ));
        }
    }
    let version: Option<String> = env.jsonrpc.and_then(|v| serde_json::from_str(v.get()).ok());
    if version.as_deref() != Some("2.0") {
        return Err(refuse(
            id,
            ApiError::invalid_request("jsonrpc: must be \"2.0\""),
        ));
    }
    let method: Option<String> = env.method.and_then(|v| serde_json::from_str(v.get()).ok());
    let Some(method) = method else {
        return Err(refuse(
            id,
            ApiError::invalid_request("method: a string is required"),
        ));
    };
    Ok(Some(Request {
        id,
        method,
        params: env.params,
    }))
}

/// Check a method's params as its handler would read them, without running it (the
/// fuzz target's entry and the dispatcher's first step).
pub fn check_params(method: &str, params: Option<&RawValue>) -> Result<(), ApiError> {
    let m = Method::from_name(method).ok_or_else(|| ApiError::method_not_found(method))?;
    Params::parse(m, params).map(|_| ())
}

/// serde_json appends " at line 1 column 17" to its messages: not useful on one line.
pub fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[derive(Serialize)]
struct Reply<'a> {
    jsonrpc: &'static str,
    /// `None` serializes as `null` (the id of a line that could not be read).
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

/// The response line (without `\n`) to a request with `id`.
pub fn reply(id: Option<&RawValue>, r: &Result<Value, ApiError>) -> String {
    let (result, error) = match r {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_json())),
    };
    let rep = Reply {
        jsonrpc: "2.0",
        id,
        result,
        error,
    };
    serde_json::to_string(&rep).unwrap_or_else(|_| {
        // a Value always serializes; this is only the type system's due
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Request<'_> {
        parse_line(line.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn ids_come_back_exactly_as_sent() {
        for id in [
            "123456789012345678901234567890",
            "-0.5e-7",
            "\"a\\u00e9\"",
            "null",
            "7",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"system.health"}}"#);
            let r = req(&line);
            let out = reply(r.id, &Ok(Value::Bool(true)));
            assert_eq!(
                out,
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":true}}"#)
            );
        }
    }

    #[test]
    fn notifications_and_bad_envelopes() {
        let r = req(r#"{"jsonrpc":"2.0","method":"pay.debit","params":{}}"#);
        assert!(r.id.is_none(), "no id: a notification");
        let r = req(r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#);
        assert_eq!(r.id.map(|i| i.get()), Some("null"));
        let code = |l: &str| parse_line(l.as_bytes()).unwrap_err().error.code;
        assert_eq!(code("{"), -32700);
        assert_eq!(code("[1]"), -32600);
        assert_eq!(code("[1"), -32700);
        assert_eq!(code("7"), -32600);
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#), -32600);
        assert_eq!(code(r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#), -32600);
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":5}"#), -32600);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#),
            -32600
        );
        assert_eq!(code("\u{00ff}"), -32700);
        assert_eq!(parse_line(&[0xff, b'{']).unwrap_err().error.code, -32700);
        assert!(parse_line(b"   ").unwrap().is_none());
        // the id of a request with a bad version is still echoed
        let e = parse_line(br#"{"jsonrpc":"1","id":"x","method":"m"}"#).unwrap_err();
        assert_eq!(e.id.map(|i| i.get()), Some("\"x\""));
    }
}
