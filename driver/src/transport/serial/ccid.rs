//! CCID messages (USB CCID specification rev 1.1, §6.1 "Command Pipe, Bulk-OUT
//! Messages" and §6.2 "Response Pipe, Bulk-IN Messages"), as libccid sends and reads
//! them over a serial link (LudovicRousseau/CCID `src/commands.c`).
//!
//! Every message is a 10-byte header, then `dwLength` bytes of data:
//!
//! | byte | field |
//! |------|-------|
//! | 0    | `bMessageType` |
//! | 1–4  | `dwLength`, little-endian: the data after the header |
//! | 5    | `bSlot` |
//! | 6    | `bSeq`: libccid keeps one counter per port, shared by the port's slots, and does not check the answer's (`ReadSerial` ignores it) |
//! | 7–9  | message-specific (commands); `bStatus`, `bError`, one more for answers |
//!
//! What libccid looks at in an answer: `bStatus` bit 6 (command failed) with `bError`,
//! bit 7 (time extension: it reads again), the ICC status bits 0–1 of a SlotStatus
//! (`00` present and active, `01` present and inactive, `02` absent; after a
//! power-on "inactive" means to it that the card was swapped), `dwLength` and the data.
//!
//! Decoding never panics: any byte string is a message or a [`CcidError`].

/// PC_to_RDR_IccPowerOn (§6.1.1).
pub const PC_TO_RDR_ICC_POWER_ON: u8 = 0x62;
/// PC_to_RDR_IccPowerOff (§6.1.2).
pub const PC_TO_RDR_ICC_POWER_OFF: u8 = 0x63;
/// PC_to_RDR_GetSlotStatus (§6.1.3).
pub const PC_TO_RDR_GET_SLOT_STATUS: u8 = 0x65;
/// PC_to_RDR_XfrBlock (§6.1.4).
pub const PC_TO_RDR_XFR_BLOCK: u8 = 0x6F;
/// PC_to_RDR_GetParameters (§6.1.5).
pub const PC_TO_RDR_GET_PARAMETERS: u8 = 0x6C;
/// PC_to_RDR_SetParameters (§6.1.7).
pub const PC_TO_RDR_SET_PARAMETERS: u8 = 0x61;
/// PC_to_RDR_Escape (§6.1.8).
pub const PC_TO_RDR_ESCAPE: u8 = 0x6B;
/// PC_to_RDR_Secure (§6.1.11).
pub const PC_TO_RDR_SECURE: u8 = 0x69;
/// RDR_to_PC_DataBlock (§6.2.1).
pub const RDR_TO_PC_DATA_BLOCK: u8 = 0x80;
/// RDR_to_PC_SlotStatus (§6.2.2).
pub const RDR_TO_PC_SLOT_STATUS: u8 = 0x81;
/// RDR_to_PC_Parameters (§6.2.3).
pub const RDR_TO_PC_PARAMETERS: u8 = 0x82;
/// RDR_to_PC_Escape (§6.2.4).
pub const RDR_TO_PC_ESCAPE: u8 = 0x83;

/// Length of the header.
pub const HEADER_LEN: usize = 10;

