//! The link to one serial reader: one port, one `bSeq` counter shared by the reader's
//! slots (as libccid keeps it), and the robustness rules of the GemPC Twin protocol.
//!
//! One command at a time: write its frame, then read until the answer with the same
//! `bSeq` arrives. On the way:
//! - bytes that are no frame are skipped (resynchronisation at the next `SYNC`);
//! - the echo of the command (GemPC Twin, PinPad) and answers with another `bSeq` (a
//!   late answer to a command that timed out) are skipped;
//! - a frame with a bad LRC is answered with a NAK, so that the reader sends it again,
//!   at most [`Timing::resends`] times; so is a frame cut short (a byte lost: the line
//!   stays quiet for [`Timing::gap`] in the middle of it) and bytes that were no frame
//!   followed by silence (a frame whose SYNC or CTRL byte was hit);
//! - a NAK from the reader (it got our frame damaged, and did not act on it) makes us
//!   send the frame again, at most [`Timing::resends`] times;
//! - a time extension (a byte `80`..`FF` between frames, or an answer with
//!   `bmCommandStatus` 2) gives the reader [`Timing::answer`] more, up to
//!   [`Timing::max_wait`] in all;
//! - card movement notices (`50` and the slots' bitmap) are recorded for the slots;
//! - silence past the deadline is [`TransportError::Timeout`]: the outcome of the
//!   command is unknown;
//! - a port that fails (unplugged USB-serial bridge, closed pseudo-terminal) is
//!   closed and the error returned ([`TransportError::Io`]); the next command opens
//!   the path again and runs the reader's start-up again ([`Link::ensure_open`]), or
//!   says [`TransportError::NoReader`] while the path is not there.

use super::ccid::{Command, CommandBody, CommandStatus, Response};
use super::frame::{self, Decoder, Event, SlotChange};
use super::model::Model;
use super::port::{Port, ReadOutcome, SerialPortIo, BIT_RATE};
use crate::transport::TransportError;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};
use zeroize::{Zeroize, Zeroizing};

/// Timeouts and bounds of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long the reader may stay silent before an answer (libccid: 3 s).
    pub answer: Duration,
    /// The same for the firmware version asked at start-up (libccid: 2 s), so that
    /// a port without a reader is given up quickly.
    pub detect: Duration,
    /// Longest wait for one answer, time extensions included.
    pub max_wait: Duration,
    /// NAKs sent for one answer, and resends of one command on the reader's NAKs.
    pub resends: u32,
    /// Quiet time that ends a damaged frame's remains before the NAK.
    pub settle: Duration,
    /// Silence in the middle of a frame that makes it a frame cut short (at 115200
    /// bit/s a byte takes 87 µs).
    pub gap: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            answer: Duration::from_secs(3),
            detect: Duration::from_secs(2),
            max_wait: Duration::from_secs(60),
            resends: 3,
            settle: Duration::from_millis(20),
            gap: Duration::from_millis(100),
        }
    }
}

/// Opens the port (the real one, or a fake in unit tests).
pub type Opener = Box<dyn FnMut() -> io::Result<Box<dyn Port>> + Send>;

/// What the link knows of a slot from card movement notices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notices {
    /// Movements seen (each notice with the slot's "changed" bit).
    pub changes: u64,
    /// Presence in the last notice, if any.
    pub present: Option<bool>,
}

/// The link: a port that may come and go, and the reader's start-up on it.
pub struct Link {
    path: String,
    model: Model,
    opener: Opener,
    port: Option<Box<dyn Port>>,
    decoder: Decoder,
    seq: u8,
    timing: Timing,
    /// Goes up at every opening of the port: what was powered before is lost.
    epoch: u64,
    firmware: String,
    notices: Vec<Notices>,
}

impl Link {
    /// A link to the serial port at `path`; nothing is opened yet.
    pub fn serial(path: &str, model: Model, timing: Timing) -> Link {
        let p = path.to_string();
        let opener: Opener = Box::new(move || {
            SerialPortIo::open(&p, BIT_RATE).map(|p| Box::new(p) as Box<dyn Port>)
        });
        Link::with_opener(path, model, timing, opener)
    }

