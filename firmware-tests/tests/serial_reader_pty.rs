//! `sscard-vcard --serial-reader` as a process, without pcscd: the `pty:` line, the
//! link, a host talking frames on the pty, and the presence signals.

use sscard_driver::transport::serial::ccid::{Command, CommandBody, IccStatus, Response};
use sscard_driver::transport::serial::frame::{self, Decoder, Event, SlotChange};
use sscard_firmware_tests::card::T0_ATR;
use sscard_firmware_tests::testbed::bin_path;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Host {
    tty: std::fs::File,
    bytes: mpsc::Receiver<Vec<u8>>,
    decoder: Decoder,
    seq: u8,
}

impl Host {
    fn open(path: &str) -> Host {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut r = tty.try_clone().unwrap();
        let (tx, bytes) = mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok(n) = r.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Host {
            tty,
            bytes,
            decoder: Decoder::new(),
            seq: 0,
        }
    }

    fn event(&mut self) -> Event {
        loop {
            if let Some(e) = self.decoder.next_event() {
                return e;
            }
            let b = self
                .bytes
                .recv_timeout(Duration::from_secs(5))
                .expect("the reader answers");
            self.decoder.push(&b);
        }
    }

    /// Send a command; the events before the answer (echo excluded) and the answer.
    fn send(&mut self, body: CommandBody, echo: bool) -> (Vec<Event>, Response) {
        let msg = Command {
            slot: 0,
            seq: self.seq,
            body,
        }
        .encode()
        .unwrap();
        self.seq = self.seq.wrapping_add(1);
        self.tty.write_all(&frame::encode(&msg)).unwrap();
        if echo {
            assert_eq!(self.event(), Event::Message(msg.clone()));
        }
        let mut before = Vec::new();
        loop {
            match self.event() {
                Event::Message(m) => return (before, Response::decode(&m).unwrap()),
                other => before.push(other),
            }
        }
    }
}

fn run(model: &str, echo: bool) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyS-emu");
    let mut child = Process::new(bin_path("sscard-vcard"))
        .args(["--serial-reader", "--t0", "--model", model, "--link"])
        .arg(&link)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let path = first
        .trim()
        .strip_prefix("pty: ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_string();
    assert_eq!(std::fs::read_link(&link).unwrap().to_str(), Some(&path[..]));

    let mut h = Host::open(link.to_str().unwrap());
    let (_, fw) = h.send(CommandBody::Escape { data: vec![0x02] }, echo);
    assert!(String::from_utf8_lossy(fw.data()).contains("emulated"));
    h.send(
        CommandBody::Escape {
            data: vec![1, 1, 1],
        },
        echo,
    );
    let (_, atr) = h.send(CommandBody::IccPowerOn { power_select: 1 }, echo);
    assert_eq!(atr.data(), T0_ATR);
    let (_, r) = h.send(
        CommandBody::XfrBlock {
            bwi: 0,
            level_parameter: 0,
            data: hex::decode("80CA000108").unwrap(),
        },
        echo,
    );
    assert_eq!(r.data(), hex::decode("00112233445566779000").unwrap());

    // SIGUSR1: the card leaves; the next answer is preceded by the notification
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    let (ev, s) = h.send(CommandBody::GetSlotStatus, echo);
    assert_eq!(ev, vec![Event::SlotChange(SlotChange::Absent)]);
    assert_eq!(s.status.icc(), IccStatus::Absent);
    // SIGUSR2: back, not powered
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    let (ev, s) = h.send(CommandBody::GetSlotStatus, echo);
    assert_eq!(ev, vec![Event::SlotChange(SlotChange::Present)]);
    assert_eq!(s.status.icc(), IccStatus::PresentInactive);

    // a bad LRC: NAK alone
    let mut bad = frame::encode(&[0x65, 0, 0, 0, 0, 0, 9, 0, 0, 0]);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    h.tty.write_all(&bad).unwrap();
    assert_eq!(h.event(), Event::Nak);

    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn gemcore_pos_pro_on_a_pty() {
    run("GemCorePOSPro", false);
}

#[test]
fn gempc_twin_on_a_pty() {
    run("GemPCTwin", true);
}