/// `bError` values (§6.2.6, Table 6.2-2) that libccid tells apart.
pub mod error {
    /// Command not supported (with "command failed"): libccid's `IFD_NOT_SUPPORTED`
    /// for SetParameters. Values 1–127 name the offending parameter's offset instead.
    pub const CMD_NOT_SUPPORTED: u8 = 0x00;
    /// Host aborted the command.
    pub const CMD_ABORTED: u8 = 0xFF;
    /// No card, or the card does not answer (with ICC status "absent": no card).
    pub const ICC_MUTE: u8 = 0xFE;
    /// Parity error on the card's line.
    pub const XFR_PARITY_ERROR: u8 = 0xFD;
    /// The card sent more than the buffer holds.
    pub const XFR_OVERRUN: u8 = 0xFC;
    /// Hardware error.
    pub const HW_ERROR: u8 = 0xFB;
    /// Bad ATR TS.
    pub const BAD_ATR_TS: u8 = 0xF8;
    /// Bad ATR TCK.
    pub const BAD_ATR_TCK: u8 = 0xF7;
    /// Protocol not supported by the card.
    pub const ICC_PROTOCOL_NOT_SUPPORTED: u8 = 0xF6;
    /// Voltage class not supported.
    pub const ICC_CLASS_NOT_SUPPORTED: u8 = 0xF5;
    /// Procedure byte conflict (T=0).
    pub const PROCEDURE_BYTE_CONFLICT: u8 = 0xF4;
    /// Protocol deactivated.
    pub const DEACTIVATED_PROTOCOL: u8 = 0xF3;
    /// Busy with an automatic sequence.
    pub const BUSY_WITH_AUTO_SEQUENCE: u8 = 0xF2;
    /// PIN entry timed out (libccid turns it into `64 00`).
    pub const PIN_TIMEOUT: u8 = 0xF0;
    /// PIN entry cancelled (libccid turns it into `64 01`).
    pub const PIN_CANCELLED: u8 = 0xEF;
    /// The slot is busy with another command.
    pub const CMD_SLOT_BUSY: u8 = 0xE0;
}

/// Why bytes are not a CCID message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CcidError {
    #[error("CCID message of {0} bytes: shorter than its 10-byte header")]
    TooShort(usize),
    #[error("CCID header says {declared} data bytes, {actual} follow")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("unknown CCID message type {0:#04X}")]
    UnknownType(u8),
    #[error("CCID message type {0:#04X} carries no data, {1} bytes follow")]
    UnexpectedData(u8, usize),
    #[error("CCID message of {0} data bytes: too long for dwLength")]
    TooLong(usize),
}

/// The ICC status in `bStatus` bits 0–1 (§6.2.6, `bmICCStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IccStatus {
    /// `0`: a card, powered.
    PresentActive,
    /// `1`: a card, not powered.
    PresentInactive,
    /// `2`: no card.
    Absent,
    /// `3`: RFU.
    Rfu,
}

/// The command status in `bStatus` bits 6–7 (§6.2.6, `bmCommandStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    /// `0`: processed without error.
    Ok,
    /// `1`: failed, `bError` says why.
    Failed,
    /// `2`: time extension requested; the answer comes later (libccid multiplies its
    /// read timeout by `bError` when it is not 0, in `CCID_Receive`).
    TimeExtension,
    /// `3`: RFU.
    Rfu,
}

/// The `bStatus` byte of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// `bStatus` from its two fields (bits 2–5 zero).
    pub fn new(icc: IccStatus, command: CommandStatus) -> Status {
        let i = match icc {
            IccStatus::PresentActive => 0,
            IccStatus::PresentInactive => 1,
            IccStatus::Absent => 2,
            IccStatus::Rfu => 3,
        };
        let c = match command {
            CommandStatus::Ok => 0,
            CommandStatus::Failed => 1,
            CommandStatus::TimeExtension => 2,
            CommandStatus::Rfu => 3,
        };
        Status(i | c << 6)
    }

    /// Bits 0–1.
    pub fn icc(self) -> IccStatus {
        match self.0 & 0x03 {
            0 => IccStatus::PresentActive,
            1 => IccStatus::PresentInactive,
            2 => IccStatus::Absent,
            _ => IccStatus::Rfu,
        }
    }

    /// Bits 6–7.
    pub fn command(self) -> CommandStatus {
        match self.0 >> 6 {
            0 => CommandStatus::Ok,
            1 => CommandStatus::Failed,
            2 => CommandStatus::TimeExtension,
            _ => CommandStatus::Rfu,
        }
    }
}

/// A PC_to_RDR message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub slot: u8,
    pub seq: u8,
    pub body: CommandBody,
}