    /// A link whose port comes from `opener` (tests).
    pub fn with_opener(path: &str, model: Model, timing: Timing, opener: Opener) -> Link {
        Link {
            path: path.to_string(),
            model,
            opener,
            port: None,
            decoder: Decoder::default(),
            seq: 0,
            timing,
            epoch: 0,
            firmware: String::new(),
            notices: vec![Notices::default(); model.slots() as usize],
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// The firmware version string the reader gave at the last opening.
    pub fn firmware(&self) -> &str {
        &self.firmware
    }

    /// How many times the port was opened: changes when the reader was unplugged and
    /// plugged in again (every card in it lost power).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn is_open(&self) -> bool {
        self.port.is_some()
    }

    /// The card movement notices seen for `slot`.
    pub fn notices(&self, slot: u8) -> Notices {
        self.notices.get(slot as usize).copied().unwrap_or_default()
    }

    /// Close the port (the next command opens it again).
    pub fn close(&mut self) {
        self.port = None;
        self.decoder.clear();
    }

    /// Open the port if it is not, and run the reader's start-up: the firmware version
    /// (escape `02`), then card movement notices on (escape `01 01 01`), as libccid.
    pub fn ensure_open(&mut self) -> Result<(), TransportError> {
        if self.port.is_some() {
            return Ok(());
        }
        let port =
            (self.opener)().map_err(|e| TransportError::NoReader(format!("{}: {e}", self.path)))?;
        self.port = Some(port);
        self.decoder.clear();
        self.epoch += 1;
        for n in &mut self.notices {
            *n = Notices::default();
        }
        let detect = self.timing.detect;
        let escape = |data: &[u8]| CommandBody::Escape {
            data: data.to_vec(),
        };
        let fw = match self.exchange(0, escape(&[0x02]), detect) {
            Ok(r) if !r.failed() => r.data().to_vec(),
            Ok(r) => {
                self.close();
                return Err(TransportError::NoReader(format!(
                    "{}: the reader refused the firmware version request (bError {:02X})",
                    self.path, r.error
                )));
            }
            Err(e) => {
                self.close();
                return Err(TransportError::NoReader(format!(
                    "{}: no {} answers: {e}",
                    self.path, self.model
                )));
            }
        };
        self.firmware = String::from_utf8_lossy(&fw)
            .trim_end_matches('\0')
            .to_string();
        let answer = self.timing.answer;
        match self.exchange(0, escape(&[0x01, 0x01, 0x01]), answer) {
            Ok(r) if !r.failed() => {}
            Ok(r) => {
                self.close();
                return Err(TransportError::NoReader(format!(
                    "{}: the reader refused card movement notices (bError {:02X})",
                    self.path, r.error
                )));
            }
            Err(e) => {
                self.close();
                return Err(e);
            }
        }
        tracing::debug!(path = %self.path, model = %self.model, firmware = %self.firmware, "serial reader up");
        Ok(())
    }

    /// Send one command to `slot` and return its answer (time extensions handled),
    /// opening the port first if needed.
    pub fn transact(&mut self, slot: u8, body: CommandBody) -> Result<Response, TransportError> {
        self.ensure_open()?;
        let answer = self.timing.answer;
        self.exchange(slot, body, answer)
    }

    /// [`Link::transact`] with another answer timeout (a T=1 card's waiting time
    /// extension stretches it for one block).
    pub fn transact_for(
        &mut self,
        slot: u8,
        body: CommandBody,
        answer: Duration,
    ) -> Result<Response, TransportError> {
        self.ensure_open()?;
        self.exchange(slot, body, answer)
    }

    /// The link's timeouts and bounds.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn next_seq(&mut self) -> u8 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    fn port_failed(&mut self, e: io::Error) -> TransportError {
        tracing::debug!(path = %self.path, "serial port lost: {e}");
        self.close();
        TransportError::Io(e)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let r = match self.port.as_mut() {
            Some(p) => p.write_all(bytes),
            None => return Err(TransportError::NoReader(self.path.clone())),
        };
        r.map_err(|e| self.port_failed(e))
    }

    /// Read what comes within `timeout` into the decoder; false on silence.
    fn fill(&mut self, timeout: Duration) -> Result<bool, TransportError> {
        let mut buf = [0u8; 512];
        let r = match self.port.as_mut() {
            Some(p) => p.read_some(&mut buf, timeout),
            None => return Err(TransportError::NoReader(self.path.clone())),
        };
        match r {
            Ok(ReadOutcome::Data(n)) => {
                self.decoder.push(buf.get(..n).unwrap_or(&[]));
                Ok(true)
            }
            Ok(ReadOutcome::TimedOut) => Ok(false),
            Err(e) => Err(self.port_failed(e)),
        }
    }

    /// Read until the line has been quiet for `settle`, and forget it all.
    fn drain(&mut self) -> Result<(), TransportError> {
        let settle = self.timing.settle;
        let until = Instant::now() + self.timing.answer;
        while self.fill(settle)? && Instant::now() < until {}
        self.decoder.clear();
        Ok(())
    }

