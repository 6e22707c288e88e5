//! The card's side of the T=1 block protocol (ISO/IEC 7816-3 §11), for the emulated
//! serial reader ([`crate::serial_reader`]): a slot whose protocol is T=1 hands every
//! XfrBlock's data here as one block, and sends back the block this answers.
//!
//! What the card does (blocks in [`sscard_driver::transport::serial::t1`]; LRC only):
//! - I-blocks from the host, chained (M bit) or not: each chained one acknowledged with
//!   R(N(R)), the last one makes the command APDU, run by the card;
//! - the answer in I-blocks of at most IFSD bytes (32 until the host's S(IFS request)),
//!   chained: the host's R-block with the next N(R) asks for the next one, an R-block
//!   with the N(S) of the last one (error bit or not) for that block again;
//! - a block with a bad EDC is answered with R(N(R), EDC error); one with a bad length
//!   (LEN that does not match, LEN FF, an INF longer than the card's IFSC), a PCB that
//!   is no block or a NAD other than 0 with R(N(R), other error); an I-block the card
//!   already took (the host did not get its R-block) is answered with the card's last
//!   block again;
//! - S(IFS request) (IFSD 1..254) answered S(IFS response), S(RESYNCH request)
//!   S(RESYNCH response) (N(S), N(R) to 0, IFSD back to 32, chains dropped), S(ABORT
//!   request) S(ABORT response) (chains dropped), S(WTX response) after the card's own
//!   S(WTX request) (the held answer then goes).

use sscard_driver::transport::serial::t1::{decode, encode, Block, RError, SKind, DEFAULT_IFSC};

/// What the block from the host makes the card do.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this block back.
    Send(Vec<u8>),
    /// A command APDU is complete: run it and give the answer to [`CardT1::answer`].
    Apdu(Vec<u8>),
}

/// N(S) and M of an I-block the card sent.
type ISent = (bool, bool);

/// The card's T=1 state for one power-on.
#[derive(Clone, Debug)]
pub struct CardT1 {
    /// N(S) of the card's next I-block.
    ns: bool,
    /// N(S) expected in the host's next I-block.
    nr: bool,
    /// The card's information field size (TA3): the longest INF it takes.
    ifsc: usize,
    /// The host's, as it set it.
    ifsd: usize,
    /// A chained command being received.
    rx: Vec<u8>,
    /// Answer bytes after the last I-block sent.
    tx: Vec<u8>,
    /// The last block sent (its bytes, intact), and, for an I-block, its N(S) and M.
    last: Option<(Vec<u8>, Option<ISent>)>,
    /// An answer held while the card's S(WTX request) waits for its response.
    held: bool,
}

impl CardT1 {
    /// The state after the ATR, for a card with this IFSC.
    pub fn new(ifsc: u8) -> CardT1 {
        CardT1 {
            ns: false,
            nr: false,
            ifsc: usize::from(if ifsc == 0 || ifsc == 0xFF {
                DEFAULT_IFSC
            } else {
                ifsc
            }),
            ifsd: usize::from(DEFAULT_IFSC),
            rx: Vec::new(),
            tx: Vec::new(),
            last: None,
            held: false,
        }
    }

    /// The host's IFSD as the card holds it.
    pub fn ifsd(&self) -> usize {
        self.ifsd
    }

    fn send(&mut self, b: Block) -> Step {
        let bytes = encode(0, &b);
        let i = match &b {
            Block::I { ns, more, .. } => Some((*ns, *more)),
            _ => None,
        };
        self.last = Some((bytes.clone(), i));
        Step::Send(bytes)
    }

    fn r(&self, error: RError) -> Step {
        // an error R-block is not remembered: a request to resend gets the block
        // before it
        Step::Send(encode(0, &Block::R { nr: self.nr, error }))
    }

    fn again(&self) -> Step {
        match &self.last {
            Some((b, _)) => Step::Send(b.clone()),
            None => self.r(RError::Other),
        }
    }

    /// The next I-block of the answer.
    fn next_i(&mut self) -> Step {
        let n = self.tx.len().min(self.ifsd);
        let inf: Vec<u8> = self.tx.drain(..n).collect();
        let b = Block::I {
            ns: self.ns,
            more: !self.tx.is_empty(),
            inf,
        };
        self.ns = !self.ns;
        self.send(b)
    }