/// What a PC_to_RDR message asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBody {
    /// `bPowerSelect`: 0 automatic, 1 5 V, 2 3 V, 3 1.8 V (libccid sends 0 when the
    /// reader declares automatic voltage, else the voltage it tries). Answer: DataBlock
    /// with the ATR.
    IccPowerOn { power_select: u8 },
    /// Answer: SlotStatus.
    IccPowerOff,
    /// Answer: SlotStatus.
    GetSlotStatus,
    /// `bBWI` (block waiting time multiplier), `wLevelParameter` (little-endian;
    /// expected length in character mode, chaining in extended APDU mode; libccid sends
    /// 0 for TPDU readers) and the TPDU / APDU / T=1 block. Answer: DataBlock.
    XfrBlock {
        bwi: u8,
        level_parameter: u16,
        data: Vec<u8>,
    },
    /// Answer: Parameters.
    GetParameters,
    /// `bProtocolNum` (0 T=0, 1 T=1) and the protocol data structure (§6.1.7: 5 bytes
    /// for T=0, 7 for T=1). Answer: Parameters.
    SetParameters { protocol: u8, data: Vec<u8> },
    /// Vendor command. Answer: Escape.
    Escape { data: Vec<u8> },
    /// PIN verification or modification (`bPINOperation` first in `data`). Answer:
    /// DataBlock.
    Secure {
        bwi: u8,
        level_parameter: u16,
        data: Vec<u8>,
    },
}

/// A RDR_to_PC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub slot: u8,
    pub seq: u8,
    pub status: Status,
    /// `bError`, meaningful when the command failed (see [`error`]); the multiplier
    /// with a time extension.
    pub error: u8,
    pub body: ResponseBody,
}

/// What a RDR_to_PC message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// `bChainParameter` and the data (ATR, answer TPDU / APDU).
    DataBlock { chain: u8, data: Vec<u8> },
    /// `bClockStatus` (0 running, 1 stopped low, 2 stopped high, 3 stopped unknown).
    SlotStatus { clock_status: u8 },
    /// `bProtocolNum` and the protocol data structure.
    Parameters { protocol: u8, data: Vec<u8> },
    /// `bRFU` and the vendor answer.
    Escape { rfu: u8, data: Vec<u8> },
}

struct Header<'a> {
    kind: u8,
    slot: u8,
    seq: u8,
    b7: u8,
    b8: u8,
    b9: u8,
    data: &'a [u8],
}

fn split(b: &[u8]) -> Result<Header<'_>, CcidError> {
    let (h, data) = match b.split_at_checked(HEADER_LEN) {
        Some(x) => x,
        None => return Err(CcidError::TooShort(b.len())),
    };
    let declared = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    if usize::try_from(declared).ok() != Some(data.len()) {
        return Err(CcidError::LengthMismatch {
            declared,
            actual: data.len(),
        });
    }
    Ok(Header {
        kind: h[0],
        slot: h[5],
        seq: h[6],
        b7: h[7],
        b8: h[8],
        b9: h[9],
        data,
    })
}

fn no_data(h: &Header<'_>) -> Result<(), CcidError> {
    if h.data.is_empty() {
        Ok(())
    } else {
        Err(CcidError::UnexpectedData(h.kind, h.data.len()))
    }
}