    /// A notice: `02` / `03` (slot 0 absent / present), or, read as the CCID
    /// bmSlotICCState bitmap, two bits a slot (present, changed) for slots 0 to 3.
    fn record_notice(&mut self, change: SlotChange) {
        let bitmap = match change {
            SlotChange::Absent => frame::CARD_ABSENT,
            SlotChange::Present => frame::CARD_PRESENT,
            SlotChange::Other(b) => b,
        };
        for (i, n) in self.notices.iter_mut().enumerate().take(4) {
            let bits = bitmap >> (2 * i);
            if bits & 0x02 != 0 {
                n.changes += 1;
                n.present = Some(bits & 0x01 != 0);
            }
        }
    }

    /// Send a NAK for a damaged frame, counting it against the bound.
    fn nak(&mut self, naks_sent: &mut u32, own_naks: &mut u32) -> Result<(), TransportError> {
        *naks_sent += 1;
        if *naks_sent > self.timing.resends {
            return Err(TransportError::Timeout(format!(
                "no intact answer from the reader after {} NAKs",
                *naks_sent - 1
            )));
        }
        self.write(&frame::NAK_FRAME)?;
        if self.model.echoes() {
            *own_naks += 1;
        }
        Ok(())
    }

    fn exchange(
        &mut self,
        slot: u8,
        body: CommandBody,
        answer: Duration,
    ) -> Result<Response, TransportError> {
        let seq = self.next_seq();
        let mut command = Command { slot, seq, body };
        // a VERIFY carries the PIN: no copy of the command outlives the exchange
        let message = Zeroizing::new(
            command
                .encode()
                .map_err(|e| TransportError::Protocol(e.to_string()))?,
        );
        if let CommandBody::XfrBlock { data, .. } | CommandBody::Secure { data, .. } =
            &mut command.body
        {
            data.zeroize();
        }
        let frame = Zeroizing::new(frame::encode(&message));
        // leftovers (a late answer, an echo) are no answer to this command
        while let Some(ev) = self.decoder.next_event() {
            if let Event::SlotChange(c) = ev {
                self.record_notice(c);
            }
        }
        self.decoder.clear();
        self.write(&frame)?;
        let start = Instant::now();
        let mut deadline = start + answer;
        let mut naks_sent = 0u32;
        let mut resent = 0u32;
        // an echoing reader echoes our NAKs too: that NAK is not the reader's
        let mut own_naks = 0u32;
        let mut pending = VecDeque::new();
        let mut damaged = false;
        let mut echo_seen = false;
        loop {
            while let Some(ev) = pending.pop_front().or_else(|| self.decoder.next_event()) {
                match ev {
                    Event::SlotChange(c) => self.record_notice(c),
                    Event::Garbage(_) => damaged = true,
                    Event::TimeExtension(_) => {
                        deadline = Instant::now() + answer;
                    }
                    Event::Nak if own_naks > 0 => own_naks -= 1,
                    // the reader echoed the command intact: it did not NAK it, and
                    // resending could run it twice
                    Event::Nak if echo_seen => {
                        tracing::debug!("a NAK after the command's echo ignored");
                    }
                    Event::Nak => {
                        resent += 1;
                        if resent > self.timing.resends {
                            return Err(TransportError::Timeout(format!(
                                "the reader refused the command {} times",
                                resent
                            )));
                        }
                        self.decoder.clear();
                        pending.clear();
                        echo_seen = false;
                        self.write(&frame)?;
                        deadline = Instant::now() + answer;
                    }
                    Event::BadLrc(_) => {
                        self.drain()?;
                        pending.clear();
                        damaged = false;
                        self.nak(&mut naks_sent, &mut own_naks)?;
                        deadline = Instant::now() + answer;
                    }
                    Event::Message(m) => {
                        // an echo carries the command, PIN and all
                        let m = Zeroizing::new(m);
                        // whatever came before an intact frame was noise
                        damaged = false;
                        // the echo of our command (or of an earlier one) is no answer
                        if m.first().is_none_or(|k| *k < 0x80) {
                            echo_seen |= *m == *message;
                            continue;
                        }
                        let r = match Response::decode(&m) {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::debug!("undecodable answer skipped: {e}");
                                continue;
                            }
                        };
                        if r.seq != seq {
                            tracing::trace!(seq = r.seq, want = seq, "stale answer skipped");
                            continue;
                        }
                        if r.status.command() == CommandStatus::TimeExtension {
                            let factor = u32::from(r.error.max(1));
                            deadline = Instant::now() + answer.saturating_mul(factor);
                            continue;
                        }
                        return Ok(r);
                    }
                }
            }
            let now = Instant::now();
            // a longer answer timeout (a PIN entry's) stretches the bound with it
            let end = deadline.min(start + self.timing.max_wait.max(answer));
            if now >= end {
                return Err(TransportError::Timeout(format!(
                    "the {} on {} did not answer within {} ms",
                    self.model,
                    self.path,
                    answer.as_millis()
                )));
            }
            // a frame being assembled (cut short if the line stays quiet), or bytes
            // that were no frame (maybe a frame whose SYNC or CTRL was hit)
            let stuck = self.decoder.buffered() > 0;
            let wait = if stuck || damaged {
                self.timing.gap.min(end - now)
            } else {
                end - now
            };
            if !self.fill(wait)? && (stuck || damaged) && Instant::now() < end {
                // a frame lost or cut short: drop what is left of it, decode what
                // follows it, and ask for the last frame again
                if stuck {
                    self.decoder.resync();
                    loop {
                        pending.extend(
                            std::iter::from_fn(|| self.decoder.next_event())
                                // what the lost frame's body looked like is no NAK,
                                // no time request and no card notice: a NAK there
                                // would resend a command the reader may have run,
                                // and card data holding `50 02` would pass for the
                                // card leaving (a real notice lost here shows at the
                                // next GetSlotStatus)
                                .filter(|e| matches!(e, Event::Message(_))),
                        );
                        if self.decoder.buffered() == 0
                            || pending.iter().any(|e| matches!(e, Event::Message(_)))
                        {
                            break;
                        }
                        self.decoder.resync();
                    }
                }
                damaged = false;
                self.nak(&mut naks_sent, &mut own_naks)?;
                deadline = Instant::now() + answer;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ccid::{CommandBody, IccStatus};
    use super::super::fake::{quick, Bench, FakeCard};
    use super::super::frame;
    use super::super::model::Model;
    use super::*;

    fn status(link: &mut Link) -> Result<Response, TransportError> {
        link.transact(0, CommandBody::GetSlotStatus)
    }

    #[test]
    fn start_up_is_libccids_and_reads_the_firmware() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        assert_eq!(link.firmware(), "GemTwin V5.00");
        assert_eq!(link.epoch(), 1);
        let w = b.written();
        // the very first frame libccidtwin writes (shared/spec/test-stack.md)
        assert_eq!(
            w[0],
            [0x03, 0x06, 0x6B, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x6D]
        );
        assert_eq!(
            w[1][2..],
            [0x6B, 3, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0x6D][..]
        );
    }

    #[test]
    fn echo_is_skipped_with_and_without() {
        for model in [Model::GemPcTwin, Model::GemCorePosPro] {
            let (b, mut link) = Bench::new(model);
            b.insert(0, FakeCard::t0());
            let r = status(&mut link).unwrap();
            assert_eq!(r.status.icc(), IccStatus::PresentInactive, "{model}");
            assert_eq!(r.seq, 2);
        }
    }

    #[test]
    fn a_bad_lrc_is_nakked_and_resent() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        b.fake().corrupt_next = 2;
        assert!(status(&mut link).is_ok());
        let naks = b
            .written()
            .iter()
            .filter(|w| w.as_slice() == frame::NAK_FRAME)
            .count();
        assert_eq!(naks, 2);
    }

