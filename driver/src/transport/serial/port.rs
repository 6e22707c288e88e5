//! The byte pipe under the serial link: a serial port opened the way libccid's
//! `libccidtwin` opens it (115200 bit/s, 8 data bits, no parity, 2 stop bits, raw, no
//! flow control), or an in-process fake for unit tests.
//!
//! A [`Port`] only moves bytes; frames, resends and time extensions are the link's
//! ([`super::link`]).

use std::io::{self, Read, Write};
use std::time::Duration;

/// The bit rate of every GemPC Twin / GemCore serial reader.
pub const BIT_RATE: u32 = 115_200;

/// What a read found.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Some bytes (at least one).
    Data(usize),
    /// Nothing arrived within the time given.
    TimedOut,
}

/// A bidirectional byte stream with timed reads.
pub trait Port: Send {
    /// Write all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Read what is there into `buf`, waiting up to `timeout` for the first byte.
    /// An error means the port is gone (unplugged, closed) or broken.
    fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<ReadOutcome>;
    /// Throw away whatever was received and not read yet.
    fn discard_input(&mut self) -> io::Result<()>;
}

/// A real serial port (or a pseudo-terminal) through the `serialport` crate.
pub struct SerialPortIo {
    port: Box<dyn serialport::SerialPort>,
}

impl SerialPortIo {
    /// Open `path` at `bit_rate`, 8N2, raw, exclusively (`TIOCEXCL`): two programs
    /// talking to one reader would mix their frames.
    pub fn open(path: &str, bit_rate: u32) -> io::Result<Self> {
        let port = serialport::new(path, bit_rate)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::Two)
            .flow_control(serialport::FlowControl::None)
            .timeout(Duration::from_millis(100))
            .open()
            .map_err(io::Error::from)?;
        let mut p = SerialPortIo { port };
        // what the reader sent before we were there is not an answer to us
        p.discard_input()?;
        Ok(p)
    }
}

impl Port for SerialPortIo {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.port.write_all(bytes)?;
        self.port.flush()
    }

    fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<ReadOutcome> {
        // a zero timeout would make the crate's poll wait for nothing at all; one
        // millisecond is "what is already there"
        self.port
            .set_timeout(timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::from)?;
        match self.port.read(buf) {
            // a pseudo-terminal whose other side closed reads as end of file
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "serial port closed",
            )),
            Ok(n) => Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(ReadOutcome::TimedOut),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::TimedOut),
            Err(e) => Err(e),
        }
    }

    fn discard_input(&mut self) -> io::Result<()> {
        self.port
            .clear(serialport::ClearBuffer::Input)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-process port for unit tests: a closure sees every byte string written
    //! and queues what the "reader" answers, each chunk with the time it arrives.

    use super::{Port, ReadOutcome};
    use std::collections::VecDeque;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Bytes the host will read, each at its time.
    #[derive(Default)]
    pub struct Inbox {
        bytes: VecDeque<(Instant, u8)>,
    }

    impl Inbox {
        /// Queue `bytes`, arriving `delay` from now (after what is queued already).
        pub fn push_after(&mut self, delay: Duration, bytes: &[u8]) {
            let last = self.bytes.back().map(|b| b.0);
            let at = Instant::now() + delay;
            let at = last.map_or(at, |l| l.max(at));
            self.bytes.extend(bytes.iter().map(|b| (at, *b)));
        }

        pub fn push(&mut self, bytes: &[u8]) {
            self.push_after(Duration::ZERO, bytes)
        }

        pub fn clear(&mut self) {
            self.bytes.clear();
        }
    }

    /// What the fake does when the host writes.
    pub type Responder = Box<dyn FnMut(&[u8], &mut Inbox) + Send>;

    /// State shared between the port and the test.
    pub struct Shared {
        pub inbox: Inbox,
        pub written: Vec<Vec<u8>>,
        pub gone: bool,
        responder: Responder,
    }

    /// The port side.
    pub struct FakePort {
        pub shared: Arc<Mutex<Shared>>,
    }

    impl FakePort {
        pub fn new(responder: Responder) -> (FakePort, Arc<Mutex<Shared>>) {
            let shared = Arc::new(Mutex::new(Shared {
                inbox: Inbox::default(),
                written: Vec::new(),
                gone: false,
                responder,
            }));
            (
                FakePort {
                    shared: shared.clone(),
                },
                shared,
            )
        }
    }

    pub fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
        s.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gone() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "unplugged")
    }

    impl Port for FakePort {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut s = lock(&self.shared);
            if s.gone {
                return Err(gone());
            }
            s.written.push(bytes.to_vec());
            let Shared {
                inbox, responder, ..
            } = &mut *s;
            responder(bytes, inbox);
            Ok(())
        }

        fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<ReadOutcome> {
            let until = Instant::now() + timeout;
            loop {
                let mut s = lock(&self.shared);
                if s.gone {
                    return Err(gone());
                }
                let now = Instant::now();
                let mut n = 0;
                while n < buf.len() {
                    match s.inbox.bytes.front() {
                        Some((at, b)) if *at <= now => {
                            buf[n] = *b;
                            n += 1;
                            s.inbox.bytes.pop_front();
                        }
                        _ => break,
                    }
                }
                if n > 0 {
                    return Ok(ReadOutcome::Data(n));
                }
                let next = s.inbox.bytes.front().map(|b| b.0);
                drop(s);
                if now >= until {
                    return Ok(ReadOutcome::TimedOut);
                }
                let wake = next.map_or(until, |t| t.min(until));
                std::thread::sleep(
                    wake.saturating_duration_since(now)
                        .min(Duration::from_millis(5)),
                );
            }
        }

        fn discard_input(&mut self) -> io::Result<()> {
            lock(&self.shared).inbox.clear();
            Ok(())
        }
    }
}
