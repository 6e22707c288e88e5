//! The T=1 block protocol (ISO/IEC 7816-3 §11), for readers that exchange TPDUs (every
//! GemPC Twin / GemCore serial reader: libccid drives T=1 on them with its own
//! `openct/proto-t1.c`, one block an XfrBlock).
//!
//! A block is `NAD ‖ PCB ‖ LEN ‖ INF ‖ EDC`; only the LRC epilogue (one byte, the XOR of
//! the others) is supported: a card whose ATR asks for a CRC (TC3 bit 1) is refused.
//!
//! - [`Block`], [`encode`] and [`decode`]: the three kinds of block (I, R, S). Decoding
//!   answers an error for whatever is no well-formed block, never panics.
//! - [`T1`]: the host's side of one card's exchange: N(S), N(R), IFSC and IFSD, reset
//!   at every power-on. [`T1::negotiate_ifsd`] sends S(IFS request) with IFSD 254 (what
//!   libccid does for these readers); [`T1::transceive`] carries one APDU whole (Le
//!   kept) in I-blocks, chained when it is longer than the card's IFSC, and takes the
//!   answer in the card's I-blocks, chained or not, acknowledging each with an R-block.
//! - A block that comes damaged (bad EDC, a length that does not match, a PCB that is
//!   no block) is answered with an R-block with the error bit (EDC or other), and an
//!   R-block of ours is sent again as it was (rule 7.2); a block of ours the card asks
//!   again is sent again. After [`RETRIES`] such errors in a row the host sends
//!   S(RESYNCH request) (up to three times) and the command fails with its outcome
//!   unknown ([`TransportError::Timeout`]): the card may have run it, so it is not
//!   sent again.
//! - S(WTX request) is answered with S(WTX response) and the block exchange that follows
//!   gets the multiplier (the reader's `bBWI`, and the host's read timeout stretched by
//!   it); S(IFS request) from the card changes the IFSC; S(ABORT request) ends the
//!   command (a resynchronisation, then an error).

use crate::transport::TransportError;
use zeroize::Zeroizing;

/// IFSC when the ATR gives none (ISO 7816-3 §11.4.2).
pub const DEFAULT_IFSC: u8 = 32;
/// The IFSD the host asks for (libccid's `dwMaxIFSD` for the serial readers).
pub const IFSD: u8 = 254;
/// Block errors in a row before a resynchronisation (libccid's `retries`).
pub const RETRIES: u32 = 3;
/// Waiting time extensions accepted for one command (a card that asks forever fails).
pub const MAX_WTX: u32 = 64;
/// The longest command APDU carried (a short APDU: header, Lc, 255 bytes, Le).
pub const MAX_COMMAND: usize = 261;
/// The longest answer taken (a short APDU answers at most 256 bytes and SW1 SW2).
const MAX_ANSWER: usize = 65_538;

/// An R-block's error bits (PCB b2 b1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RError {
    None,
    /// An EDC or parity error.
    Edc,
    /// Any other error (a bad length, a PCB that is no block, a wrong sequence number).
    Other,
}

/// The kind of an S-block (PCB b4..b1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SKind {
    Resynch,
    Ifs,
    Abort,
    Wtx,
}

/// One T=1 block (its NAD aside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// An information block: N(S), the more-data bit (chaining), the INF field.
    I { ns: bool, more: bool, inf: Vec<u8> },
    /// A receive-ready block: N(R) (the N(S) expected next) and the error bits.
    R { nr: bool, error: RError },
    /// A supervisory block: request or response; INF is one byte for IFS and WTX.
    S {
        kind: SKind,
        response: bool,
        inf: Vec<u8>,
    },
}

/// Why bytes are no block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("{0} bytes are no T=1 block (at least 4)")]
    Short(usize),
    #[error("LEN says {len} INF bytes, {got} came")]
    Length { len: usize, got: usize },
    #[error("LEN FF is not allowed")]
    LenFf,
    #[error("bad EDC (LRC)")]
    Edc,
    #[error("PCB {0:02X} with LEN {1} is no block")]
    Pcb(u8, usize),
}

