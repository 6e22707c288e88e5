//! A serial CCID reader and its slots as [`CardTransport`]s.
//!
//! [`SerialReader`] owns the [`Link`] to the port (behind a mutex: the slots of a
//! GemCore POS Pro share the port and one `bSeq` counter) and what it knows of each
//! slot's card; [`SerialSlot`] is one slot, a [`CardTransport`] like a PC/SC card
//! handle. The card is powered on (IccPowerOn, 5 V first then 3 V and 1.8 V), its ATR
//! parsed and a protocol chosen: T=0 when the card offers it first (or offers no T=1),
//! else T=1. A PPS is sent when the card offers a faster rate in negotiable mode and
//! the reader supports it (for T=1 also when T=1 is not the card's first protocol), the
//! reader is told the parameters (SetParameters T=0 or T=1, as libccid), and APDUs are
//! carried as T=0 TPDUs ([`super::tpdu`]) or whole in T=1 blocks ([`super::t1`], after
//! an S(IFS request) for IFSD 254 at every power-on; the T=1 state lives as long as the
//! card's power).
//!
//! Presence comes from the card movement notices the link records and from
//! GetSlotStatus, asked at every [`CardTransport::begin`] and
//! [`CardTransport::status`]. A card that went away, lost power (the port was reopened,
//! the reader unplugged) or was powered anew (by another handle's reset) ends the
//! presentation the handle knew: `status` then says no card until [`CardTransport::reset`]
//! or [`CardTransport::reattach`], and the next `begin` powers the card there on and
//! says so ([`RawTransaction::new_presentation`]), as the PC/SC backend does after
//! `SCARD_W_REMOVED_CARD`.

use super::ccid::{error, CommandBody, IccStatus, Response, ResponseBody};
use super::link::{Link, Timing};
use super::model::Model;
use super::t1::{self, T1};
use super::tpdu;
use crate::atr::{Atr, Convention};
use crate::status::StatusWord;
use crate::transport::pinpad::{self, PadRequest};
use crate::transport::{
    Capabilities, CardStatus, CardTransport, Protocol, RawTransaction, TransportError,
};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// The reader's clock (libccid's `dwDefaultClock` for these readers: 4 MHz).
const CLOCK_HZ: u64 = 4_000_000;

/// A card powered on by us.
#[derive(Clone, Debug)]
struct Powered {
    /// The link's epoch at power-on: a reopened port means the card lost power.
    epoch: u64,
    /// The slot's notice count at power-on: a movement since ends the presentation.
    notices: u64,
    atr: Vec<u8>,
    protocol: Protocol,
    /// The T=1 state (N(S), N(R), IFSC, IFSD) of a card in T=1.
    t1: Option<T1>,
}

#[derive(Clone, Debug, Default)]
struct SlotState {
    power: Option<Powered>,
    /// Goes up at every power-on: a handle that knew another generation knew another
    /// presentation of the card.
    generation: u64,
}

struct Shared {
    link: Link,
    slots: Vec<SlotState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding the lock leaves a link that is still usable
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn reader_error(what: &str, r: &Response) -> TransportError {
    TransportError::Protocol(format!(
        "the reader failed {what}: bStatus {:02X}, bError {:02X}",
        r.status.0, r.error
    ))
}

impl Shared {
    fn slot_mut(&mut self, slot: u8) -> Result<&mut SlotState, TransportError> {
        self.slots
            .get_mut(slot as usize)
            .ok_or_else(|| TransportError::NoReader(format!("no slot {slot}")))
    }

