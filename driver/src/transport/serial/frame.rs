//! The GemPC Twin serial frame (LudovicRousseau/CCID `src/ccid_serial.c`).
//!
//! What travels on the line, in both directions:
//!
//! - a normal frame: `SYNC (03) ‖ CTRL ‖ CCID message ‖ LRC`, CTRL being `06` (ACK);
//!   the CCID message is a 10-byte header whose `dwLength` (bytes 1–4, little-endian)
//!   counts the data after it; the LRC is the XOR of every byte before it, SYNC and
//!   CTRL included;
//! - the error frame `03 15 16` (SYNC, NAK, its LRC): "resend your last frame".
//!   A reader that receives a frame with a wrong LRC answers with this frame alone (no
//!   echo first: libccid returns on the NAK before it looks for an echo). libccid
//!   replays the command on a NAK only for an Escape (`CmdEscapeCheck`, without a
//!   bound); for every other command a NAK is a communication error to it. libccid
//!   never sends a NAK itself;
//! - from the reader only, outside any frame: a card movement notification, the byte
//!   `50` (RDR_to_PC_NotifySlotChange) followed by one byte, `02` card absent or
//!   `03` card present (libccid logs any other value as an unknown movement and goes
//!   on). libccid sets the notification mode with the escape `01 01 01`
//!   ("synchronous": the movement is notified after the host's command and before the
//!   reader's answer), so a notification arrives only while libccid waits for an
//!   answer;
//! - from the reader only, outside any frame, T=0: a time request, one byte `80`…`FF`
//!   (libccid logs it and goes on waiting, with its read timeout started anew). With
//!   T=1 the reader asks for time with a normal CCID message instead, whose `bStatus`
//!   has the time-extension bit ([`super::ccid::CommandStatus::TimeExtension`]); that
//!   one is a [`Event::Message`] here.
//!
//! Readers with echo (GemPC Twin, GemPC PinPad) send each command frame back before the
//! answer; GemCore POS Pro, GemCore SIM Pro and SEC1210 do not. The echo is an ordinary
//! frame to this decoder; libccid reads it and drops it without comparing it.
//!
//! libccid itself only logs a received frame whose LRC is wrong and uses it anyway; this
//! decoder reports it ([`Event::BadLrc`]) so that the caller can NAK.

/// Start of every frame.
pub const SYNC: u8 = 0x03;
/// CTRL of a normal frame.
pub const ACK: u8 = 0x06;
/// CTRL of the error frame.
pub const NAK: u8 = 0x15;
/// The whole error frame: SYNC, NAK, LRC.
pub const NAK_FRAME: [u8; 3] = [SYNC, NAK, SYNC ^ NAK];
/// RDR_to_PC_NotifySlotChange: first byte of a card movement notification.
pub const NOTIFY_SLOT_CHANGE: u8 = 0x50;
/// Second byte of a notification: no card.
pub const CARD_ABSENT: u8 = 0x02;
/// Second byte of a notification: a card.
pub const CARD_PRESENT: u8 = 0x03;
/// Length of the CCID message header.
pub const HEADER_LEN: usize = 10;
/// The longest CCID message libccid sends or accepts on this link: its frame buffer
/// holds `(271 + 2 + 1) × 2` bytes (271 is the readers' `dwMaxCCIDMessageLength`, the
/// factor 2 room for the echo) and it refuses to write a message longer than that
/// buffer less SYNC, CTRL and LRC.
pub const MAX_MESSAGE_LEN: usize = (271 + 2 + 1) * 2 - 3;

/// XOR of `bytes`.
pub fn lrc(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// The frame carrying one CCID `message`: SYNC, ACK, the message, LRC.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(SYNC);
    out.push(ACK);
    out.extend_from_slice(message);
    out.push(lrc(&out));
    out
}

/// A card movement notification: `50 02` (absent) or `50 03` (present).
pub fn notification(present: bool) -> [u8; 2] {
    [
        NOTIFY_SLOT_CHANGE,
        if present { CARD_PRESENT } else { CARD_ABSENT },
    ]
}

/// What a notification says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotChange {
    /// `02`
    Absent,
    /// `03`
    Present,
    /// Any other byte (libccid: "Unknown card movement").
    Other(u8),
}

