//! The vpcd bridge: plugs a [`VirtualCard`] into pcscd through vsmartcard's vpcd
//! reader driver (`docs/emulator.md`, `shared/spec/test-stack.md`).
//!
//! vpcd listens on 127.0.0.1 (port 35963 for its first slot by default); the card program
//! connects to it. Every message is a 2-byte big-endian length then the bytes; a 1-byte
//! message is a control (00 power off, 01 power on, 02 reset, 04 send the ATR); a longer
//! one is a command APDU, answered with one framed response. Closing the socket is the
//! card leaving the reader; connecting again is the card inserted.
//!
//! Latency: vpcd writes the length and the APDU in two writes, so with the kernel's
//! delayed ACK every APDU would stall about 40 ms. The bridge sets `TCP_NODELAY` and
//! re-arms `TCP_QUICKACK` before every read.
//!
//! Wire time: with a [`WireTime`] the bridge holds each answer back as long as a real
//! card's serial line would take to carry the command and the answer
//! (`docs/emulator.md`, "Wire time"). A [`Presence`] lets a control channel take the card
//! out of the reader and put it back (`sscard-vcard --control-stdin`).

use crate::{Reply, VirtualCard};
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A model of a real card's wire: how long a command and its answer take on the serial
/// line between reader and card, plus the card's processing time.
///
/// A command with `c` bytes answered with `r` bytes takes
/// `processing + (c + r + 1) × etu_per_byte / bit_rate` (the `1` is the T=0 procedure
/// byte); the ATR takes `len × etu_per_byte / bit_rate`. A bit rate of 0 means no wire:
/// only `processing` is waited. Not modelled: T=1 block framing (prologue, epilogue,
/// chaining), PPS, waiting-time extensions, the clock cycles before the ATR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireTime {
    /// Elementary time units a second (one etu is one bit on the line); 0 = no wire.
    pub bit_rate: u32,
    /// Etu a byte takes: 12 is a start bit, 8 data bits, parity and 2 guard etu.
    pub etu_per_byte: u32,
    /// The card's time to process a command (counted from when the command was read, so
    /// the emulator's own compute time counts inside it).
    pub processing: Duration,
}

impl Default for WireTime {
    fn default() -> Self {
        WireTime::INSTANT
    }
}

impl WireTime {
    /// Answer at once.
    pub const INSTANT: WireTime = WireTime {
        bit_rate: 0,
        etu_per_byte: 12,
        processing: Duration::ZERO,
    };

    /// Whether the bridge answers at once.
    pub fn is_instant(&self) -> bool {
        self.processing.is_zero() && (self.bit_rate == 0 || self.etu_per_byte == 0)
    }

    /// The time `n` bytes take on the line.
    pub fn bytes(&self, n: usize) -> Duration {
        if self.bit_rate == 0 {
            return Duration::ZERO;
        }
        let nanos =
            n as u128 * u128::from(self.etu_per_byte) * 1_000_000_000 / u128::from(self.bit_rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// A command of `command` bytes answered with `response` bytes: processing, both
    /// ways on the line, and one procedure byte.
    pub fn exchange(&self, command: usize, response: usize) -> Duration {
        self.processing
            .saturating_add(self.bytes(command.saturating_add(response).saturating_add(1)))
    }

    /// The ATR of `len` bytes at power-on.
    pub fn atr(&self, len: usize) -> Duration {
        self.bytes(len)
    }
}

/// Sleep until `deadline` (at once when it has passed).
fn wait_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// How the bridge behaves.
#[derive(Clone, Debug)]
pub struct BridgeOptions {
    pub addr: SocketAddr,
    /// After a tear, how long the card stays out of the reader.
    pub reinsert_after: Duration,
    /// Longest wait between connection attempts while vpcd is not there.
    pub max_backoff: Duration,
    /// At a tear, how long the card holds the torn command unanswered (still in the
    /// reader) before it leaves: a test's window to kill the terminal mid-command.
    pub tear_hold: Duration,
    /// A file written when a tear begins (the command's fate on the card is decided),
    /// so that a test knows when to act.
    pub tear_signal: Option<PathBuf>,
    /// The wire a real card's answers would travel (default: none, answer at once).
    pub wire: WireTime,
}

impl BridgeOptions {
    pub fn port(port: u16) -> Self {
        BridgeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            reinsert_after: Duration::from_millis(300),
            max_backoff: Duration::from_secs(1),
            tear_hold: Duration::ZERO,
            tear_signal: None,
            wire: WireTime::INSTANT,
        }
    }
}

/// Re-arm TCP_QUICKACK (Linux clears it after it fires); failures are harmless.
fn quickack(s: &TcpStream) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    quickack(s);
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let n = u16::from_be_bytes(len) as usize;
    let mut buf = vec![0u8; n];
    quickack(s);
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_frame(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let n = u16::try_from(data.len()).map_err(|_| io::Error::other("frame over 65535 bytes"))?;
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out)
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// vpcd closed the connection or the link broke (or the card was removed).
    Closed,
    /// The card tore itself out.
    Tear,
}