    #[test]
    fn a_frame_cut_short_is_nakked() {
        let (b, mut link) = Bench::new(Model::GemCorePosPro);
        link.ensure_open().unwrap();
        b.fake().cut_next = true;
        assert!(status(&mut link).is_ok());
        assert!(b.written().iter().any(|w| w.as_slice() == frame::NAK_FRAME));
    }

    #[test]
    fn a_frame_whose_ctrl_byte_was_hit_is_nakked() {
        for model in [Model::GemPcTwin, Model::GemCorePosPro] {
            let (b, mut link) = Bench::new(model);
            link.ensure_open().unwrap();
            b.fake().hit_ctrl_next = true;
            assert!(status(&mut link).is_ok(), "{model}");
            assert!(b.written().iter().any(|w| w.as_slice() == frame::NAK_FRAME));
        }
    }

    #[test]
    fn naks_are_bounded() {
        let (b, mut link) = Bench::new(Model::GemCorePosPro);
        link.ensure_open().unwrap();
        b.fake().corrupt_next = 10;
        let e = status(&mut link).unwrap_err();
        assert!(matches!(e, TransportError::Timeout(_)), "{e}");
        assert!(e.outcome_unknown());
        // three NAKs, no more
        let naks = b
            .written()
            .iter()
            .filter(|w| w.as_slice() == frame::NAK_FRAME)
            .count();
        assert_eq!(naks, 3);
        // the link is still usable
        b.fake().corrupt_next = 0;
        assert!(status(&mut link).is_ok());
    }