    /// Forget the card powered in `slot`.
    fn invalidate(&mut self, slot: u8) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.power = None;
        }
    }

    /// Whether the card powered in `slot` is, as far as the link knows, still the one
    /// powered (same epoch, no movement since); forgets it if not.
    fn still_powered(&mut self, slot: u8) -> bool {
        let epoch = self.link.epoch();
        let changes = self.link.notices(slot).changes;
        let open = self.link.is_open();
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        let same = s
            .power
            .as_ref()
            .is_some_and(|p| open && p.epoch == epoch && p.notices == changes);
        if !same {
            s.power = None;
        }
        same
    }

    /// GetSlotStatus, and what it means for the card we powered.
    fn check(&mut self, slot: u8) -> Result<IccStatus, TransportError> {
        let r = self.transact(slot, CommandBody::GetSlotStatus)?;
        let icc = r.status.icc();
        if r.failed() && icc != IccStatus::Absent {
            return Err(reader_error("GetSlotStatus", &r));
        }
        if !self.still_powered(slot) || icc != IccStatus::PresentActive {
            self.invalidate(slot);
        }
        Ok(icc)
    }

    fn transact(&mut self, slot: u8, body: CommandBody) -> Result<Response, TransportError> {
        let answer = self.link.timing().answer;
        self.transact_for(slot, body, answer)
    }

    /// [`Shared::transact`] with another answer timeout; a port lost on the way
    /// unpowers every slot.
    fn transact_for(
        &mut self,
        slot: u8,
        body: CommandBody,
        answer: Duration,
    ) -> Result<Response, TransportError> {
        let r = self.link.transact_for(slot, body, answer);
        if matches!(r, Err(TransportError::Io(_))) {
            for s in &mut self.slots {
                s.power = None;
            }
        }
        r
    }

    /// Power the card in `slot` on (a cold reset if it was powered), and set it up for
    /// T=0. Returns the ATR.
    fn power_on(&mut self, slot: u8) -> Result<Vec<u8>, TransportError> {
        self.invalidate(slot);
        let mut answer = None;
        // 5 V, 3 V, 1.8 V (bPowerSelect 1, 2, 3), as libccid does without automatic
        // voltage selection
        for voltage in 1..=3u8 {
            let r = self.transact(
                slot,
                CommandBody::IccPowerOn {
                    power_select: voltage,
                },
            )?;
            if !r.failed() {
                answer = Some(r);
                break;
            }
            if r.status.icc() == IccStatus::Absent {
                return Err(TransportError::NoCard);
            }
            match r.error {
                error::ICC_MUTE | error::ICC_CLASS_NOT_SUPPORTED if voltage < 3 => continue,
                error::ICC_MUTE => {
                    return Err(TransportError::Timeout("the card gives no ATR".into()))
                }
                _ => return Err(reader_error("IccPowerOn", &r)),
            }
        }
        let Some(r) = answer else {
            return Err(TransportError::Timeout("the card gives no ATR".into()));
        };
        if !matches!(r.body, ResponseBody::DataBlock { .. }) {
            return Err(reader_error("IccPowerOn (no DataBlock)", &r));
        }
        let atr = r.data().to_vec();
        let parsed = match Atr::parse(&atr) {
            Ok(a) => Some(a),
            Err(e) => {
                // real cards send malformed ATRs (a wrong TCK, trailing bytes): talk
                // T=0 at the default rate to them, as a reader would
                tracing::warn!(atr = %hex::encode_upper(&atr), "malformed ATR: {e}");
                None
            }
        };
        let protocols = parsed
            .as_ref()
            .map_or_else(|| vec![Protocol::T0], |a| a.protocols());
        let specific = parsed.as_ref().and_then(|a| a.specific_mode());
        // T=0 when it comes first (or there is no T=1), else T=1
        let protocol = match specific {
            Some((0, _)) => Some(Protocol::T0),
            Some((1, _)) => Some(Protocol::T1),
            Some(_) => None,
            None => match protocols.first() {
                Some(Protocol::T0) => Some(Protocol::T0),
                _ if protocols.contains(&Protocol::T1) => Some(Protocol::T1),
                _ if protocols.contains(&Protocol::T0) => Some(Protocol::T0),
                _ => None,
            },
        };
        let crc = parsed.as_ref().is_some_and(|a| a.t1_crc());
        let refused = match protocol {
            None => Some("the card speaks neither T=0 nor T=1"),
            Some(Protocol::T1) if crc => {
                Some("the card asks for a CRC epilogue in T=1 (only the LRC is supported)")
            }
            _ => None,
        };
        if let Some(why) = refused {
            let _ = self.transact(slot, CommandBody::IccPowerOff);
            return Err(TransportError::Protocol(why.into()));
        }
        let mut t1_state = None;
        match (protocol, &parsed) {
            (Some(Protocol::T1), Some(a)) => {
                let fidi = self.negotiate(slot, a, 1)?;
                self.set_parameters_t1(slot, fidi, a)?;
                let mut t = T1::new(a.ifsc());
                let mut io = |block: &[u8], wtx: u8| self.xfr_block(slot, block, wtx);
                if let Err(e) = t.negotiate_ifsd(&mut io) {
                    let _ = self.transact(slot, CommandBody::IccPowerOff);
                    return Err(e);
                }
                t1_state = Some(t);
            }
            _ => {
                let fidi = match &parsed {
                    Some(a) => self.negotiate(slot, a, 0)?,
                    None => 0x11,
                };
                self.set_parameters_t0(slot, fidi, parsed.as_ref())?;
            }
        }
        let epoch = self.link.epoch();
        let notices = self.link.notices(slot).changes;
        let s = self.slot_mut(slot)?;
        s.power = Some(Powered {
            epoch,
            notices,
            atr: atr.clone(),
            protocol: if t1_state.is_some() {
                Protocol::T1
            } else {
                Protocol::T0
            },
            t1: t1_state,
        });
        s.generation += 1;
        Ok(atr)
    }

    /// The Fi/Di to use for protocol `t` (0 or 1): the card's own in specific mode;
    /// TA1's after a successful PPS in negotiable mode when it is faster than the
    /// default and the reader can go that fast; else the default `11`. For T=1 a PPS
    /// also selects T=1 when it is not the card's first protocol (as libccid does).
    fn negotiate(&mut self, slot: u8, atr: &Atr, t: u8) -> Result<u8, TransportError> {
        let ta1 = atr.ta1();
        if let Some((_, explicit)) = atr.specific_mode() {
            return Ok(if explicit { ta1 } else { 0x11 });
        }
        let fast_enough = atr
            .fi()
            .zip(atr.di())
            .map(|(f, d)| CLOCK_HZ * u64::from(d) / u64::from(f))
            .is_some_and(|rate| rate <= u64::from(self.link.model().max_data_rate()));
        let faster = ta1 != 0x11 && fast_enough;
        let other_protocol = t != 0 && atr.protocol_numbers().first() != Some(&t);
        if !faster && !other_protocol {
            return Ok(0x11);
        }
        // PPSS, PPS0 (PPS1 follows if faster, the protocol), PPS1 = TA1, PCK
        let mut pps = if faster {
            vec![0xFF, 0x10 | t, ta1]
        } else {
            vec![0xFF, t]
        };
        pps.push(pps.iter().fold(0, |x, b| x ^ b));
        let r = self.transact(
            slot,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 4,
                data: pps.clone(),
            },
        )?;
        if !r.failed() && r.data() == pps.as_slice() {
            return Ok(if faster { ta1 } else { 0x11 });
        }
        // a refused PPS leaves the card waiting for a reset (ISO 7816-3 §9.1)
        tracing::debug!(
            ta1,
            "PPS refused: the card is reset and used at the default rate"
        );
        let r = self.transact(slot, CommandBody::IccPowerOn { power_select: 1 })?;
        if r.failed() {
            return Err(reader_error("IccPowerOn after a refused PPS", &r));
        }
        Ok(0x11)
    }

    /// SetParameters T=1 (CCID §6.1.7, as libccid): Fi/Di, bmTCCKST1 `10` with the
    /// convention bit (LRC), TC1 as the guard time, TB3 as BWI/CWI (default `4D`), no
    /// clock stop, IFSC (TA3, default 32), NAD 0. A reader that cannot change a
    /// parameter keeps its own, as for T=0.
    fn set_parameters_t1(&mut self, slot: u8, fidi: u8, atr: &Atr) -> Result<(), TransportError> {
        let inverse = atr.convention == Convention::Inverse;
        let data = vec![
            fidi,
            0x10 | if inverse { 0x02 } else { 0x00 },
            atr.extra_guard_time(),
            atr.tb_t1().unwrap_or(0x4D),
            0x00,
            T1::new(atr.ifsc()).ifsc,
            0x00,
        ];
        let r = self.transact(slot, CommandBody::SetParameters { protocol: 1, data })?;
        if r.failed() && r.error >= 0x80 {
            if r.status.icc() == IccStatus::Absent {
                return Err(TransportError::NoCard);
            }
            return Err(reader_error("SetParameters T=1", &r));
        }
        Ok(())
    }

    /// One T=1 block to the card in `slot` and the card's block back, the answer
    /// timeout stretched by a waiting time extension (`wtx`, 0 for none). A parity
    /// error is an empty block (answered as a damaged one).
    fn xfr_block(&mut self, slot: u8, block: &[u8], wtx: u8) -> Result<Vec<u8>, TransportError> {
        let answer = self
            .link
            .timing()
            .answer
            .saturating_mul(u32::from(wtx.max(1)));
        let r = self.transact_for(
            slot,
            CommandBody::XfrBlock {
                bwi: wtx,
                level_parameter: 0,
                data: block.to_vec(),
            },
            answer,
        )?;
        if r.failed() {
            return Err(match (r.status.icc(), r.error) {
                (IccStatus::Absent | IccStatus::PresentInactive, _) => {
                    self.invalidate(slot);
                    TransportError::CardRemoved
                }
                (_, error::XFR_PARITY_ERROR) => return Ok(Vec::new()),
                (_, error::ICC_MUTE) => {
                    self.invalidate(slot);
                    TransportError::Timeout("the card did not answer".into())
                }
                (_, error::XFR_OVERRUN) => {
                    self.invalidate(slot);
                    TransportError::NoResponse
                }
                (_, error::CMD_SLOT_BUSY) => TransportError::Busy,
                _ => reader_error("XfrBlock", &r),
            });
        }
        match r.body {
            ResponseBody::DataBlock { data, .. } => Ok(data),
            _ => Err(reader_error("XfrBlock (no DataBlock)", &r)),
        }
    }

    /// SetParameters T=0: Fi/Di, convention, extra guard time (TC1), WI (TC2), no
    /// clock stop. A reader that cannot change a parameter (bError 1..127) or does not
    /// support the command (bError 0) keeps its own, as libccid allows.
    fn set_parameters_t0(
        &mut self,
        slot: u8,
        fidi: u8,
        atr: Option<&Atr>,
    ) -> Result<(), TransportError> {
        let inverse = atr.is_some_and(|a| a.convention == Convention::Inverse);
        let data = vec![
            fidi,
            if inverse { 0x02 } else { 0x00 },
            atr.map_or(0, |a| a.extra_guard_time()),
            atr.map_or(10, |a| a.wi()),
            0x00,
        ];
        let r = self.transact(slot, CommandBody::SetParameters { protocol: 0, data })?;
        if r.failed() && r.error >= 0x80 {
            if r.status.icc() == IccStatus::Absent {
                return Err(TransportError::NoCard);
            }
            return Err(reader_error("SetParameters", &r));
        }
        Ok(())
    }
}