/// Serve the card on one established connection until it ends; each answer leaves when
/// `wire` says a real card's would have arrived.
pub fn serve_connection(
    card: &mut dyn VirtualCard,
    s: &mut TcpStream,
    wire: &WireTime,
) -> io::Result<Ended> {
    s.set_nodelay(true)?;
    // the ATR after a power-on or reset travels the wire; vpcd also asks for the ATR
    // to poll the card's presence (about every 400 ms), which a real reader answers
    // from its own state: those answers leave at once
    let mut atr_on_wire = false;
    loop {
        let frame = match read_frame(s) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Ended::Closed),
            Err(e) => return Err(e),
        };
        let read_at = Instant::now();
        match frame.as_slice() {
            [0x00] => card.power_off(),
            [0x01] => {
                card.power_on();
                atr_on_wire = true;
            }
            [0x02] => {
                card.reset();
                atr_on_wire = true;
            }
            [0x04] => {
                let atr = card.atr();
                if std::mem::take(&mut atr_on_wire) {
                    wait_until(read_at + wire.atr(atr.len()));
                }
                write_frame(s, &atr)?
            }
            [_] => tracing::debug!("unknown vpcd control {:02X}", frame[0]),
            apdu => match card.process(apdu) {
                Reply::Answer(r) => {
                    wait_until(read_at + wire.exchange(apdu.len(), r.len()));
                    write_frame(s, &r)?
                }
                Reply::Mute => tracing::debug!("mute: no answer"),
                Reply::Tear => return Ok(Ended::Tear),
            },
        }
    }
}