    #[test]
    fn the_readers_nak_makes_us_resend_a_bounded_number_of_times() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        b.fake().nak_next = 2;
        assert!(status(&mut link).is_ok());
        let before = b.written().len();
        b.fake().nak_next = 10;
        assert!(matches!(status(&mut link), Err(TransportError::Timeout(_))));
        // the command and three resends
        assert_eq!(b.written().len() - before, 4);
    }

    #[test]
    fn a_nak_after_the_echo_resends_nothing() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        let before = b.fake().log.len();
        b.fake().nak_after_echo = true;
        assert!(status(&mut link).is_ok());
        // the command reached the reader once
        assert_eq!(b.fake().log.len() - before, 1);
    }

    #[test]
    fn garbage_and_notices_before_the_answer() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        b.insert(0, FakeCard::t0());
        {
            let mut f = b.fake();
            f.garbage_next = vec![0x00, 0x03, 0x07, 0x42, 0x03];
            f.notice_next = Some(frame::CARD_PRESENT);
        }
        assert!(status(&mut link).is_ok());
        assert_eq!(link.notices(0).changes, 1);
        assert_eq!(link.notices(0).present, Some(true));
        b.fake().notice_next = Some(frame::CARD_ABSENT);
        assert!(status(&mut link).is_ok());
        assert_eq!(link.notices(0).present, Some(false));
        assert_eq!(link.notices(0).changes, 2);
    }

    #[test]
    fn time_requests_extend_the_wait() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        b.insert(0, FakeCard::t0());
        let xfr = |link: &mut Link| {
            link.transact(
                0,
                CommandBody::XfrBlock {
                    bwi: 0,
                    level_parameter: 0,
                    data: vec![0, 0xB2, 1, 4, 2],
                },
            )
        };
        link.transact(0, CommandBody::IccPowerOn { power_select: 1 })
            .unwrap();
        // 6 × 60 ms = 360 ms of work, with an answer timeout of 150 ms
        {
            let mut f = b.fake();
            f.time_requests = 6;
            f.te_every = Duration::from_millis(60);
        }
        let r = xfr(&mut link).unwrap();
        assert_eq!(r.data(), [1, 1, 0x90, 0x00]);
        // the same with CCID time extensions (T=1 style)
        {
            let mut f = b.fake();
            f.time_requests = 0;
            f.ccid_extensions = 6;
        }
        let r = xfr(&mut link).unwrap();
        assert_eq!(r.data(), [1, 1, 0x90, 0x00]);
        b.fake().ccid_extensions = 0;
        // without them, the same delay is a timeout
        {
            let mut f = b.fake();
            f.time_requests = 0;
            f.delay = Duration::from_millis(360);
        }
        let e = xfr(&mut link).unwrap_err();
        assert!(matches!(e, TransportError::Timeout(_)) && e.outcome_unknown());
        // the late answer, when it comes, is not taken for the next one
        b.fake().delay = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(300));
        let r = status(&mut link).unwrap();
        assert!(r.data().is_empty());
    }

    #[test]
    fn silence_is_a_timeout_and_a_stale_answer_is_skipped() {
        let (b, mut link) = Bench::new(Model::GemCorePosPro);
        link.ensure_open().unwrap();
        b.fake().silent_next = 1;
        assert!(matches!(status(&mut link), Err(TransportError::Timeout(_))));
        assert!(status(&mut link).is_ok());
    }

    #[test]
    fn a_vanished_port_is_io_then_no_reader_then_reopened() {
        let (b, mut link) = Bench::new(Model::GemPcTwin);
        link.ensure_open().unwrap();
        b.unplug();
        let e = status(&mut link).unwrap_err();
        assert!(
            matches!(e, TransportError::Io(_)) && e.outcome_unknown(),
            "{e}"
        );
        assert!(!link.is_open());
        assert!(matches!(
            status(&mut link),
            Err(TransportError::NoReader(_))
        ));
        b.plug();
        assert!(status(&mut link).is_ok());
        assert_eq!(link.epoch(), 2);
    }

    #[test]
    fn nothing_on_the_port_is_no_reader() {
        let (b, mut link) = Bench::with_timing(Model::GemPcTwin, quick());
        b.fake().silent_next = 1;
        assert!(matches!(
            link.ensure_open(),
            Err(TransportError::NoReader(_))
        ));
        assert!(!link.is_open());
    }
}
