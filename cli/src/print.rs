//! The shared printer: human text or `--json`, and the error printer.

use crate::exit::CliError;

pub struct Printer {
    json: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Printer { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Print a flat record: `key: value` lines, or one JSON object.
    pub fn record(&self, fields: &[(&str, String)]) {
        if self.json {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            println!("{}", serde_json::Value::Object(map));
        } else {
            let w = fields
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0);
            for (k, v) in fields {
                println!("{k:<w$}  {v}");
            }
        }
    }

    /// Print any serializable value as JSON, or its text form.
    pub fn value(&self, v: &serde_json::Value, text: &str) {
        if self.json {
            println!("{v}");
        } else {
            println!("{text}");
        }
    }

    /// Print an error on stderr (JSON on stdout with `--json`).
    pub fn error(&self, e: &CliError) {
        if e.is_reported() && self.json {
            return;
        }
        if self.json {
            println!(
                "{}",
                serde_json::json!({"error": e.message(), "exit_code": e.code()})
            );
        } else {
            eprintln!("sscard: {e}");
        }
    }
}