/// A slot as [`SerialReader::poll`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPresence {
    pub slot: u8,
    pub present: bool,
    /// The ATR of the card if we powered it (empty for a card not powered yet).
    pub atr: Vec<u8>,
}

/// A serial reader on one port, with its slots.
pub struct SerialReader {
    shared: Arc<Mutex<Shared>>,
    busy: Vec<Arc<Mutex<()>>>,
    path: String,
    model: Model,
}

impl SerialReader {
    /// Open the reader at `path` (a tty, a USB-serial bridge, a pseudo-terminal) and
    /// check that a reader answers there: [`TransportError::NoReader`] if the path is
    /// not there or nothing answers the firmware version request.
    pub fn open(path: &str, model: Model) -> Result<SerialReader, TransportError> {
        Self::open_with(path, model, Timing::default())
    }

    /// [`SerialReader::open`] with other timeouts.
    pub fn open_with(
        path: &str,
        model: Model,
        timing: Timing,
    ) -> Result<SerialReader, TransportError> {
        let r = Self::from_link(Link::serial(path, model, timing));
        r.reopen()?;
        Ok(r)
    }

    /// A reader on an unopened link (the port is opened at its first use).
    pub fn from_link(link: Link) -> SerialReader {
        let model = link.model();
        let path = link.path().to_string();
        SerialReader {
            busy: (0..model.slots()).map(|_| Arc::default()).collect(),
            shared: Arc::new(Mutex::new(Shared {
                link,
                slots: vec![SlotState::default(); model.slots() as usize],
            })),
            path,
            model,
        }
    }

    /// Close the port and open it again, running the reader's start-up: after the
    /// device was unplugged and plugged in again (every card in it lost power). Slots
    /// need not call it: their next call opens a port that went away.
    pub fn reopen(&self) -> Result<(), TransportError> {
        let mut sh = lock(&self.shared);
        sh.link.close();
        for s in &mut sh.slots {
            s.power = None;
        }
        sh.link.ensure_open()
    }