impl BlockError {
    /// The error bits of the R-block that answers this.
    pub fn r_error(&self) -> RError {
        match self {
            BlockError::Edc => RError::Edc,
            _ => RError::Other,
        }
    }
}

/// The LRC epilogue of `bytes`.
pub fn lrc(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |x, b| x ^ b)
}

/// The PCB of `b` (ISO 7816-3 §11.3.2.2).
pub fn pcb(b: &Block) -> u8 {
    match b {
        Block::I { ns, more, .. } => (u8::from(*ns) << 6) | (u8::from(*more) << 5),
        Block::R { nr, error } => {
            0x80 | (u8::from(*nr) << 4)
                | match error {
                    RError::None => 0,
                    RError::Edc => 1,
                    RError::Other => 2,
                }
        }
        Block::S { kind, response, .. } => {
            0xC0 | (u8::from(*response) << 5)
                | match kind {
                    SKind::Resynch => 0,
                    SKind::Ifs => 1,
                    SKind::Abort => 2,
                    SKind::Wtx => 3,
                }
        }
    }
}

/// The bytes of `b` with `nad`, LRC last. An INF longer than 254 bytes is cut (no
/// caller builds one).
pub fn encode(nad: u8, b: &Block) -> Vec<u8> {
    let inf: &[u8] = match b {
        Block::I { inf, .. } | Block::S { inf, .. } => inf,
        Block::R { .. } => &[],
    };
    let inf = inf.get(..inf.len().min(254)).unwrap_or(&[]);
    let mut out = Vec::with_capacity(4 + inf.len());
    out.extend_from_slice(&[nad, pcb(b), inf.len() as u8]);
    out.extend_from_slice(inf);
    out.push(lrc(&out));
    out
}

/// The NAD and block in `raw` (LRC epilogue). Bytes after the epilogue are ignored, as
/// libccid does.
pub fn decode(raw: &[u8]) -> Result<(u8, Block), BlockError> {
    let [nad, pcb, len, ..] = *raw else {
        return Err(BlockError::Short(raw.len()));
    };
    if raw.len() < 4 {
        return Err(BlockError::Short(raw.len()));
    }
    if len == 0xFF {
        return Err(BlockError::LenFf);
    }
    let n = usize::from(len);
    let Some(block) = raw.get(..3 + n + 1) else {
        return Err(BlockError::Length {
            len: n,
            got: raw.len() - 4,
        });
    };
    if lrc(block) != 0 {
        return Err(BlockError::Edc);
    }
    let inf = block.get(3..3 + n).unwrap_or(&[]).to_vec();
    let b = match pcb {
        p if p & 0x80 == 0 => {
            if p & 0x1F != 0 {
                return Err(BlockError::Pcb(p, n));
            }
            Block::I {
                ns: p & 0x40 != 0,
                more: p & 0x20 != 0,
                inf,
            }
        }
        p if p & 0xC0 == 0x80 => {
            if p & 0x20 != 0 || n != 0 {
                return Err(BlockError::Pcb(p, n));
            }
            Block::R {
                nr: p & 0x10 != 0,
                error: match p & 0x0F {
                    0 => RError::None,
                    1 => RError::Edc,
                    _ => RError::Other,
                },
            }
        }
        p => {
            let kind = match p & 0x1F {
                0 => SKind::Resynch,
                1 => SKind::Ifs,
                2 => SKind::Abort,
                3 => SKind::Wtx,
                _ => return Err(BlockError::Pcb(p, n)),
            };
            let want = match kind {
                SKind::Ifs | SKind::Wtx => 1,
                SKind::Resynch | SKind::Abort => 0,
            };
            if n != want {
                return Err(BlockError::Pcb(p, n));
            }
            Block::S {
                kind,
                response: p & 0x20 != 0,
                inf,
            }
        }
    };
    Ok((nad, b))
}

/// Sends one block (its bytes) with a waiting time extension multiplier (0 for none)
/// and returns the card's block as it came (or an empty vector for a block lost to a
/// parity error, which is answered as a damaged block).
pub trait BlockIo {
    fn exchange(&mut self, block: &[u8], wtx: u8) -> Result<Vec<u8>, TransportError>;
}