fn join(kind: u8, slot: u8, seq: u8, b: [u8; 3], data: &[u8]) -> Result<Vec<u8>, CcidError> {
    let n = u32::try_from(data.len()).map_err(|_| CcidError::TooLong(data.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.push(kind);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&[slot, seq, b[0], b[1], b[2]]);
    out.extend_from_slice(data);
    Ok(out)
}

impl Command {
    /// Parse a PC_to_RDR message (header and data).
    pub fn decode(b: &[u8]) -> Result<Command, CcidError> {
        let h = split(b)?;
        let body = match h.kind {
            PC_TO_RDR_ICC_POWER_ON => {
                no_data(&h)?;
                CommandBody::IccPowerOn { power_select: h.b7 }
            }
            PC_TO_RDR_ICC_POWER_OFF => {
                no_data(&h)?;
                CommandBody::IccPowerOff
            }
            PC_TO_RDR_GET_SLOT_STATUS => {
                no_data(&h)?;
                CommandBody::GetSlotStatus
            }
            PC_TO_RDR_GET_PARAMETERS => {
                no_data(&h)?;
                CommandBody::GetParameters
            }
            PC_TO_RDR_XFR_BLOCK => CommandBody::XfrBlock {
                bwi: h.b7,
                level_parameter: u16::from_le_bytes([h.b8, h.b9]),
                data: h.data.to_vec(),
            },
            PC_TO_RDR_SECURE => CommandBody::Secure {
                bwi: h.b7,
                level_parameter: u16::from_le_bytes([h.b8, h.b9]),
                data: h.data.to_vec(),
            },
            PC_TO_RDR_SET_PARAMETERS => CommandBody::SetParameters {
                protocol: h.b7,
                data: h.data.to_vec(),
            },
            PC_TO_RDR_ESCAPE => CommandBody::Escape {
                data: h.data.to_vec(),
            },
            other => return Err(CcidError::UnknownType(other)),
        };
        Ok(Command {
            slot: h.slot,
            seq: h.seq,
            body,
        })
    }

    /// The message's bytes (RFU bytes zero).
    pub fn encode(&self) -> Result<Vec<u8>, CcidError> {
        let (kind, b, data): (u8, [u8; 3], &[u8]) = match &self.body {
            CommandBody::IccPowerOn { power_select } => {
                (PC_TO_RDR_ICC_POWER_ON, [*power_select, 0, 0], &[])
            }
            CommandBody::IccPowerOff => (PC_TO_RDR_ICC_POWER_OFF, [0; 3], &[]),
            CommandBody::GetSlotStatus => (PC_TO_RDR_GET_SLOT_STATUS, [0; 3], &[]),
            CommandBody::GetParameters => (PC_TO_RDR_GET_PARAMETERS, [0; 3], &[]),
            CommandBody::XfrBlock {
                bwi,
                level_parameter,
                data,
            } => {
                let l = level_parameter.to_le_bytes();
                (PC_TO_RDR_XFR_BLOCK, [*bwi, l[0], l[1]], data)
            }
            CommandBody::Secure {
                bwi,
                level_parameter,
                data,
            } => {
                let l = level_parameter.to_le_bytes();
                (PC_TO_RDR_SECURE, [*bwi, l[0], l[1]], data)
            }
            CommandBody::SetParameters { protocol, data } => {
                (PC_TO_RDR_SET_PARAMETERS, [*protocol, 0, 0], data)
            }
            CommandBody::Escape { data } => (PC_TO_RDR_ESCAPE, [0; 3], data),
        };
        join(kind, self.slot, self.seq, b, data)
    }

    /// The answer's message type for this command.
    pub fn answer_type(&self) -> u8 {
        match self.body {
            CommandBody::IccPowerOn { .. }
            | CommandBody::XfrBlock { .. }
            | CommandBody::Secure { .. } => RDR_TO_PC_DATA_BLOCK,
            CommandBody::IccPowerOff | CommandBody::GetSlotStatus => RDR_TO_PC_SLOT_STATUS,
            CommandBody::GetParameters | CommandBody::SetParameters { .. } => RDR_TO_PC_PARAMETERS,
            CommandBody::Escape { .. } => RDR_TO_PC_ESCAPE,
        }
    }
}

impl Response {
    /// Parse a RDR_to_PC message (header and data).
    pub fn decode(b: &[u8]) -> Result<Response, CcidError> {
        let h = split(b)?;
        let body = match h.kind {
            RDR_TO_PC_DATA_BLOCK => ResponseBody::DataBlock {
                chain: h.b9,
                data: h.data.to_vec(),
            },
            RDR_TO_PC_SLOT_STATUS => {
                no_data(&h)?;
                ResponseBody::SlotStatus { clock_status: h.b9 }
            }
            RDR_TO_PC_PARAMETERS => ResponseBody::Parameters {
                protocol: h.b9,
                data: h.data.to_vec(),
            },
            RDR_TO_PC_ESCAPE => ResponseBody::Escape {
                rfu: h.b9,
                data: h.data.to_vec(),
            },
            other => return Err(CcidError::UnknownType(other)),
        };
        Ok(Response {
            slot: h.slot,
            seq: h.seq,
            status: Status(h.b7),
            error: h.b8,
            body,
        })
    }

    /// The message's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CcidError> {
        let (kind, b9, data): (u8, u8, &[u8]) = match &self.body {
            ResponseBody::DataBlock { chain, data } => (RDR_TO_PC_DATA_BLOCK, *chain, data),
            ResponseBody::SlotStatus { clock_status } => {
                (RDR_TO_PC_SLOT_STATUS, *clock_status, &[])
            }
            ResponseBody::Parameters { protocol, data } => (RDR_TO_PC_PARAMETERS, *protocol, data),
            ResponseBody::Escape { rfu, data } => (RDR_TO_PC_ESCAPE, *rfu, data),
        };
        join(
            kind,
            self.slot,
            self.seq,
            [self.status.0, self.error, b9],
            data,
        )
    }

    /// Whether `bStatus` says the command failed.
    pub fn failed(&self) -> bool {
        self.status.command() == CommandStatus::Failed
    }

    /// The data of a DataBlock, Parameters or Escape answer (empty for SlotStatus).
    pub fn data(&self) -> &[u8] {
        match &self.body {
            ResponseBody::DataBlock { data, .. }
            | ResponseBody::Parameters { data, .. }
            | ResponseBody::Escape { data, .. } => data,
            ResponseBody::SlotStatus { .. } => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libccids_first_escape() {
        let b = [
            0x6B, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
        ];
        let c = Command::decode(&b).unwrap();
        assert_eq!(
            c,
            Command {
                slot: 0,
                seq: 0,
                body: CommandBody::Escape { data: vec![0x02] }
            }
        );
        assert_eq!(c.encode().unwrap(), b);
        assert_eq!(c.answer_type(), RDR_TO_PC_ESCAPE);
    }

    #[test]
    fn slot_status_bits() {
        let s = Status::new(IccStatus::Absent, CommandStatus::Failed);
        assert_eq!(s.0, 0x42);
        assert_eq!(
            (s.icc(), s.command()),
            (IccStatus::Absent, CommandStatus::Failed)
        );
        assert_eq!(Status(0x81).command(), CommandStatus::TimeExtension);
        assert_eq!(Status(0x81).icc(), IccStatus::PresentInactive);
        assert_eq!(Status(0xC3).icc(), IccStatus::Rfu);
        assert_eq!(Status(0xC3).command(), CommandStatus::Rfu);
        let r = Response {
            slot: 4,
            seq: 9,
            status: s,
            error: error::ICC_MUTE,
            body: ResponseBody::SlotStatus { clock_status: 0 },
        };
        let b = r.encode().unwrap();
        assert_eq!(b, [0x81, 0, 0, 0, 0, 4, 9, 0x42, 0xFE, 0]);
        assert_eq!(Response::decode(&b).unwrap(), r);
        assert!(r.failed());
        assert!(r.data().is_empty());
    }

    #[test]
    fn errors() {
        assert_eq!(Command::decode(&[0x62; 3]), Err(CcidError::TooShort(3)));
        assert_eq!(
            Command::decode(&[0x6F, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(CcidError::LengthMismatch {
                declared: 2,
                actual: 1
            })
        );
        assert_eq!(
            Command::decode(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(CcidError::UnknownType(0x80))
        );
        assert_eq!(
            Response::decode(&[0x6B, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(CcidError::UnknownType(0x6B))
        );
        assert_eq!(
            Command::decode(&[0x65, 1, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
            Err(CcidError::UnexpectedData(0x65, 1))
        );
    }

    #[test]
    fn xfr_block_fields() {
        let c = Command {
            slot: 1,
            seq: 0xFF,
            body: CommandBody::XfrBlock {
                bwi: 3,
                level_parameter: 0x0102,
                data: vec![0x00, 0xA4, 0x04, 0x00],
            },
        };
        let b = c.encode().unwrap();
        assert_eq!(&b[..10], [0x6F, 4, 0, 0, 0, 1, 0xFF, 3, 0x02, 0x01]);
        assert_eq!(Command::decode(&b).unwrap(), c);
    }
}