    /// Whether the port is open (false after it failed, until the next use).
    pub fn is_open(&self) -> bool {
        lock(&self.shared).link.is_open()
    }

    /// The firmware version the reader gave when the port was last opened.
    pub fn firmware(&self) -> String {
        lock(&self.shared).link.firmware().to_string()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// Number of slots.
    pub fn slots(&self) -> u8 {
        self.model.slots()
    }

    /// Every slot's presence, as GetSlotStatus and the notices say now (the port opened
    /// again if it had gone away): what a monitor polls. The ATR is there for the cards
    /// we powered.
    pub fn poll(&self) -> Result<Vec<SlotPresence>, TransportError> {
        let mut sh = lock(&self.shared);
        (0..self.model.slots())
            .map(|slot| {
                let icc = sh.check(slot)?;
                let atr = sh
                    .slot_mut(slot)?
                    .power
                    .as_ref()
                    .map(|p| p.atr.clone())
                    .unwrap_or_default();
                Ok(SlotPresence {
                    slot,
                    present: matches!(icc, IccStatus::PresentActive | IccStatus::PresentInactive),
                    atr,
                })
            })
            .collect()
    }

    /// A handle on `slot`, without touching the card.
    pub fn slot(&self, slot: u8) -> Result<SerialSlot, TransportError> {
        let busy = self
            .busy
            .get(slot as usize)
            .ok_or_else(|| TransportError::NoReader(format!("{} has no slot {slot}", self.model)))?
            .clone();
        Ok(SerialSlot {
            shared: self.shared.clone(),
            busy,
            slot,
            model: self.model,
            name: format!("{} {} slot {slot}", self.model, self.path),
            seen: None,
        })
    }

    /// A handle on the card in `slot`, as a PC/SC connect: the card is taken up (as it
    /// is if we powered it already, else powered on); [`TransportError::NoCard`] if
    /// the slot is empty.
    pub fn connect(&self, slot: u8) -> Result<SerialSlot, TransportError> {
        let mut s = self.slot(slot)?;
        s.reattach()?;
        Ok(s)
    }
}

/// One slot of a [`SerialReader`]: a [`CardTransport`].
pub struct SerialSlot {
    shared: Arc<Mutex<Shared>>,
    busy: Arc<Mutex<()>>,
    slot: u8,
    model: Model,
    name: String,
    /// The generation of the card at this handle's last transaction, reset or reattach.
    seen: Option<u64>,
}

impl SerialSlot {
    /// The slot number on the reader.
    pub fn index(&self) -> u8 {
        self.slot
    }

    fn take_up(&mut self, reset: bool) -> Result<Vec<u8>, TransportError> {
        let mut sh = lock(&self.shared);
        match sh.check(self.slot)? {
            IccStatus::Absent => return Err(TransportError::NoCard),
            IccStatus::Rfu => {
                return Err(TransportError::Protocol(
                    "the reader reports an RFU slot state".into(),
                ))
            }
            IccStatus::PresentActive | IccStatus::PresentInactive => {}
        }
        let slot = sh.slot_mut(self.slot)?;
        let atr = match (&slot.power, reset) {
            (Some(p), false) => p.atr.clone(),
            _ => {
                if reset {
                    let _ = sh.transact(self.slot, CommandBody::IccPowerOff);
                }
                sh.power_on(self.slot)?
            }
        };
        self.seen = Some(sh.slot_mut(self.slot)?.generation);
        Ok(atr)
    }
}

struct SerialTransaction<'a> {
    handle: &'a SerialSlot,
    _busy: MutexGuard<'a, ()>,
    generation: u64,
    new_presentation: bool,
}

impl SerialTransaction<'_> {
    fn fail_card(&self, sh: &mut Shared) -> TransportError {
        sh.invalidate(self.handle.slot);
        TransportError::CardRemoved
    }
}

impl SerialTransaction<'_> {
    /// The APDU whole in T=1 blocks, with the slot's T=1 state.
    fn transmit_t1(
        &mut self,
        sh: &mut Shared,
        mut state: T1,
        command: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let slot = self.handle.slot;
        let r = {
            let mut io = |block: &[u8], wtx: u8| sh.xfr_block(slot, block, wtx);
            state.transceive(command, &mut io)
        };
        // a movement notice during the command: whatever the answer says, the card
        // this transaction was on is not there as it was
        if !sh.still_powered(slot) {
            return Err(self.fail_card(sh));
        }
        match r {
            Ok(answer) => {
                if let Some(p) = sh.slot_mut(slot)?.power.as_mut() {
                    p.t1 = Some(state);
                }
                if answer.len() < 2 {
                    return Err(TransportError::NoResponse);
                }
                Ok(answer.to_vec())
            }
            Err(e) => {
                // the block exchange failed: the state is that of the
                // resynchronisation, or, when the card did not resynchronise, it is
                // powered anew at the next transaction
                if state.dead {
                    sh.invalidate(slot);
                } else if let Some(p) = sh.slot_mut(slot)?.power.as_mut() {
                    p.t1 = Some(state);
                }
                Err(e)
            }
        }
    }
}