impl<F: FnMut(&[u8], u8) -> Result<Vec<u8>, TransportError>> BlockIo for F {
    fn exchange(&mut self, block: &[u8], wtx: u8) -> Result<Vec<u8>, TransportError> {
        self(block, wtx)
    }
}

/// The host side of the block protocol with one card (one presentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct T1 {
    /// N(S) of our next I-block.
    pub ns: bool,
    /// N(S) expected in the card's next I-block.
    pub nr: bool,
    /// The card's information field size: our I-blocks carry at most this.
    pub ifsc: u8,
    /// Ours, as the card confirmed it.
    pub ifsd: u8,
    /// S(WTX) requests answered so far (for tests and logs).
    pub wtx_seen: u32,
    /// The card did not answer a resynchronisation: only a new power-on helps.
    pub dead: bool,
}

impl T1 {
    /// The state after a power-on, for a card with this IFSC (TA3; 0 and FF, which are
    /// not allowed, read as the default 32).
    pub fn new(ifsc: u8) -> T1 {
        T1 {
            ns: false,
            nr: false,
            ifsc: if ifsc == 0 || ifsc == 0xFF {
                DEFAULT_IFSC
            } else {
                ifsc
            },
            ifsd: DEFAULT_IFSC,
            wtx_seen: 0,
            dead: false,
        }
    }

    /// S(IFS request) with [`IFSD`], until the card confirms it (three tries).
    pub fn negotiate_ifsd(&mut self, io: &mut dyn BlockIo) -> Result<(), TransportError> {
        let ask = Block::S {
            kind: SKind::Ifs,
            response: false,
            inf: vec![IFSD],
        };
        let want = Block::S {
            kind: SKind::Ifs,
            response: true,
            inf: vec![IFSD],
        };
        for _ in 0..RETRIES {
            let raw = io.exchange(&encode(0, &ask), 0)?;
            match decode(&raw) {
                Ok((0, b)) if b == want => {
                    self.ifsd = IFSD;
                    return Ok(());
                }
                other => tracing::debug!("T=1: S(IFS request) answered {other:?}"),
            }
        }
        Err(TransportError::Protocol(format!(
            "T=1: the card did not confirm IFSD {IFSD}"
        )))
    }

    /// The I-block carrying `apdu` from `offset` (at most IFSC bytes), and its length.
    fn i_block(&self, apdu: &[u8], offset: usize) -> (Block, usize) {
        let rest = apdu.get(offset..).unwrap_or(&[]);
        let n = rest.len().min(usize::from(self.ifsc));
        (
            Block::I {
                ns: self.ns,
                more: n < rest.len(),
                inf: rest.get(..n).unwrap_or(&[]).to_vec(),
            },
            n,
        )
    }

    /// S(RESYNCH request) until the card answers it (three tries): N(S) and N(R) back
    /// to 0. Then the command fails, with `why`.
    fn resync(&mut self, io: &mut dyn BlockIo, why: &str) -> TransportError {
        let ask = encode(
            0,
            &Block::S {
                kind: SKind::Resynch,
                response: false,
                inf: Vec::new(),
            },
        );
        for _ in 0..RETRIES {
            match io.exchange(&ask, 0) {
                Ok(raw) => {
                    if let Ok((
                        0,
                        Block::S {
                            kind: SKind::Resynch,
                            response: true,
                            ..
                        },
                    )) = decode(&raw)
                    {
                        self.ns = false;
                        self.nr = false;
                        return TransportError::Timeout(format!(
                            "T=1: {why}; the card was resynchronised, the command's outcome is unknown"
                        ));
                    }
                }
                Err(e) => {
                    self.dead = true;
                    return e;
                }
            }
        }
        self.dead = true;
        TransportError::Timeout(format!(
            "T=1: {why}, and the card did not answer S(RESYNCH)"
        ))
    }

