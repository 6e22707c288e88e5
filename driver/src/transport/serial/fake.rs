//! An in-process serial CCID reader for unit tests of the link and the backend (the
//! real tests run against the reader emulator on a pseudo-terminal): it decodes the
//! host's frames, answers them like a GemPC Twin / GemCore with T=0 cards in its
//! slots, and has knobs for the faults the link must survive.

use super::ccid::{
    error, Command, CommandBody, CommandStatus, IccStatus, Response, ResponseBody, Status,
};
use super::frame::{self, Decoder, Event};
use super::link::{Link, Opener, Timing};
use super::model::Model;
use super::port::fake::{FakePort, Inbox, Shared as PortShared};
use super::port::Port;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a card answers a C-TPDU.
pub type CardFn = Box<dyn FnMut(&[u8]) -> Vec<u8> + Send>;

/// A card: its ATR and how it answers a C-TPDU.
pub struct FakeCard {
    pub atr: Vec<u8>,
    pub answer: CardFn,
    /// Accept a PPS (echo it) or not (mute).
    pub pps_ok: bool,
}

impl FakeCard {
    /// The emulator's T=0 ATR; READ RECORD answers its record number repeated,
    /// INTERNAL AUTHENTICATE (a case 4 command) `6108` then the data on GET RESPONSE.
    pub fn t0() -> FakeCard {
        FakeCard::with_atr(&[
            0x3B, 0x6A, 0x00, 0x00, b'S', b'S', b'C', b'-', b'A', b'E', b'S', b' ', b'v', b'1',
        ])
    }

    pub fn with_atr(atr: &[u8]) -> FakeCard {
        FakeCard {
            atr: atr.to_vec(),
            pps_ok: true,
            answer: Box::new(|t| match t.get(1) {
                Some(0xB2) => {
                    let mut r = vec![t[2]; t[4] as usize];
                    r.extend_from_slice(&[0x90, 0x00]);
                    r
                }
                Some(0x88) => vec![0x61, 0x08],
                Some(0xC0) => {
                    let mut r = vec![0xA5; t[4] as usize];
                    r.extend_from_slice(&[0x90, 0x00]);
                    r
                }
                _ => vec![0x90, 0x00],
            }),
        }
    }
}

#[derive(Default)]
pub struct FakeSlot {
    pub card: Option<FakeCard>,
    pub powered: bool,
}

/// The reader's state and knobs.
pub struct FakeReader {
    pub echo: bool,
    pub slots: Vec<FakeSlot>,
    pub firmware: Vec<u8>,
    /// Every command received intact.
    pub log: Vec<Command>,
    decoder: Decoder,
    last: Vec<u8>,
    /// NAK the next n commands instead of acting on them (as if they came damaged).
    /// `nak_after_echo`: a NAK after the echo, which no reader sends.
    pub nak_next: u32,
    pub nak_after_echo: bool,
    /// Flip a bit in the next n frames sent (answers and their resends).
    pub corrupt_next: u32,
    /// Change the CTRL byte of the next frame sent (it reads as garbage).
    pub hit_ctrl_next: bool,
    /// Drop a byte of the next frame sent.
    pub cut_next: bool,
    /// Bytes sent before the next answer.
    pub garbage_next: Vec<u8>,
    /// A card movement notice sent before the next answer.
    pub notice_next: Option<u8>,
    /// T=0 time requests before each answer to an XfrBlock, each after `te_every`.
    pub time_requests: u32,
    pub te_every: Duration,
    /// CCID time extensions (answers with bmCommandStatus 2, bError 1) before each
    /// answer to an XfrBlock, each after `te_every`.
    pub ccid_extensions: u32,
    /// Delay of every answer.
    pub delay: Duration,
    /// Answer nothing to the next n commands.
    pub silent_next: u32,
    /// Pull the card of slot 0 out while the next XfrBlock runs.
    pub pull_mid_apdu: bool,
}

impl FakeReader {
    pub fn new(model: Model) -> FakeReader {
        FakeReader {
            echo: model.echoes(),
            slots: (0..model.slots()).map(|_| FakeSlot::default()).collect(),
            firmware: b"GemTwin V5.00".to_vec(),
            log: Vec::new(),
            decoder: Decoder::new(),
            last: Vec::new(),
            nak_next: 0,
            nak_after_echo: false,
            corrupt_next: 0,
            cut_next: false,
            hit_ctrl_next: false,
            garbage_next: Vec::new(),
            notice_next: None,
            time_requests: 0,
            te_every: Duration::from_millis(10),
            ccid_extensions: 0,
            delay: Duration::ZERO,
            silent_next: 0,
            pull_mid_apdu: false,
        }
    }