    /// A block from the host.
    pub fn receive(&mut self, raw: &[u8]) -> Step {
        let (nad, b) = match decode(raw) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("T=1: damaged block from the host: {e}");
                return self.r(e.r_error());
            }
        };
        if nad != 0 {
            return self.r(RError::Other);
        }
        match b {
            Block::I { ns, more, inf } => {
                if inf.len() > self.ifsc {
                    return self.r(RError::Other);
                }
                if ns != self.nr {
                    // a block taken already: the host missed the answer to it
                    return self.again();
                }
                self.nr = !self.nr;
                self.held = false;
                self.tx.clear();
                self.rx.extend_from_slice(&inf);
                if more {
                    let nr = self.nr;
                    return self.send(Block::R {
                        nr,
                        error: RError::None,
                    });
                }
                Step::Apdu(std::mem::take(&mut self.rx))
            }
            Block::R { nr, .. } => match self.last {
                // the host acknowledges a chained I-block: the next one
                Some((_, Some((last_ns, true)))) if nr != last_ns => self.next_i(),
                _ => self.again(),
            },
            Block::S {
                kind,
                response: false,
                inf,
            } => match kind {
                SKind::Ifs => match inf.first() {
                    Some(&n) if n != 0 && n != 0xFF => {
                        self.ifsd = usize::from(n);
                        self.send(Block::S {
                            kind,
                            response: true,
                            inf,
                        })
                    }
                    _ => self.r(RError::Other),
                },
                SKind::Resynch => {
                    *self = CardT1 {
                        ifsc: self.ifsc,
                        ..CardT1::new(DEFAULT_IFSC)
                    };
                    self.send(Block::S {
                        kind,
                        response: true,
                        inf: Vec::new(),
                    })
                }
                SKind::Abort => {
                    self.rx.clear();
                    self.tx.clear();
                    self.held = false;
                    self.send(Block::S {
                        kind,
                        response: true,
                        inf: Vec::new(),
                    })
                }
                // the host may not ask for time
                SKind::Wtx => self.r(RError::Other),
            },
            Block::S {
                kind: SKind::Wtx,
                response: true,
                ..
            } if self.held => {
                self.held = false;
                self.next_i()
            }
            Block::S { .. } => self.r(RError::Other),
        }
    }

    /// The card's answer to the APDU of [`Step::Apdu`]: the first block to send (an
    /// S(WTX request) with this multiplier first when `wtx` is given).
    pub fn answer(&mut self, answer: Vec<u8>, wtx: Option<u8>) -> Vec<u8> {
        self.tx = answer;
        let step = match wtx {
            Some(m) => {
                self.held = true;
                self.send(Block::S {
                    kind: SKind::Wtx,
                    response: false,
                    inf: vec![m],
                })
            }
            None => self.next_i(),
        };
        match step {
            Step::Send(b) => b,
            Step::Apdu(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(ns: bool, more: bool, inf: &[u8]) -> Vec<u8> {
        encode(
            0,
            &Block::I {
                ns,
                more,
                inf: inf.to_vec(),
            },
        )
    }

    fn r(nr: bool, error: RError) -> Vec<u8> {
        encode(0, &Block::R { nr, error })
    }

    fn s(kind: SKind, response: bool, inf: &[u8]) -> Vec<u8> {
        encode(
            0,
            &Block::S {
                kind,
                response,
                inf: inf.to_vec(),
            },
        )
    }

    #[test]
    fn ifs_chaining_both_ways_and_errors() {
        let mut c = CardT1::new(4);
        assert_eq!(
            c.receive(&s(SKind::Ifs, false, &[3])),
            Step::Send(s(SKind::Ifs, true, &[3]))
        );
        // longer than IFSC: refused
        assert_eq!(
            c.receive(&i(false, false, &[1, 2, 3, 4, 5])),
            Step::Send(r(false, RError::Other))
        );
        assert_eq!(
            c.receive(&i(false, true, &[1, 2, 3, 4])),
            Step::Send(r(true, RError::None))
        );
        // a bad EDC
        let mut bad = i(true, false, &[5]);
        bad[3] ^= 1;
        assert_eq!(c.receive(&bad), Step::Send(r(true, RError::Edc)));
        assert_eq!(
            c.receive(&i(true, false, &[5])),
            Step::Apdu(vec![1, 2, 3, 4, 5])
        );
        let first = c.answer(vec![9, 8, 7, 6, 0x90, 0x00], None);
        assert_eq!(first, i(false, true, &[9, 8, 7]));
        // asked again (the host's R-block with the error bit), then the next one
        assert_eq!(c.receive(&r(false, RError::Edc)), Step::Send(first));
        assert_eq!(
            c.receive(&r(true, RError::None)),
            Step::Send(i(true, false, &[6, 0x90, 0x00]))
        );
        // a WTX request before an answer, the answer after the response
        assert_eq!(c.receive(&i(false, false, &[1])), Step::Apdu(vec![1]));
        assert_eq!(
            c.answer(vec![0x90, 0x00], Some(2)),
            s(SKind::Wtx, false, &[2])
        );
        assert_eq!(
            c.receive(&s(SKind::Wtx, true, &[2])),
            Step::Send(i(false, false, &[0x90, 0x00]))
        );
        // resynchronised
        assert_eq!(
            c.receive(&s(SKind::Resynch, false, &[])),
            Step::Send(s(SKind::Resynch, true, &[]))
        );
        assert_eq!(c.ifsd(), 32);
        assert_eq!(c.receive(&i(false, false, &[2])), Step::Apdu(vec![2]));
        // garbage is an R-block, never a panic
        for junk in [&[][..], &[0], &[0, 0xFF, 0, 0xFF], &[0, 0xC7, 0, 0xC7]] {
            assert!(matches!(c.receive(junk), Step::Send(_)));
        }
    }
}