    /// Carry `apdu` (the whole command APDU, Le kept) to the card and return its whole
    /// answer (data and SW1 SW2).
    pub fn transceive(
        &mut self,
        apdu: &[u8],
        io: &mut dyn BlockIo,
    ) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        let mut offset = 0usize;
        let (mut to_send, mut last_len) = self.i_block(apdu, 0);
        let mut receiving = false;
        let mut answer = Zeroizing::new(Vec::new());
        let mut errors = 0u32;
        let mut wtx = 0u8;
        let mut wtxs = 0u32;
        loop {
            let raw = io.exchange(&encode(0, &to_send), wtx)?;
            wtx = 0;
            let block = match decode(&raw) {
                Ok((0, b)) => b,
                bad => {
                    let error = match &bad {
                        Err(e) => {
                            tracing::debug!("T=1: damaged block from the card: {e}");
                            e.r_error()
                        }
                        Ok((nad, _)) => {
                            tracing::debug!("T=1: a block with NAD {nad:02X}");
                            RError::Other
                        }
                    };
                    errors += 1;
                    if errors > RETRIES {
                        return Err(self.resync(io, "too many damaged blocks"));
                    }
                    // rule 7.2: an R-block of ours goes again as it was
                    if !matches!(to_send, Block::R { .. }) {
                        to_send = Block::R { nr: self.nr, error };
                    }
                    continue;
                }
            };
            match block {
                Block::S {
                    kind: SKind::Wtx,
                    response: false,
                    inf,
                } => {
                    wtxs += 1;
                    if wtxs > MAX_WTX {
                        return Err(self.resync(io, "the card asked for more time without end"));
                    }
                    self.wtx_seen += 1;
                    wtx = inf.first().copied().unwrap_or(1);
                    tracing::debug!(wtx, "T=1: the card asks for a waiting time extension");
                    to_send = Block::S {
                        kind: SKind::Wtx,
                        response: true,
                        inf,
                    };
                }
                Block::S {
                    kind: SKind::Ifs,
                    response: false,
                    inf,
                } => match inf.first() {
                    Some(&n) if n != 0 && n != 0xFF => {
                        self.ifsc = n;
                        to_send = Block::S {
                            kind: SKind::Ifs,
                            response: true,
                            inf,
                        };
                    }
                    _ => return Err(self.resync(io, "the card asked for an IFSC out of range")),
                },
                Block::S {
                    kind: SKind::Abort,
                    response: false,
                    ..
                } => return Err(self.resync(io, "the card aborted the command")),
                Block::S { .. } => {
                    // a response we did not ask for, or S(RESYNCH) from the card (which
                    // it may not send)
                    errors += 1;
                    if errors > RETRIES {
                        return Err(self.resync(io, "unexpected S-blocks from the card"));
                    }
                    if !matches!(to_send, Block::R { .. }) {
                        to_send = Block::R {
                            nr: self.nr,
                            error: RError::Other,
                        };
                    }
                }
                Block::R { nr, .. } => {
                    let chaining = offset + last_len < apdu.len();
                    if !receiving && chaining && nr != self.ns {
                        // our chained block acknowledged: the next one
                        self.ns = !self.ns;
                        offset += last_len;
                        errors = 0;
                        (to_send, last_len) = self.i_block(apdu, offset);
                        continue;
                    }
                    // the card asks for our last block again
                    errors += 1;
                    if errors > RETRIES {
                        return Err(self.resync(io, "the card kept asking for a block again"));
                    }
                    if !receiving {
                        (to_send, last_len) = self.i_block(apdu, offset);
                    }
                }
                Block::I { ns, more, inf } => {
                    if !receiving {
                        if offset + last_len < apdu.len() {
                            // an answer before the end of our chain
                            errors += 1;
                            if errors > RETRIES {
                                return Err(self.resync(io, "the card answered mid-chain"));
                            }
                            to_send = Block::R {
                                nr: self.nr,
                                error: RError::Other,
                            };
                            continue;
                        }
                        // the card's first I-block acknowledges our last one
                        self.ns = !self.ns;
                        offset += last_len;
                        last_len = 0;
                        receiving = true;
                    }
                    if ns != self.nr {
                        errors += 1;
                        if errors > RETRIES {
                            return Err(self.resync(io, "wrong N(S) from the card"));
                        }
                        to_send = Block::R {
                            nr: self.nr,
                            error: RError::Other,
                        };
                        continue;
                    }
                    self.nr = !self.nr;
                    errors = 0;
                    answer.extend_from_slice(&inf);
                    if answer.len() > MAX_ANSWER {
                        return Err(self.resync(io, "an answer longer than any APDU's"));
                    }
                    if !more {
                        return Ok(answer);
                    }
                    to_send = Block::R {
                        nr: self.nr,
                        error: RError::None,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn i(ns: bool, more: bool, inf: &[u8]) -> Block {
        Block::I {
            ns,
            more,
            inf: inf.to_vec(),
        }
    }

    fn r(nr: bool, error: RError) -> Block {
        Block::R { nr, error }
    }

    fn s(kind: SKind, response: bool, inf: &[u8]) -> Block {
        Block::S {
            kind,
            response,
            inf: inf.to_vec(),
        }
    }

    #[test]
    fn encoding_of_the_three_kinds() {
        assert_eq!(
            encode(0, &i(false, false, &h("00A40000"))),
            h("00 00 04 00A40000 A0")
        );
        assert_eq!(encode(0, &i(true, true, &[1])), h("00 60 01 01 60"));
        assert_eq!(encode(0, &r(true, RError::None)), h("00 90 00 90"));
        assert_eq!(encode(0, &r(false, RError::Edc)), h("00 81 00 81"));
        assert_eq!(encode(0, &r(true, RError::Other)), h("00 92 00 92"));
        // libccid's IFSD request at start, and the card's answer
        assert_eq!(
            encode(0, &s(SKind::Ifs, false, &[0xFE])),
            h("00 C1 01 FE 3E")
        );
        assert_eq!(
            encode(0, &s(SKind::Ifs, true, &[0xFE])),
            h("00 E1 01 FE 1E")
        );
        assert_eq!(encode(0, &s(SKind::Resynch, false, &[])), h("00 C0 00 C0"));
        assert_eq!(encode(0, &s(SKind::Wtx, true, &[2])), h("00 E3 01 02 E0"));
        for b in [
            i(false, false, &[]),
            i(true, true, &[9; 254]),
            r(false, RError::Other),
            s(SKind::Abort, true, &[]),
            s(SKind::Wtx, false, &[5]),
        ] {
            assert_eq!(decode(&encode(0, &b)), Ok((0, b.clone())));
        }
    }

    #[test]
    fn damaged_blocks_are_errors() {
        assert_eq!(decode(&[]), Err(BlockError::Short(0)));
        assert_eq!(decode(&h("00 00 00")), Err(BlockError::Short(3)));
        assert_eq!(decode(&h("00 00 FF 00")), Err(BlockError::LenFf));
        assert_eq!(
            decode(&h("00 00 05 01 02")),
            Err(BlockError::Length { len: 5, got: 1 })
        );
        assert_eq!(decode(&h("00 00 01 01 01")), Err(BlockError::Edc));
        // an R-block with INF, with b6 set; an S-block of type 4; S(WTX) without INF
        assert!(matches!(
            decode(&h("00 80 01 00 81")),
            Err(BlockError::Pcb(..))
        ));
        assert!(matches!(
            decode(&h("00 A0 00 A0")),
            Err(BlockError::Pcb(..))
        ));
        assert!(matches!(
            decode(&h("00 C4 00 C4")),
            Err(BlockError::Pcb(..))
        ));
        assert!(matches!(
            decode(&h("00 C3 00 C3")),
            Err(BlockError::Pcb(..))
        ));
        assert_eq!(BlockError::Edc.r_error(), RError::Edc);
        assert_eq!(BlockError::LenFf.r_error(), RError::Other);
        // trailing bytes after the epilogue are ignored
        assert_eq!(decode(&h("00 90 00 90 55")), Ok((0, r(true, RError::None))));
    }

    /// A scripted card: each exchange checks what the host sent and answers.
    struct Script {
        steps: VecDeque<(Block, u8, Vec<u8>)>,
    }

    impl Script {
        fn new() -> Script {
            Script {
                steps: VecDeque::new(),
            }
        }
        /// Expect `b` (with WTX `wtx`), answer `raw`.
        fn step(mut self, b: Block, wtx: u8, raw: Vec<u8>) -> Script {
            self.steps.push_back((b, wtx, raw));
            self
        }
        fn then(self, b: Block, answer: Block) -> Script {
            self.step(b, 0, encode(0, &answer))
        }
    }

    impl BlockIo for Script {
        fn exchange(&mut self, block: &[u8], wtx: u8) -> Result<Vec<u8>, TransportError> {
            let (want, want_wtx, answer) = self
                .steps
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected {}", hex::encode_upper(block)));
            assert_eq!(decode(block).unwrap(), (0, want));
            assert_eq!(wtx, want_wtx);
            Ok(answer)
        }
    }

    #[test]
    fn one_block_each_way_and_ifsd() {
        let mut t = T1::new(0xFE);
        let mut io = Script::new()
            .then(s(SKind::Ifs, false, &[254]), s(SKind::Ifs, true, &[254]))
            .then(
                i(false, false, &h("00B2010400")),
                i(false, false, &h("0102 9000")),
            )
            .then(i(true, false, &h("0084000008")), i(true, false, &h("9000")));
        t.negotiate_ifsd(&mut io).unwrap();
        assert_eq!(t.ifsd, 254);
        assert_eq!(
            *t.transceive(&h("00B2010400"), &mut io).unwrap(),
            h("01029000")
        );
        assert_eq!(*t.transceive(&h("0084000008"), &mut io).unwrap(), h("9000"));
        assert!(io.steps.is_empty());
        assert_eq!((t.ns, t.nr), (false, false));
    }

    #[test]
    fn chaining_both_ways() {
        let mut t = T1::new(4);
        let apdu = h("00A4040006 A00000000386 00");
        let answer: Vec<u8> = (0..10).collect();
        let mut io = Script::new()
            .then(i(false, true, &apdu[..4]), r(true, RError::None))
            .then(i(true, true, &apdu[4..8]), r(false, RError::None))
            .then(i(false, false, &apdu[8..]), i(false, true, &answer[..6]))
            .then(r(true, RError::None), i(true, false, &answer[6..]));
        assert_eq!(*t.transceive(&apdu, &mut io).unwrap(), answer);
        assert!(io.steps.is_empty());
        // three I-blocks sent, two received
        assert_eq!((t.ns, t.nr), (true, false));
    }

    #[test]
    fn a_damaged_answer_gets_an_r_block_and_is_sent_again() {
        let mut t = T1::new(32);
        let mut bad = encode(0, &i(false, false, &h("9000")));
        bad[3] ^= 0x20;
        let mut io = Script::new()
            .step(i(false, false, &h("00B2010400")), 0, bad)
            // the R-block asks for the card's block again
            .step(r(false, RError::Edc), 0, vec![0, 0, 5])
            // rule 7.2: our R-block again, as it was
            .then(r(false, RError::Edc), i(false, false, &h("9000")));
        assert_eq!(*t.transceive(&h("00B2010400"), &mut io).unwrap(), h("9000"));
        assert!(io.steps.is_empty());
    }

    #[test]
    fn the_card_asks_a_block_again() {
        let mut t = T1::new(32);
        let mut io = Script::new()
            .then(i(false, false, &[1, 2, 3, 4]), r(false, RError::Edc))
            .then(i(false, false, &[1, 2, 3, 4]), i(false, false, &h("9000")));
        assert_eq!(*t.transceive(&[1, 2, 3, 4], &mut io).unwrap(), h("9000"));
    }

    #[test]
    fn wtx_is_answered_with_the_multiplier_on_the_next_exchange() {
        let mut t = T1::new(32);
        let mut io = Script::new()
            .then(i(false, false, &[1, 2, 3, 4]), s(SKind::Wtx, false, &[3]))
            .step(
                s(SKind::Wtx, true, &[3]),
                3,
                encode(0, &i(false, false, &h("9000"))),
            )
            .then(i(true, false, &[1, 2, 3, 4]), i(true, false, &h("9000")));
        assert_eq!(*t.transceive(&[1, 2, 3, 4], &mut io).unwrap(), h("9000"));
        // the extension is for one exchange only
        assert_eq!(*t.transceive(&[1, 2, 3, 4], &mut io).unwrap(), h("9000"));
        assert_eq!(t.wtx_seen, 1);
    }

    #[test]
    fn ifs_request_from_the_card_changes_the_chunks() {
        let mut t = T1::new(32);
        let apdu: Vec<u8> = (0..40).collect();
        let mut io = Script::new()
            .then(i(false, true, &apdu[..32]), s(SKind::Ifs, false, &[5]))
            .then(s(SKind::Ifs, true, &[5]), r(true, RError::None))
            .then(i(true, true, &apdu[32..37]), r(false, RError::None))
            .then(i(false, false, &apdu[37..]), i(false, false, &h("9000")));
        assert_eq!(*t.transceive(&apdu, &mut io).unwrap(), h("9000"));
        assert_eq!(t.ifsc, 5);
    }

    #[test]
    fn three_errors_then_resynch_then_failure() {
        let mut t = T1::new(32);
        t.ns = true;
        t.nr = true;
        let bad = vec![0, 0, 1];
        let mut io = Script::new()
            .step(i(true, false, &[1, 2, 3, 4]), 0, bad.clone())
            .step(r(true, RError::Other), 0, bad.clone())
            .step(r(true, RError::Other), 0, bad.clone())
            .step(r(true, RError::Other), 0, bad)
            .then(s(SKind::Resynch, false, &[]), s(SKind::Resynch, true, &[]));
        let e = t.transceive(&[1, 2, 3, 4], &mut io).unwrap_err();
        assert!(e.outcome_unknown(), "{e}");
        assert!(io.steps.is_empty());
        assert_eq!((t.ns, t.nr), (false, false));
        // a card that does not answer S(RESYNCH) either
        let mut t = T1::new(32);
        let mut io = Script::new()
            .step(i(false, false, &[1]), 0, vec![])
            .step(r(false, RError::Other), 0, vec![])
            .step(r(false, RError::Other), 0, vec![])
            .step(r(false, RError::Other), 0, vec![])
            .step(s(SKind::Resynch, false, &[]), 0, vec![])
            .step(s(SKind::Resynch, false, &[]), 0, vec![])
            .step(s(SKind::Resynch, false, &[]), 0, vec![]);
        let e = t.transceive(&[1], &mut io).unwrap_err();
        assert!(e.to_string().contains("RESYNCH"), "{e}");
        assert!(t.dead);
    }

    #[test]
    fn an_unconfirmed_ifsd_fails() {
        let mut t = T1::new(32);
        let mut io = Script::new()
            .then(s(SKind::Ifs, false, &[254]), s(SKind::Ifs, true, &[32]))
            .step(s(SKind::Ifs, false, &[254]), 0, vec![1, 2])
            .then(s(SKind::Ifs, false, &[254]), r(false, RError::None));
        assert!(matches!(
            t.negotiate_ifsd(&mut io),
            Err(TransportError::Protocol(_))
        ));
        assert_eq!(t.ifsd, 32);
    }

    proptest! {
        #[test]
        fn decode_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((nad, block)) = decode(&b) {
                // what decodes encodes back to the same bytes
                let again = encode(nad, &block);
                prop_assert_eq!(&again[..], &b[..again.len()]);
            }
        }

        #[test]
        fn the_host_never_panics_on_any_answers(
            answers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..20),
            apdu in proptest::collection::vec(any::<u8>(), 1..80),
            ifsc in 1u8..=254,
        ) {
            let mut t = T1::new(ifsc);
            let mut answers: VecDeque<Vec<u8>> = answers.into();
            let mut io = |_: &[u8], _: u8| {
                answers.pop_front().ok_or_else(|| TransportError::Timeout("end".into()))
            };
            let _ = t.transceive(&apdu, &mut io);
        }
    }
}
