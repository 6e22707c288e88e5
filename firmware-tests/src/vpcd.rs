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

use crate::{Reply, VirtualCard};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

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
}

impl BridgeOptions {
    pub fn port(port: u16) -> Self {
        BridgeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            reinsert_after: Duration::from_millis(300),
            max_backoff: Duration::from_secs(1),
            tear_hold: Duration::ZERO,
            tear_signal: None,
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
    /// vpcd closed the connection or the link broke.
    Closed,
    /// The card tore itself out.
    Tear,
}

/// Serve the card on one established connection until it ends.
pub fn serve_connection(card: &mut dyn VirtualCard, s: &mut TcpStream) -> io::Result<Ended> {
    s.set_nodelay(true)?;
    loop {
        let frame = match read_frame(s) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Ended::Closed),
            Err(e) => return Err(e),
        };
        match frame.as_slice() {
            [0x00] => card.power_off(),
            [0x01] => card.power_on(),
            [0x02] => card.reset(),
            [0x04] => write_frame(s, &card.atr())?,
            [_] => tracing::debug!("unknown vpcd control {:02X}", frame[0]),
            apdu => match card.process(apdu) {
                Reply::Answer(r) => write_frame(s, &r)?,
                Reply::Mute => tracing::debug!("mute: no answer"),
                Reply::Tear => return Ok(Ended::Tear),
            },
        }
    }
}

/// Connect to vpcd and serve the card forever: reconnect with backoff when vpcd (pcscd)
/// is not there or restarts, and re-insert the card after a tear. `on_connect` is
/// called at every connection (insertion).
pub fn serve(card: &mut dyn VirtualCard, opts: &BridgeOptions, mut on_connect: impl FnMut()) -> ! {
    let mut backoff = Duration::from_millis(50);
    loop {
        match TcpStream::connect(opts.addr) {
            Ok(mut s) => {
                backoff = Duration::from_millis(50);
                on_connect();
                match serve_connection(card, &mut s) {
                    Ok(Ended::Tear) => {
                        if let Some(f) = &opts.tear_signal {
                            if let Err(e) = std::fs::write(f, b"tear\n") {
                                tracing::warn!("tear signal {}: {e}", f.display());
                            }
                        }
                        std::thread::sleep(opts.tear_hold);
                        drop(s);
                        card.power_off();
                        std::thread::sleep(opts.reinsert_after);
                    }
                    Ok(Ended::Closed) => {
                        card.power_off();
                        std::thread::sleep(backoff);
                    }
                    Err(e) => {
                        tracing::warn!("vpcd connection: {e}");
                        card.power_off();
                        std::thread::sleep(backoff);
                    }
                }
            }
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(opts.max_backoff);
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
            serve_connection(&mut card, &mut s).unwrap()
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
}