impl SlotChange {
    fn from_byte(b: u8) -> SlotChange {
        match b {
            CARD_ABSENT => SlotChange::Absent,
            CARD_PRESENT => SlotChange::Present,
            other => SlotChange::Other(other),
        }
    }
}

/// One thing read off the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A normal frame with a good LRC: the CCID message (header and data) it carries.
    Message(Vec<u8>),
    /// A normal frame whose LRC does not match: its message as received. The receiver
    /// answers [`NAK_FRAME`] so that the other side resends.
    BadLrc(Vec<u8>),
    /// The error frame `03 15 16`: resend the last frame.
    Nak,
    /// A card movement notification (`50 xx`).
    SlotChange(SlotChange),
    /// A T=0 time request (one byte `80`…`FF` between frames): the reader is still
    /// working; wait on.
    TimeExtension(u8),
    /// A byte that starts nothing known, skipped: noise, or the SYNC of a frame that
    /// could not be (a CTRL other than ACK/NAK, a NAK with a wrong LRC, a length over
    /// the limit). Decoding goes on with the next byte.
    Garbage(u8),
}

/// Incremental decoder: push what the line delivers, then take [`Event`]s until
/// [`Decoder::next_event`] says `None` (more bytes needed).
///
/// It never panics and never grows beyond one frame's worth plus what was pushed: a
/// header announcing more than [`Decoder::max_message`] bytes is garbage, and decoding
/// resynchronises on the next byte. A frame cut short (a byte lost on the line) waits
/// for bytes that will not come; on a read timeout the caller calls
/// [`Decoder::resync`] (or [`Decoder::clear`]).
#[derive(Clone, Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_message: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder accepting messages up to [`MAX_MESSAGE_LEN`] bytes.
    pub fn new() -> Decoder {
        Decoder::with_max_message(MAX_MESSAGE_LEN)
    }

    /// A decoder accepting messages (header included) up to `max_message` bytes (at
    /// least the header).
    pub fn with_max_message(max_message: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            max_message: max_message.max(HEADER_LEN),
        }
    }

    /// The longest message accepted.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Append bytes read from the line.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held, not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forget everything held.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Give up on the frame being assembled: its first byte becomes garbage and
    /// decoding restarts on the next one. `None` when nothing is held.
    pub fn resync(&mut self) -> Option<Event> {
        if self.buf.is_empty() {
            return None;
        }
        let b = self.buf.remove(0);
        Some(Event::Garbage(b))
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.buf.len());
        self.buf.drain(..n).collect()
    }

    fn garbage(&mut self) -> Option<Event> {
        self.resync()
    }

    /// The next event, or `None` until more bytes are pushed.
    pub fn next_event(&mut self) -> Option<Event> {
        let first = *self.buf.first()?;
        match first {
            SYNC => {
                let ctrl = *self.buf.get(1)?;
                match ctrl {
                    ACK => self.normal_frame(),
                    NAK => {
                        let l = *self.buf.get(2)?;
                        if l == SYNC ^ NAK {
                            self.take(3);
                            Some(Event::Nak)
                        } else {
                            self.garbage()
                        }
                    }
                    _ => self.garbage(),
                }
            }
            NOTIFY_SLOT_CHANGE => {
                let state = *self.buf.get(1)?;
                self.take(2);
                Some(Event::SlotChange(SlotChange::from_byte(state)))
            }
            b if b >= 0x80 => {
                self.take(1);
                Some(Event::TimeExtension(b))
            }
            _ => self.garbage(),
        }
    }

    fn normal_frame(&mut self) -> Option<Event> {
        // SYNC, CTRL, then bMessageType and dwLength
        let len_bytes = self.buf.get(3..7)?;
        let mut le = [0u8; 4];
        le.copy_from_slice(len_bytes);
        let data_len = u32::from_le_bytes(le) as usize;
        let message_len = match HEADER_LEN.checked_add(data_len) {
            Some(n) if n <= self.max_message => n,
            _ => return self.garbage(),
        };
        let total = 2 + message_len + 1;
        if self.buf.len() < total {
            return None;
        }
        let good = lrc(&self.buf[..total]) == 0;
        let mut frame = self.take(total);
        frame.truncate(total - 1);
        let message = frame.split_off(2);
        Some(if good {
            Event::Message(message)
        } else {
            Event::BadLrc(message)
        })
    }

    /// Every event the held bytes make now.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libccidtwin's first frame on a pty (shared/spec/test-stack.md): PC_to_RDR_Escape
    /// `02`, slot 0, bSeq 0.
    const FIRST: [u8; 14] = [
        0x03, 0x06, 0x6B, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x6D,
    ];

    #[test]
    fn encodes_libccids_first_frame() {
        assert_eq!(encode(&FIRST[2..13]), FIRST);
        assert_eq!(NAK_FRAME, [0x03, 0x15, 0x16]);
        assert_eq!(notification(false), [0x50, 0x02]);
        assert_eq!(notification(true), [0x50, 0x03]);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut d = Decoder::new();
        for (i, b) in FIRST.iter().enumerate() {
            assert_eq!(d.next_event(), None, "at byte {i}");
            d.push(&[*b]);
        }
        assert_eq!(d.next_event(), Some(Event::Message(FIRST[2..13].to_vec())));
        assert_eq!(d.next_event(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn notifications_time_requests_nak_and_garbage() {
        let mut d = Decoder::new();
        d.push(&[0x00, 0x42, 0x50, 0x02, 0x80, 0xFF, 0x50, 0x03, 0x50, 0x07]);
        d.push(&NAK_FRAME);
        d.push(&FIRST);
        assert_eq!(
            d.drain_events(),
            vec![
                Event::Garbage(0x00),
                Event::Garbage(0x42),
                Event::SlotChange(SlotChange::Absent),
                Event::TimeExtension(0x80),
                Event::TimeExtension(0xFF),
                Event::SlotChange(SlotChange::Present),
                Event::SlotChange(SlotChange::Other(0x07)),
                Event::Nak,
                Event::Message(FIRST[2..13].to_vec()),
            ]
        );
    }

    #[test]
    fn bad_lrc_is_reported_whole() {
        let mut f = FIRST;
        f[13] ^= 0x01;
        let mut d = Decoder::new();
        d.push(&f);
        d.push(&FIRST);
        assert_eq!(d.next_event(), Some(Event::BadLrc(FIRST[2..13].to_vec())));
        assert_eq!(d.next_event(), Some(Event::Message(FIRST[2..13].to_vec())));
    }

    #[test]
    fn resynchronises_after_false_syncs() {
        let mut d = Decoder::new();
        // a SYNC with a bad CTRL, a NAK with a bad LRC, then a header announcing 4 GB
        d.push(&[0x03, 0x07, 0x03, 0x15, 0x17]);
        d.push(&[0x03, 0x06, 0x80, 0xFF, 0xFF, 0xFF, 0xFF]);
        d.push(&FIRST);
        let ev = d.drain_events();
        assert_eq!(ev.last(), Some(&Event::Message(FIRST[2..13].to_vec())));
        assert!(ev[..ev.len() - 1]
            .iter()
            .all(|e| matches!(e, Event::Garbage(_) | Event::TimeExtension(_))));
    }

    #[test]
    fn a_frame_cut_short_waits_then_resyncs() {
        let mut d = Decoder::new();
        // one byte of the first frame lost: the decoder waits for it
        d.push(&FIRST[..5]);
        d.push(&FIRST[6..]);
        assert_eq!(d.next_event(), None);
        // the caller's read timeout: give up on it, the next frame decodes
        assert_eq!(d.resync(), Some(Event::Garbage(SYNC)));
        d.push(&FIRST);
        let ev = d.drain_events();
        assert_eq!(ev.last(), Some(&Event::Message(FIRST[2..13].to_vec())));
        assert_eq!(Decoder::new().resync(), None);
    }

    #[test]
    fn the_length_limit_holds() {
        let mut d = Decoder::with_max_message(12);
        let msg = [0x6F, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3];
        d.push(&encode(&msg));
        assert_eq!(d.next_event(), Some(Event::Garbage(SYNC)));
        let mut d = Decoder::with_max_message(13);
        d.push(&encode(&msg));
        assert_eq!(d.next_event(), Some(Event::Message(msg.to_vec())));
        assert_eq!(Decoder::with_max_message(0).max_message(), HEADER_LEN);
    }
}