    fn icc(&self, slot: u8) -> IccStatus {
        match self.slots.get(slot as usize) {
            Some(FakeSlot {
                card: Some(_),
                powered: true,
            }) => IccStatus::PresentActive,
            Some(FakeSlot { card: Some(_), .. }) => IccStatus::PresentInactive,
            _ => IccStatus::Absent,
        }
    }

    fn answer(&mut self, c: &Command) -> Response {
        let ok = |icc| Status::new(icc, CommandStatus::Ok);
        let failed = |icc| Status::new(icc, CommandStatus::Failed);
        let slot = c.slot;
        let mut status = ok(self.icc(slot));
        let mut err = 0;
        let body = match &c.body {
            CommandBody::Escape { data } => ResponseBody::Escape {
                rfu: 0,
                data: if data.as_slice() == [0x02] {
                    self.firmware.clone()
                } else {
                    Vec::new()
                },
            },
            CommandBody::GetSlotStatus => ResponseBody::SlotStatus { clock_status: 0 },
            CommandBody::IccPowerOff => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.powered = false;
                }
                status = ok(self.icc(slot));
                ResponseBody::SlotStatus { clock_status: 0 }
            }
            CommandBody::IccPowerOn { .. } => {
                let atr = match self.slots.get_mut(slot as usize) {
                    Some(FakeSlot {
                        card: Some(card),
                        powered,
                    }) => {
                        *powered = true;
                        Some(card.atr.clone())
                    }
                    _ => None,
                };
                match atr {
                    Some(a) => {
                        status = ok(IccStatus::PresentActive);
                        ResponseBody::DataBlock { chain: 0, data: a }
                    }
                    None => {
                        status = failed(IccStatus::Absent);
                        err = error::ICC_MUTE;
                        ResponseBody::DataBlock {
                            chain: 0,
                            data: Vec::new(),
                        }
                    }
                }
            }
            CommandBody::SetParameters { protocol, data } => ResponseBody::Parameters {
                protocol: *protocol,
                data: data.clone(),
            },
            CommandBody::XfrBlock { data, .. } => {
                if self.pull_mid_apdu && slot == 0 {
                    self.pull_mid_apdu = false;
                    if let Some(s) = self.slots.get_mut(0) {
                        s.card = None;
                        s.powered = false;
                    }
                }
                match self.slots.get_mut(slot as usize) {
                    Some(FakeSlot {
                        card: Some(card),
                        powered: true,
                    }) => {
                        let r = if data.first() == Some(&0xFF) {
                            if card.pps_ok {
                                data.clone()
                            } else {
                                Vec::new()
                            }
                        } else {
                            (card.answer)(data)
                        };
                        if r.is_empty() {
                            status = failed(IccStatus::PresentActive);
                            err = error::ICC_MUTE;
                        }
                        ResponseBody::DataBlock { chain: 0, data: r }
                    }
                    _ => {
                        status = failed(self.icc(slot));
                        err = error::ICC_MUTE;
                        ResponseBody::DataBlock {
                            chain: 0,
                            data: Vec::new(),
                        }
                    }
                }
            }
            _ => {
                status = failed(self.icc(slot));
                err = error::CMD_NOT_SUPPORTED;
                ResponseBody::SlotStatus { clock_status: 0 }
            }
        };
        Response {
            slot,
            seq: c.seq,
            status,
            error: err,
            body,
        }
    }

    /// A frame as the faults knobs let it through.
    fn damage(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        if self.corrupt_next > 0 {
            self.corrupt_next -= 1;
            if let Some(b) = f.get_mut(8) {
                *b ^= 0x10;
            }
        } else if self.hit_ctrl_next && f.len() > 1 {
            self.hit_ctrl_next = false;
            f[1] = 0x07;
        } else if self.cut_next && f.len() > 5 {
            self.cut_next = false;
            f.remove(5);
        }
        f
    }

    /// What the host wrote; answers go to `inbox`.
    pub fn on_write(&mut self, bytes: &[u8], inbox: &mut Inbox) {
        self.decoder.push(bytes);
        while let Some(ev) = self.decoder.next_event() {
            match ev {
                Event::Nak => {
                    let again = self.damage(self.last.clone());
                    inbox.push(&again);
                }
                Event::BadLrc(_) => inbox.push(&frame::NAK_FRAME),
                Event::Message(m) => {
                    // as if the frame came damaged: a NAK alone, no echo
                    if self.nak_next > 0 {
                        self.nak_next -= 1;
                        inbox.push(&frame::NAK_FRAME);
                        continue;
                    }
                    if self.echo {
                        inbox.push(&frame::encode(&m));
                        if std::mem::take(&mut self.nak_after_echo) {
                            inbox.push(&frame::NAK_FRAME);
                        }
                    }
                    let Ok(c) = Command::decode(&m) else {
                        continue;
                    };
                    self.log.push(c.clone());
                    let xfr = matches!(c.body, CommandBody::XfrBlock { .. });
                    let r = self.answer(&c);
                    if self.silent_next > 0 {
                        self.silent_next -= 1;
                        continue;
                    }
                    let Ok(msg) = r.encode() else { continue };
                    let good = frame::encode(&msg);
                    self.last = good.clone();
                    let sent = self.damage(good);
                    let mut first = std::mem::take(&mut self.garbage_next);
                    if let Some(n) = self.notice_next.take() {
                        first.extend_from_slice(&[frame::NOTIFY_SLOT_CHANGE, n]);
                    }
                    if xfr {
                        for _ in 0..self.time_requests {
                            inbox.push_after(self.te_every, &[0x80]);
                        }
                        let wait = Response {
                            status: Status::new(
                                IccStatus::PresentActive,
                                CommandStatus::TimeExtension,
                            ),
                            error: 1,
                            body: ResponseBody::DataBlock {
                                chain: 0,
                                data: Vec::new(),
                            },
                            ..r.clone()
                        };
                        if let Ok(w) = wait.encode() {
                            for _ in 0..self.ccid_extensions {
                                inbox.push_after(self.te_every, &frame::encode(&w));
                            }
                        }
                    }
                    first.extend_from_slice(&sent);
                    inbox.push_after(self.delay, &first);
                }
                _ => {}
            }
        }
    }
}