/// Whether the card is in the reader, as a control channel wants it: [`Presence::remove`]
/// closes the vpcd connection and keeps the card out, [`Presence::insert`] lets the bridge
/// connect again; [`Presence::stop`] ends [`serve_with`].
#[derive(Debug, Default)]
pub struct Presence {
    state: Mutex<PresenceState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PresenceState {
    /// Held out of the reader by the control channel.
    removed: bool,
    /// `serve_with` is to return.
    stopped: bool,
    /// A handle on the live vpcd connection (so that `remove` can close it).
    connection: Option<TcpStream>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, PresenceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, PresenceState>) -> MutexGuard<'a, PresenceState> {
        self.changed.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Take the card out of the reader and keep it out; returns once the vpcd connection
    /// is closed and the card powered off.
    pub fn remove(&self) {
        let mut g = self.lock();
        g.removed = true;
        if let Some(c) = &g.connection {
            // the serving thread's read ends; it closes its side and reports
            let _ = c.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
        while g.connection.is_some() && !g.stopped {
            g = self.wait(g);
        }
    }

    /// Put the card back; returns once the bridge is connected to vpcd again (at once
    /// if it is). Waits as long as vpcd is not there.
    pub fn insert(&self) {
        let mut g = self.lock();
        g.removed = false;
        self.changed.notify_all();
        while g.connection.is_none() && !g.stopped {
            g = self.wait(g);
        }
    }

    /// Make [`serve_with`] return (closing its connection).
    pub fn stop(&self) {
        let mut g = self.lock();
        g.stopped = true;
        if let Some(c) = &g.connection {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }

    /// Whether the card is in the reader (connected to vpcd).
    pub fn is_inserted(&self) -> bool {
        self.lock().connection.is_some()
    }

    /// Wait until the card may be in the reader; false once stopped.
    fn wait_wanted(&self) -> bool {
        let mut g = self.lock();
        while g.removed && !g.stopped {
            g = self.wait(g);
        }
        !g.stopped
    }

    /// Record a new connection; false (the caller drops it) when the card was removed or
    /// the bridge stopped meanwhile.
    fn connected(&self, s: &TcpStream) -> io::Result<bool> {
        let c = s.try_clone()?;
        let mut g = self.lock();
        if g.removed || g.stopped {
            return Ok(false);
        }
        g.connection = Some(c);
        self.changed.notify_all();
        Ok(true)
    }

    fn disconnected(&self) {
        let mut g = self.lock();
        g.connection = None;
        self.changed.notify_all();
    }

    /// Sleep for `d`, or less if the bridge is stopped.
    fn pause(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        while !g.stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = match self.changed.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Read control lines (`remove`, `insert`) from `input` until its end, answering each on
/// `out` with `ok remove` / `ok insert` once done. Other lines get an `error …` line;
/// the card keeps being served as it is when the input ends.
pub fn control(
    presence: &Presence,
    mut input: impl BufRead,
    mut out: impl Write,
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        match text.trim() {
            "" => continue,
            "remove" => {
                presence.remove();
                writeln!(out, "ok remove")?;
            }
            "insert" => {
                presence.insert();
                writeln!(out, "ok insert")?;
            }
            other => writeln!(out, "error unknown command {other:?} (remove, insert)")?,
        }
        out.flush()?;
    }
}

/// Connect to vpcd and serve the card forever: reconnect with backoff when vpcd (pcscd)
/// is not there or restarts, and re-insert the card after a tear. `on_connect` is
/// called at every connection (insertion).
pub fn serve(card: &mut dyn VirtualCard, opts: &BridgeOptions, mut on_connect: impl FnMut()) -> ! {
    let presence = Presence::default();
    loop {
        // never stopped: serve_with does not return
        serve_with(card, opts, &presence, &mut on_connect);
    }
}

/// [`serve`], with the card's presence under `presence`'s control; returns when
/// `presence` is stopped.
pub fn serve_with(
    card: &mut dyn VirtualCard,
    opts: &BridgeOptions,
    presence: &Presence,
    mut on_connect: impl FnMut(),
) {
    let mut backoff = Duration::from_millis(50);
    while presence.wait_wanted() {
        let mut s = match TcpStream::connect(opts.addr) {
            Ok(s) => s,
            Err(_) => {
                presence.pause(backoff);
                backoff = (backoff * 2).min(opts.max_backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        match presence.connected(&s) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("vpcd connection: {e}");
                presence.pause(backoff);
                continue;
            }
        }
        on_connect();
        let ended = serve_connection(card, &mut s, &opts.wire);
        if let Ok(Ended::Tear) = ended {
            if let Some(f) = &opts.tear_signal {
                if let Err(e) = std::fs::write(f, b"tear\n") {
                    tracing::warn!("tear signal {}: {e}", f.display());
                }
            }
            presence.pause(opts.tear_hold);
        }
        drop(s);
        card.power_off();
        presence.disconnected();
        match ended {
            Ok(Ended::Tear) => presence.pause(opts.reinsert_after),
            Ok(Ended::Closed) => presence.pause(backoff),
            Err(e) => {
                tracing::warn!("vpcd connection: {e}");
                presence.pause(backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake vpcd on loopback drives the bridge: ATR, a command, a tear.
    #[test]
    fn frames_controls_and_tear() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let card = crate::card::EmulatedCard::new(
            &crate::card::Personalization::default_test_card(),
            crate::card::Knobs {
                tear: Some(crate::card::Tear {
                    ins: 0xCA,
                    nth: 2,
                    commit: true,
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let h = std::thread::spawn(move || {
            let mut card = card;
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            serve_connection(&mut card, &mut s, &WireTime::INSTANT).unwrap()
        });
        let (mut v, _) = l.accept().unwrap();
        write_frame(&mut v, &[0x01]).unwrap();
        write_frame(&mut v, &[0x04]).unwrap();
        let atr = read_frame(&mut v).unwrap();
        assert_eq!(atr, crate::card::t1_atr());
        write_frame(&mut v, &hex::decode("80CA000108").unwrap()).unwrap();
        assert_eq!(
            read_frame(&mut v).unwrap(),
            hex::decode("00112233445566779000").unwrap()
        );
        // the second GET DATA tears the card out: the bridge closes the connection
        write_frame(&mut v, &hex::decode("80CA000108").unwrap()).unwrap();
        assert_eq!(h.join().unwrap(), Ended::Tear);
    }

    /// The card speed of issue 9: 9600 bit/s, 12 etu a byte, 2 ms a command.
    const CARD_SPEED: WireTime = WireTime {
        bit_rate: 9600,
        etu_per_byte: 12,
        processing: Duration::from_millis(2),
    };

    #[test]
    fn wire_time_arithmetic() {
        // 12 etu at 9600 etu/s: 1.25 ms a byte
        assert_eq!(CARD_SPEED.bytes(1), Duration::from_micros(1250));
        assert_eq!(CARD_SPEED.bytes(8), Duration::from_millis(10));
        // GET DATA: 5 command bytes, 10 answer bytes, 1 procedure byte, 2 ms processing
        assert_eq!(CARD_SPEED.exchange(5, 10), Duration::from_millis(22));
        // SELECT by AID (20 bytes) answered 9000: 23 bytes on the line
        assert_eq!(CARD_SPEED.exchange(20, 2), Duration::from_micros(30_750));
        // the ATR: its bytes only
        assert_eq!(CARD_SPEED.atr(14), Duration::from_micros(17_500));
        // rounding down to the nanosecond: 1 byte at 7 etu/s of 1 etu
        let odd = WireTime {
            bit_rate: 7,
            etu_per_byte: 1,
            processing: Duration::ZERO,
        };
        assert_eq!(odd.bytes(1), Duration::from_nanos(142_857_142));
        // no wire: at once, processing only if given
        assert!(WireTime::INSTANT.is_instant());
        assert_eq!(WireTime::INSTANT.exchange(261, 258), Duration::ZERO);
        assert_eq!(WireTime::INSTANT.atr(33), Duration::ZERO);
        let processing_only = WireTime {
            processing: Duration::from_millis(3),
            ..WireTime::INSTANT
        };
        assert!(!processing_only.is_instant());
        assert_eq!(processing_only.exchange(5, 10), Duration::from_millis(3));
        assert!(!CARD_SPEED.is_instant());
        // no overflow on absurd sizes
        let slow = WireTime {
            bit_rate: 1,
            etu_per_byte: u32::MAX,
            processing: Duration::MAX,
        };
        assert_eq!(slow.exchange(usize::MAX, usize::MAX), Duration::MAX);
        assert_eq!(WireTime::default(), WireTime::INSTANT);
    }

    fn default_card() -> crate::card::EmulatedCard {
        crate::card::EmulatedCard::new(
            &crate::card::Personalization::default_test_card(),
            crate::card::Knobs::default(),
        )
        .unwrap()
    }

    /// Answers leave no earlier than the wire time after the command was read (a lower
    /// bound only: sleeping never ends early, so this cannot fail on a busy machine).
    #[test]
    fn answers_wait_for_the_wire() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut card = default_card();
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            serve_connection(&mut card, &mut s, &CARD_SPEED).unwrap()
        });
        let (mut v, _) = l.accept().unwrap();
        write_frame(&mut v, &[0x01]).unwrap();
        let t = Instant::now();
        write_frame(&mut v, &[0x04]).unwrap();
        let atr = read_frame(&mut v).unwrap();
        assert!(t.elapsed() >= CARD_SPEED.atr(atr.len()));
        // a second ATR request is a presence poll: answered from the reader's state
        // (no lower bound to check; it just must answer)
        write_frame(&mut v, &[0x04]).unwrap();
        assert_eq!(read_frame(&mut v).unwrap(), atr);
        let t = Instant::now();
        write_frame(&mut v, &hex::decode("80CA000108").unwrap()).unwrap();
        assert_eq!(read_frame(&mut v).unwrap().len(), 10);
        assert!(t.elapsed() >= Duration::from_millis(22));
        drop(v);
        assert_eq!(h.join().unwrap(), Ended::Closed);
    }

    /// `remove` closes the vpcd connection and keeps the card out; `insert` connects
    /// again; the end of the control input leaves the card as it is; `stop` ends the
    /// bridge.
    #[test]
    fn control_removes_and_inserts() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let presence = std::sync::Arc::new(Presence::default());
        let p = presence.clone();
        let bridge = std::thread::spawn(move || {
            let mut card = default_card();
            let mut opts = BridgeOptions::port(port);
            opts.max_backoff = Duration::from_millis(50);
            let mut connects = 0;
            serve_with(&mut card, &opts, &p, || connects += 1);
            connects
        });
        let (mut v, _) = l.accept().unwrap();
        write_frame(&mut v, &hex::decode("80CA000108").unwrap()).unwrap();
        assert_eq!(read_frame(&mut v).unwrap().len(), 10);
        assert!(presence.is_inserted());

        // remove: the connection ends, and no new one comes while the card is out
        let mut out = Vec::new();
        control(&presence, &b"remove\n"[..], &mut out).unwrap();
        assert_eq!(out, b"ok remove\n");
        assert!(!presence.is_inserted());
        let mut b = [0u8; 1];
        assert_eq!(v.read(&mut b).unwrap(), 0);
        l.set_nonblocking(true).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            l.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        l.set_nonblocking(false).unwrap();

        // insert (and an unknown line, a blank one, then the end of the input)
        let mut out = Vec::new();
        control(&presence, &b"  insert \n\nshake\n"[..], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok insert\nerror unknown command \"shake\" (remove, insert)\n"
        );
        let (mut v, _) = l.accept().unwrap();
        write_frame(&mut v, &hex::decode("80CA000108").unwrap()).unwrap();
        assert_eq!(read_frame(&mut v).unwrap().len(), 10);
        // insert while inserted: at once
        let mut out = Vec::new();
        control(&presence, &b"insert\n"[..], &mut out).unwrap();
        assert_eq!(out, b"ok insert\n");

        presence.stop();
        assert_eq!(bridge.join().unwrap(), 2);
    }
}
