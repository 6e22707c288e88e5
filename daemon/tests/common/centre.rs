//! A small settlement centre for tests: an HTTP/1.1 server on a loopback port (one
//! thread, one request per connection) that records every request and answers from a
//! script, then acknowledges everything once the script is used up.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// How the centre answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This HTTP status with an empty body.
    Status(u16),
    /// `200` with a body that is not the protocol's.
    Garbage,
    /// `200` acknowledging only the first `n` payments of the batch.
    AckFirst(usize),
    /// `200` acknowledging the whole batch.
    AckAll,
}

/// A request the centre received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Header lines, lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// What it was answered.
    pub answer: Answer,
}

impl Received {
    pub fn txn_ids(&self) -> Vec<String> {
        self.body["payments"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["txn_id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Answer>,
    received: Vec<Received>,
}

/// The running centre (its thread ends with the test process).
#[derive(Clone)]
pub struct Centre {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Centre {
    /// Start, answering from `script` first.
    pub fn start(script: Vec<Answer>) -> Centre {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/settle", l.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            received: Vec::new(),
        }));
        let i = inner.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let _ = serve(s, &i);
            }
        });
        Centre { url, inner }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Answer the next requests from `script` (appended).
    pub fn script(&self, more: Vec<Answer>) {
        self.inner.lock().unwrap().script.extend(more);
    }
}

fn serve(s: std::net::TcpStream, inner: &Arc<Mutex<Inner>>) -> std::io::Result<()> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    assert!(line.starts_with("POST /settle "), "{line}");
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut g = inner.lock().unwrap();
    let answer = g.script.pop_front().unwrap_or(Answer::AckAll);
    let rec = Received {
        headers,
        body,
        answer: answer.clone(),
    };
    let ids = rec.txn_ids();
    g.received.push(rec);
    drop(g);
    let (status, text) = match answer {
        Answer::Status(c) => (c, String::new()),
        Answer::Garbage => (200, "<html>maintenance</html>".into()),
        Answer::AckFirst(n) => (
            200,
            json!({"acknowledged": ids.iter().take(n).collect::<Vec<_>>()}).to_string(),
        ),
        Answer::AckAll => (200, json!({ "acknowledged": ids }).to_string()),
    };
    let mut w = s;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    w.flush()
}