/// The port of the latest opening, if any.
pub type CurrentPort = Arc<Mutex<Option<Arc<Mutex<PortShared>>>>>;

/// A fake reader behind a link, with the handles a test needs.
pub struct Bench {
    pub reader: Arc<Mutex<FakeReader>>,
    /// The port of the latest opening.
    pub port: CurrentPort,
    /// While false, opening fails (the device is unplugged).
    pub plugged: Arc<Mutex<bool>>,
}

fn lk<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Short timeouts, so that the tests of silence are quick.
pub fn quick() -> Timing {
    Timing {
        answer: Duration::from_millis(150),
        detect: Duration::from_millis(150),
        max_wait: Duration::from_secs(5),
        resends: 3,
        settle: Duration::from_millis(5),
        gap: Duration::from_millis(30),
    }
}

impl Bench {
    pub fn new(model: Model) -> (Bench, Link) {
        Self::with_timing(model, quick())
    }

    pub fn with_timing(model: Model, timing: Timing) -> (Bench, Link) {
        let reader = Arc::new(Mutex::new(FakeReader::new(model)));
        let port: CurrentPort = Arc::default();
        let plugged = Arc::new(Mutex::new(true));
        let (r, p, pl) = (reader.clone(), port.clone(), plugged.clone());
        let opener: Opener = Box::new(move || {
            if !*lk(&pl) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such device",
                ));
            }
            let r = r.clone();
            let (fp, shared) = FakePort::new(Box::new(move |b, inbox| lk(&r).on_write(b, inbox)));
            *lk(&p) = Some(shared);
            Ok(Box::new(fp) as Box<dyn Port>)
        });
        let link = Link::with_opener("/dev/fake", model, timing, opener);
        (
            Bench {
                reader,
                port,
                plugged,
            },
            link,
        )
    }

    pub fn fake(&self) -> MutexGuard<'_, FakeReader> {
        lk(&self.reader)
    }

    /// Everything the host wrote on the current port.
    pub fn written(&self) -> Vec<Vec<u8>> {
        lk(&self.port)
            .as_ref()
            .map(|s| super::port::fake::lock(s).written.clone())
            .unwrap_or_default()
    }

    /// Pull the plug: the port fails, and cannot be opened again until `plug`.
    pub fn unplug(&self) {
        *lk(&self.plugged) = false;
        if let Some(s) = lk(&self.port).as_ref() {
            super::port::fake::lock(s).gone = true;
        }
    }

    pub fn plug(&self) {
        *lk(&self.plugged) = true;
    }

    pub fn insert(&self, slot: usize, card: FakeCard) {
        let mut f = self.fake();
        if let Some(s) = f.slots.get_mut(slot) {
            s.card = Some(card);
            s.powered = false;
        }
    }

    pub fn remove(&self, slot: usize) {
        let mut f = self.fake();
        if let Some(s) = f.slots.get_mut(slot) {
            s.card = None;
            s.powered = false;
        }
    }
}