impl SerialTransaction<'_> {
    /// The card of this transaction, still the one powered: its T=1 state if in T=1.
    fn current(&self, sh: &mut Shared) -> Result<Option<T1>, TransportError> {
        let slot = self.handle.slot;
        let same = sh
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.generation == self.generation && s.power.is_some());
        if !same || !sh.still_powered(slot) {
            return Err(self.fail_card(sh));
        }
        Ok(sh
            .slots
            .get(slot as usize)
            .and_then(|s| s.power.as_ref())
            .and_then(|p| p.t1.clone()))
    }

    /// The card's answer to a PIN entry in T=1: the I-block the reader returns (after
    /// an S(WTX) the card asked, answered). Anything else leaves the block protocol
    /// out of step: the card is powered anew at the next transaction.
    fn pad_answer_t1(
        &mut self,
        sh: &mut Shared,
        mut state: T1,
        mut block: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let slot = self.handle.slot;
        for _ in 0..8 {
            match t1::decode(&block) {
                Ok((
                    0,
                    t1::Block::I {
                        ns,
                        more: false,
                        inf,
                    },
                )) if ns == state.nr && inf.len() >= 2 => {
                    state.ns = !state.ns;
                    state.nr = !state.nr;
                    if let Some(p) = sh.slot_mut(slot)?.power.as_mut() {
                        p.t1 = Some(state);
                    }
                    return Ok(inf);
                }
                Ok((
                    0,
                    t1::Block::S {
                        kind: t1::SKind::Wtx,
                        response: false,
                        inf,
                    },
                )) => {
                    let wtx = inf.first().copied().unwrap_or(1);
                    let answer = t1::Block::S {
                        kind: t1::SKind::Wtx,
                        response: true,
                        inf,
                    };
                    block = sh.xfr_block(slot, &t1::encode(0, &answer), wtx)?;
                }
                other => {
                    tracing::debug!("T=1: a PIN entry answered {other:?}");
                    break;
                }
            }
        }
        sh.invalidate(slot);
        Err(TransportError::Protocol(
            "T=1: the card's answer to the PIN entry was no I-block; its outcome is unknown".into(),
        ))
    }
}

impl RawTransaction for SerialTransaction<'_> {
    /// `PC_to_RDR_Secure` (CCID §6.1.11): the reader prompts, the holder types, the
    /// reader sends the card the filled APDU (in T=1 as an I-block with the prologue
    /// given here) and returns its answer; cancel and timeout come back as the pad's
    /// status words `6401` / `6400`, as libccid makes them.
    fn pin_pad(&mut self, request: &PadRequest) -> Result<Vec<u8>, TransportError> {
        let slot = self.handle.slot;
        if !self.handle.model.pin_pad() {
            return Err(TransportError::Unsupported(format!(
                "the {} has no PIN pad",
                self.handle.model
            )));
        }
        let mut sh = lock(&self.handle.shared);
        let t1_state = self.current(&mut sh)?;
        let mut request = request.clone();
        if let Some(state) = &t1_state {
            let len = u8::try_from(request.apdu.len())
                .ok()
                .filter(|n| *n <= state.ifsc)
                .ok_or_else(|| {
                    TransportError::Unsupported(format!(
                        "a PIN APDU of {} bytes does not fit one T=1 block",
                        request.apdu.len()
                    ))
                })?;
            // NAD 0, an I-block with our N(S), LEN (ISO 7816-3 §11.3)
            request.teo_prologue = [0x00, u8::from(state.ns) << 6, len];
        } else {
            request.teo_prologue = [0; 3];
        }
        let seconds = match request.format.timeout_s {
            0 => pinpad::DEFAULT_TIMEOUT_S,
            s => s,
        };
        // the holder's time, and the card's after it
        let wait = Duration::from_secs(u64::from(seconds)) + sh.link.timing().answer * 3;
        let r = sh.transact_for(
            slot,
            CommandBody::Secure {
                bwi: 0,
                level_parameter: 0,
                data: request.ccid_bytes(),
            },
            wait,
        )?;
        if r.failed() {
            if let Some(p) = pinpad::ccid_pad_error(r.error) {
                return Ok(StatusWord::PinEntry(p).code().to_be_bytes().to_vec());
            }
            return Err(match (r.status.icc(), r.error) {
                (IccStatus::Absent | IccStatus::PresentInactive, _) => self.fail_card(&mut sh),
                (_, error::ICC_MUTE) => {
                    sh.invalidate(slot);
                    TransportError::Timeout("the card did not answer the PIN entry".into())
                }
                (_, error::CMD_NOT_SUPPORTED) => {
                    TransportError::Unsupported("the reader refused PC_to_RDR_Secure".into())
                }
                (_, error::CMD_SLOT_BUSY) => TransportError::Busy,
                _ => reader_error("Secure", &r),
            });
        }
        if !sh.still_powered(slot) {
            return Err(self.fail_card(&mut sh));
        }
        let data = match r.body {
            ResponseBody::DataBlock { data, .. } => data,
            _ => return Err(reader_error("Secure (no DataBlock)", &r)),
        };
        match (t1_state, data.len()) {
            // the pad's own status word (no T=1 block is this short), or a T=0 answer
            (_, 2) => Ok(data),
            (None, n) if n > 2 => Ok(data),
            (Some(state), _) => self.pad_answer_t1(&mut sh, state, data),
            (None, _) => Err(TransportError::NoResponse),
        }
    }

    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let slot = self.handle.slot;
        let mut sh = lock(&self.handle.shared);
        // the card of this transaction must still be the one powered
        let t1_state = self.current(&mut sh)?;
        if let Some(state) = t1_state {
            if command.len() < 4 || command.len() > t1::MAX_COMMAND {
                return Err(TransportError::Protocol(format!(
                    "a command APDU of {} bytes",
                    command.len()
                )));
            }
            return self.transmit_t1(&mut sh, state, command);
        }
        let tpdu = tpdu::t0_command(command)?;
        let r = sh.transact(
            slot,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: tpdu.to_vec(),
            },
        )?;
        if r.failed() {
            return Err(match (r.status.icc(), r.error) {
                (IccStatus::Absent | IccStatus::PresentInactive, _) => self.fail_card(&mut sh),
                (_, error::ICC_MUTE) => {
                    sh.invalidate(slot);
                    TransportError::Timeout("the card did not answer".into())
                }
                (_, error::XFR_PARITY_ERROR | error::XFR_OVERRUN) => {
                    sh.invalidate(slot);
                    TransportError::NoResponse
                }
                (_, error::CMD_SLOT_BUSY) => TransportError::Busy,
                _ => reader_error("XfrBlock", &r),
            });
        }
        // a movement notice during the command: whatever the answer says, the card
        // this transaction was on is not there as it was
        if !sh.still_powered(slot) {
            return Err(self.fail_card(&mut sh));
        }
        match r.body {
            ResponseBody::DataBlock { data, .. } if data.len() >= 2 => Ok(data),
            ResponseBody::DataBlock { .. } => Err(TransportError::NoResponse),
            _ => Err(reader_error("XfrBlock (no DataBlock)", &r)),
        }
    }

    fn new_presentation(&self) -> bool {
        self.new_presentation
    }
}

