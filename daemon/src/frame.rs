//! Line framing, separate from request handling: one JSON-RPC object a line, at most
//! [`MAX_LINE`] bytes (64 KiB, without the `\n`).
//!
//! A longer line yields [`Frame::TooLong`] once and its bytes are dropped up to the
//! next `\n`, where the connection resynchronizes and goes on. A client that begins a
//! line and does not finish it within the line timeout gets [`Frame::Stalled`] (the
//! server then closes the connection): the timeout covers the whole line from its first
//! byte, so a client dripping a byte at a time is cut off too. A connection idle
//! between lines may stay open (the server's login and idle timeouts decide). [`LineReader::next`] is cancel-safe: bytes read are
//! kept in the reader, so it can sit in a `select!`.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The longest request line.
pub const MAX_LINE: usize = 64 * 1024;

/// What the reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its `\n` (and a `\r` before it).
    Line(Vec<u8>),
    /// A line over [`MAX_LINE`]; its bytes are being skipped.
    TooLong,
    /// A line was begun and not finished in time.
    Stalled,
    /// The peer closed the connection (a partial last line is dropped).
    Closed,
}

/// Splits a byte stream into lines.
pub struct LineReader<R> {
    rd: R,
    buf: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    line_timeout: Duration,
    /// When the line being read began.
    started: Option<Instant>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(rd: R, line_timeout: Duration) -> Self {
        LineReader {
            rd,
            buf: Vec::with_capacity(4096),
            discarding: false,
            line_timeout,
            started: None,
        }
    }

    /// The next frame.
    pub async fn next(&mut self) -> Frame {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                // the next line's clock starts with its first partial read
                self.started = None;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > MAX_LINE {
                    return Frame::TooLong;
                }
                return Frame::Line(line);
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                if !self.discarding {
                    self.discarding = true;
                    return Frame::TooLong;
                }
            }
            let partial = !self.buf.is_empty() || self.discarding;
            let n = if partial {
                let start = *self.started.get_or_insert_with(Instant::now);
                let deadline = start + self.line_timeout;
                match tokio::time::timeout_at(deadline, self.rd.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => return Frame::Stalled,
                }
            } else {
                self.rd.read(&mut chunk).await
            };
            match n {
                Ok(0) | Err(_) => return Frame::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_long_lines_and_stalls() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut r = LineReader::new(server, Duration::from_millis(100));
        client.write_all(b"a\r\nbc\n").await.unwrap();
        assert_eq!(r.next().await, Frame::Line(b"a".to_vec()));
        assert_eq!(r.next().await, Frame::Line(b"bc".to_vec()));
        let mut huge = vec![b'x'; MAX_LINE + 10];
        huge.extend_from_slice(b"\n{}\n");
        client.write_all(&huge).await.unwrap();
        assert_eq!(r.next().await, Frame::TooLong);
        assert_eq!(
            r.next().await,
            Frame::Line(b"{}".to_vec()),
            "resynchronized"
        );
        // exactly the limit is fine
        let mut max = vec![b'y'; MAX_LINE];
        max.push(b'\n');
        client.write_all(&max).await.unwrap();
        assert_eq!(r.next().await, Frame::Line(vec![b'y'; MAX_LINE]));
        client.write_all(b"{\"half").await.unwrap();
        assert_eq!(r.next().await, Frame::Stalled);
        drop(client);
        assert_eq!(r.next().await, Frame::Closed);
    }

    #[tokio::test]
    async fn the_timeout_covers_the_whole_line() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = LineReader::new(server, Duration::from_millis(300));
        let drip = tokio::spawn(async move {
            // each byte well within the timeout, the line far beyond it
            for b in b"{\"jsonrpc\":\"2.0\"" {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = client.write_all(b"}\n").await;
        });
        // a per-read timeout would wait for the whole drip and return the line
        assert_eq!(r.next().await, Frame::Stalled);
        drip.abort();
    }

    #[tokio::test]
    async fn idle_connections_are_not_timed_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = LineReader::new(server, Duration::from_millis(20));
        let t = tokio::spawn(async move { r.next().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"late\n").await.unwrap();
        assert_eq!(t.await.unwrap(), Frame::Line(b"late".to_vec()));
    }
}