impl CardTransport for SerialSlot {
    fn reader_name(&self) -> String {
        self.name.clone()
    }

    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        // another handle on the same slot in a transaction: the slot is in use
        let busy = match self.busy.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(TransportError::Busy),
        };
        let generation = {
            let mut sh = lock(&self.shared);
            match sh.check(self.slot)? {
                IccStatus::Absent => return Err(TransportError::NoCard),
                IccStatus::Rfu => {
                    return Err(TransportError::Protocol(
                        "the reader reports an RFU slot state".into(),
                    ))
                }
                IccStatus::PresentActive | IccStatus::PresentInactive => {}
            }
            if sh.slot_mut(self.slot)?.power.is_none() {
                sh.power_on(self.slot)?;
            }
            sh.slot_mut(self.slot)?.generation
        };
        let new_presentation = self.seen.is_some_and(|s| s != generation);
        self.seen = Some(generation);
        Ok(Box::new(SerialTransaction {
            handle: self,
            _busy: busy,
            generation,
            new_presentation,
        }))
    }

    fn status(&mut self) -> Result<CardStatus, TransportError> {
        let mut sh = lock(&self.shared);
        let icc = sh.check(self.slot)?;
        let s = sh.slot_mut(self.slot)?;
        let ours = match self.seen {
            None => true,
            Some(g) => s.power.is_some() && s.generation == g,
        };
        let present = icc != IccStatus::Absent && ours;
        let (atr, protocol) = match (&s.power, present) {
            (Some(p), true) => (p.atr.clone(), Some(p.protocol)),
            _ => (Vec::new(), None),
        };
        Ok(CardStatus {
            present,
            atr,
            protocol,
        })
    }

    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        self.take_up(true)
    }

    /// The card as it is: kept if we powered it and it stayed; powered on if it was
    /// inserted (or lost power) since, which is the only way to read its ATR.
    fn reattach(&mut self) -> Result<Vec<u8>, TransportError> {
        self.take_up(false)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pin_pad: self.model.pin_pad(),
            extended_length: false,
            max_command: 261,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ccid::CommandBody;
    use super::super::fake::{Bench, FakeCard};
    use super::super::frame;
    use super::super::t1;
    use super::*;
    use crate::apdu::CommandApdu;
    use crate::transport::Transaction;

    fn reader(model: Model) -> (Bench, SerialReader) {
        let (b, link) = Bench::new(model);
        (b, SerialReader::from_link(link))
    }

    fn power_ons(b: &Bench) -> usize {
        b.fake()
            .log
            .iter()
            .filter(|c| matches!(c.body, CommandBody::IccPowerOn { .. }))
            .count()
    }

    fn xfrs(b: &Bench) -> Vec<Vec<u8>> {
        b.fake()
            .log
            .iter()
            .filter_map(|c| match &c.body {
                CommandBody::XfrBlock { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    fn read_record(card: &mut dyn CardTransport, n: u8) -> Result<Vec<u8>, TransportError> {
        let mut tx = Transaction::begin(card)?;
        let r = tx.transmit(&CommandApdu::new(0, 0xB2, n, 4).with_le(3).unwrap())?;
        Ok(r.data)
    }

    #[test]
    fn power_on_parameters_and_t0_exchanges() {
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        let st = s.status().unwrap();
        assert!(st.present);
        assert_eq!(st.protocol, Some(Protocol::T0));
        assert_eq!(st.atr[..2], [0x3B, 0x6A]);
        // SetParameters T=0 as libccid: Fi/Di 11, direct, TC1 00, WI 0A, no clock stop
        assert!(b.fake().log.iter().any(|c| c.body
            == CommandBody::SetParameters {
                protocol: 0,
                data: vec![0x11, 0, 0, 0x0A, 0]
            }));
        assert_eq!(read_record(&mut s, 7).unwrap(), [7, 7, 7]);
        // a case 4 command goes as a case 3 TPDU; 61xx is chained above the trait
        assert!(!tx_new(&mut s));
        let mut tx = Transaction::begin(&mut s).unwrap();
        let cmd = CommandApdu::new(0, 0x88, 0, 0)
            .with_data(vec![1, 2, 3, 4])
            .unwrap()
            .with_le(8)
            .unwrap();
        let resp = tx.transmit(&cmd).unwrap();
        drop(tx);
        assert_eq!(resp.data, [0xA5; 8]);
        let x = xfrs(&b);
        assert_eq!(x[x.len() - 2], [0, 0x88, 0, 0, 4, 1, 2, 3, 4]);
        assert_eq!(x[x.len() - 1], [0, 0xC0, 0, 0, 8]);
        assert_eq!(power_ons(&b), 1);
        assert_eq!(r.firmware(), "GemTwin V5.00");
    }

    /// Whether a fresh transaction is on a new presentation.
    fn tx_new(s: &mut SerialSlot) -> bool {
        s.begin().map(|t| t.new_presentation()).unwrap_or(false)
    }

    #[test]
    fn a_card_pulled_and_put_back_between_transactions_is_a_new_presentation() {
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        assert!(!tx_new(&mut s));
        b.remove(0);
        b.fake().notice_next = Some(frame::CARD_ABSENT);
        assert!(!s.status().unwrap().present);
        assert!(matches!(s.begin().err(), Some(TransportError::NoCard)));
        b.insert(0, FakeCard::t0());
        // the handle knew another presentation: no card for it until taken up
        assert!(!s.status().unwrap().present);
        assert!(tx_new(&mut s));
        assert!(s.status().unwrap().present);
        assert!(!tx_new(&mut s));
        assert_eq!(power_ons(&b), 2);
    }

    #[test]
    fn a_swap_seen_only_in_a_notice_is_a_new_presentation() {
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        // pulled and put back between two commands; the reader powered the new one
        // itself, so only the notices tell
        {
            let mut f = b.fake();
            f.notice_next = Some(frame::CARD_PRESENT);
        }
        assert!(tx_new(&mut s));
    }

    #[test]
    fn a_card_pulled_mid_apdu_is_card_removed() {
        let (b, r) = reader(Model::GemCorePosPro);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        b.fake().pull_mid_apdu = true;
        let e = read_record(&mut s, 1).unwrap_err();
        assert!(matches!(e, TransportError::CardRemoved), "{e}");
        assert!(e.outcome_unknown());
        assert!(!s.status().unwrap().present);
    }

    #[test]
    fn the_slots_of_one_port_share_the_sequence_and_are_exclusive() {
        let (b, r) = reader(Model::GemCorePosPro);
        assert_eq!(r.slots(), 5);
        b.insert(0, FakeCard::t0());
        b.insert(1, FakeCard::t0());
        let mut card = r.connect(0).unwrap();
        let mut sam = r.connect(1).unwrap();
        let mut tx = Transaction::begin(&mut card).unwrap();
        // the SAM works while the card's transaction is open
        assert_eq!(read_record(&mut sam, 2).unwrap(), [2, 2, 2]);
        let cmd = CommandApdu::new(0, 0xB2, 3, 4).with_le(3).unwrap();
        assert_eq!(tx.transmit(&cmd).unwrap().data, [3, 3, 3]);
        // a second handle on the card's slot waits its turn
        let mut other = r.slot(0).unwrap();
        assert!(matches!(other.begin().err(), Some(TransportError::Busy)));
        drop(tx);
        assert!(other.begin().is_ok());
        let log = b.fake().log.clone();
        let seqs: Vec<u8> = log.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u8).collect::<Vec<_>>());
        assert!(log.iter().any(|c| c.slot == 1) && log.iter().any(|c| c.slot == 0));
        assert!(r.slot(5).is_err());
        let p = r.poll().unwrap();
        assert_eq!(p.len(), 5);
        assert!(p[0].present && p[1].present && !p[2].present);
        assert_eq!(p[1].atr[..2], [0x3B, 0x6A]);
    }

    fn t1_atr(ta1: u8, tc3: Option<u8>) -> Vec<u8> {
        // TA1 TC1 TD1, TD1 = 81 (T=1), TD2 = 31 or B1 (TA3 TB3 [TC3], T=1)
        let mut a = vec![0x3B, 0xD0, ta1, 0xFF, 0x81];
        match tc3 {
            Some(tc) => a.extend_from_slice(&[0x71, 0xFE, 0x45, tc]),
            None => a.extend_from_slice(&[0x31, 0xFE, 0x45]),
        }
        let tck = a[1..].iter().fold(0u8, |x, b| x ^ b);
        a.push(tck);
        a
    }

    /// A T=1 card: S(IFS) confirmed, every I-block an APDU, READ RECORD answered with
    /// its record number Le times, the rest `9000`.
    fn t1_card(atr: &[u8]) -> FakeCard {
        let mut card = FakeCard::with_atr(atr);
        let mut ns = false;
        card.answer = Box::new(move |raw| {
            let answer = match t1::decode(raw) {
                Ok((
                    _,
                    t1::Block::S {
                        kind,
                        response: false,
                        inf,
                    },
                )) => t1::Block::S {
                    kind,
                    response: true,
                    inf,
                },
                Ok((_, t1::Block::I { inf, .. })) => {
                    let mut r = match inf.get(1) {
                        Some(0xB2) => vec![inf[2]; usize::from(inf[4])],
                        _ => Vec::new(),
                    };
                    r.extend_from_slice(&[0x90, 0x00]);
                    ns = !ns;
                    t1::Block::I {
                        ns: !ns,
                        more: false,
                        inf: r,
                    }
                }
                _ => t1::Block::R {
                    nr: false,
                    error: t1::RError::Other,
                },
            };
            t1::encode(0, &answer)
        });
        card
    }

    #[test]
    fn a_t1_card_powered_on_set_up_and_its_apdus_carried_whole() {
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, t1_card(&t1_atr(0x11, None)));
        let mut s = r.connect(0).unwrap();
        let st = s.status().unwrap();
        assert_eq!(st.protocol, Some(Protocol::T1));
        // SetParameters T=1: Fi/Di 11, TCCKS 10, TC1 FF, TB3 45, no clock stop,
        // IFSC FE (TA3), NAD 0; then S(IFS request) IFSD 254 (no PPS: T=1 is first)
        assert!(b.fake().log.iter().any(|c| c.body
            == CommandBody::SetParameters {
                protocol: 1,
                data: vec![0x11, 0x10, 0xFF, 0x45, 0, 0xFE, 0]
            }));
        assert_eq!(read_record(&mut s, 7).unwrap(), [7, 7, 7]);
        assert_eq!(read_record(&mut s, 2).unwrap(), [2, 2, 2]);
        let x = xfrs(&b);
        assert_eq!(x[0], [0x00, 0xC1, 0x01, 0xFE, 0x3E]);
        // the APDU whole, Le kept, N(S) 0 then 1
        assert_eq!(x[1], [0x00, 0x00, 0x05, 0x00, 0xB2, 0x07, 0x04, 0x03, 0xB7]);
        assert_eq!(x[2][..3], [0x00, 0x40, 0x05]);
        // a power-on starts the T=1 state again: IFSD again, N(S) 0
        s.reset().unwrap();
        assert_eq!(read_record(&mut s, 1).unwrap(), [1, 1, 1]);
        let x = xfrs(&b);
        assert_eq!(x[3], [0x00, 0xC1, 0x01, 0xFE, 0x3E]);
        assert_eq!(x[4][..3], [0x00, 0x00, 0x05]);
        assert_eq!(power_ons(&b), 2);
    }

    fn read_record_le(card: &mut dyn CardTransport, n: u8, le: usize) -> Vec<u8> {
        let mut tx = Transaction::begin(card).unwrap();
        let r = tx
            .transmit(&CommandApdu::new(0, 0xB2, n, 4).with_le(le).unwrap())
            .unwrap();
        r.data
    }

    #[test]
    fn t1_cards_choice_of_protocol_pps_and_crc() {
        // T=1 first with a faster TA1: a PPS for T=1 at that rate
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, t1_card(&t1_atr(0x13, None)));
        let mut s = r.connect(0).unwrap();
        assert_eq!(xfrs(&b)[0], [0xFF, 0x11, 0x13, 0xFD]);
        assert!(b.fake().log.iter().any(|c| matches!(&c.body,
            CommandBody::SetParameters { protocol: 1, data } if data[0] == 0x13)));
        assert_eq!(read_record_le(&mut s, 3, 2), [3, 3]);
        // a CRC epilogue (TC3 = 01) is refused
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, t1_card(&t1_atr(0x11, Some(0x01))));
        assert!(matches!(
            r.connect(0).err(),
            Some(TransportError::Protocol(m)) if m.contains("CRC")
        ));
        // T=0 first and T=1 second: T=0, as before
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::with_atr(&[0x3B, 0x80, 0x80, 0x01, 0x01]));
        let mut s = r.connect(0).unwrap();
        assert_eq!(s.status().unwrap().protocol, Some(Protocol::T0));
        // a card that never confirms the IFSD is refused
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::with_atr(&t1_atr(0x11, None)));
        assert!(matches!(
            r.connect(0).err(),
            Some(TransportError::Protocol(m)) if m.contains("IFSD")
        ));
    }

    #[test]
    fn pps_when_the_card_offers_a_faster_rate() {
        let (b, r) = reader(Model::GemPcTwin);
        // TA1 = 13 (Fi 372, Di 4), T=0
        b.insert(0, FakeCard::with_atr(&[0x3B, 0x10, 0x13]));
        r.connect(0).unwrap();
        let x = xfrs(&b);
        assert_eq!(x, [vec![0xFF, 0x10, 0x13, 0xFC]]);
        assert!(b.fake().log.iter().any(|c| matches!(&c.body,
            CommandBody::SetParameters { data, .. } if data[0] == 0x13)));
        // a card that does not answer the PPS is reset and used at the default rate
        let (b, r) = reader(Model::GemPcTwin);
        let mut card = FakeCard::with_atr(&[0x3B, 0x10, 0x13]);
        card.pps_ok = false;
        b.insert(0, card);
        let mut s = r.connect(0).unwrap();
        assert!(b.fake().log.iter().any(|c| matches!(&c.body,
            CommandBody::SetParameters { data, .. } if data[0] == 0x11)));
        assert_eq!(read_record(&mut s, 1).unwrap(), [1, 1, 1]);
    }

    #[test]
    fn reattach_keeps_the_card_and_reset_powers_it_anew() {
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        s.reattach().unwrap();
        assert_eq!(power_ons(&b), 1);
        s.reset().unwrap();
        assert_eq!(power_ons(&b), 2);
        // our own reset is no new presentation for us, but is for another handle
        let mut other = r.slot(0).unwrap();
        assert!(!tx_new(&mut other));
        assert!(!tx_new(&mut s));
        other.reset().unwrap();
        assert!(tx_new(&mut s));
        assert!(matches!(r.slot(0).unwrap().begin().map(|_| ()), Ok(())));
    }

    #[test]
    fn unplugged_and_plugged_in_again() {
        let (b, r) = reader(Model::GemPcTwin);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        b.unplug();
        let e = read_record(&mut s, 1).unwrap_err();
        assert!(
            matches!(e, TransportError::Io(_)) && e.outcome_unknown(),
            "{e}"
        );
        assert!(matches!(s.status(), Err(TransportError::NoReader(_))));
        assert!(matches!(s.begin().err(), Some(TransportError::NoReader(_))));
        b.plug();
        // the reader starts from scratch: its card lost power
        b.fake().slots[0].powered = false;
        assert!(tx_new(&mut s));
        assert_eq!(read_record(&mut s, 4).unwrap(), [4, 4, 4]);
        assert!(r.is_open());
        r.reopen().unwrap();
        assert!(tx_new(&mut s));
    }

    #[test]
    fn a_reader_time_out_mid_transaction_is_outcome_unknown() {
        let (b, r) = reader(Model::GemCorePosPro);
        b.insert(0, FakeCard::t0());
        let mut s = r.connect(0).unwrap();
        b.fake().silent_next = 1;
        let e = read_record(&mut s, 1).unwrap_err();
        assert!(matches!(e, TransportError::Timeout(_)) && e.outcome_unknown());
        // the card is still there and powered: the next transaction goes on with it
        assert!(!tx_new(&mut s));
        assert_eq!(read_record(&mut s, 2).unwrap(), [2, 2, 2]);
    }
}
