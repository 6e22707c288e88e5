//! Secure PIN entry on the reader's own keypad (a PIN pad), as PC/SC part 10 (v2.02.09
//! §2.5.2, §2.5.3) and the USB CCID specification (rev 1.1 §6.1.11) define it.
//!
//! The host never sees the PIN. It hands the reader the command APDU with a template
//! where the PIN goes and a [`PinFormat`] saying how to put it there; the reader
//! prompts, takes the digits from its keypad, fills the template, sends the APDU to the
//! card and returns the card's answer, or a status word of its own
//! ([`crate::status::PinEntry`]: `6400` timeout, `6401` cancelled, `6402` the new PINs
//! differ, `6403` wrong length).
//!
//! - PC/SC: [`PadRequest::pcsc_bytes`] is the `PIN_VERIFY_STRUCTURE` /
//!   `PIN_MODIFY_STRUCTURE` of pcsc-lite's `reader.h`, sent with `SCardControl` on the
//!   control code of `FEATURE_VERIFY_PIN_DIRECT` / `FEATURE_MODIFY_PIN_DIRECT` that
//!   `CM_IOCTL_GET_FEATURE_REQUEST` (3400) lists ([`Features`]).
//! - CCID: [`PadRequest::ccid_bytes`] is the `abData` of `PC_to_RDR_Secure`: bPINOperation
//!   and the PIN verification or modification data structure (the PC/SC structure
//!   without `bTimerOut2` and `ulDataLength`, and without the message indexes
//!   `bNumberMessage` leaves out). A reader reports cancel and timeout as bError `EF` /
//!   `F0` ([`ccid_pad_error`]).
//! - The card profile's layouts (1.1 §1, fixed 6-byte blocks padded with `F`):
//!   [`PadRequest::verify`] and [`PadRequest::change`].
//!
//! The reader's side ([`PadRequest::parse_ccid`], [`PadRequest::parse_pcsc`],
//! [`PadRequest::fill`]) is here too: the emulated PIN pad fills templates with it, and
//! the tests prove that what the host asks for is what the card profile wants.

use crate::status::PinEntry;
use std::fmt;
use zeroize::Zeroizing;

/// `CM_IOCTL_GET_FEATURE_REQUEST` (PC/SC part 10 §2.2): the control code, before
/// `SCARD_CTL_CODE`.
pub const GET_FEATURE_REQUEST: u32 = 3400;
/// Feature tags of the answer to [`GET_FEATURE_REQUEST`] (part 10 §2.3).
pub const FEATURE_VERIFY_PIN_DIRECT: u8 = 0x06;
pub const FEATURE_MODIFY_PIN_DIRECT: u8 = 0x07;
pub const FEATURE_GET_TLV_PROPERTIES: u8 = 0x12;

/// bError of a CCID Secure that the holder cancelled (CCID §6.2.6, "PIN cancelled").
pub const CCID_PIN_CANCELLED: u8 = 0xEF;
/// bError of a CCID Secure that timed out (CCID §6.2.6, "PIN timeout").
pub const CCID_PIN_TIMEOUT: u8 = 0xF0;

/// How long the holder has to type, in seconds, when the caller does not say (the
/// reader's own default is `0`; 30 s is what a counter expects).
pub const DEFAULT_TIMEOUT_S: u8 = 30;

/// The pad's answer a CCID bError stands for (libccid does the same mapping).
pub fn ccid_pad_error(b_error: u8) -> Option<PinEntry> {
    match b_error {
        CCID_PIN_CANCELLED => Some(PinEntry::Cancelled),
        CCID_PIN_TIMEOUT => Some(PinEntry::Timeout),
        _ => None,
    }
}

/// A PIN pad structure that cannot be built, parsed or followed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PadError {
    #[error("PIN pad structure too short: {0} bytes")]
    TooShort(usize),
    #[error("PIN pad structure: ulDataLength {declared} but {actual} bytes of APDU")]
    Length { declared: usize, actual: usize },
    #[error("PIN pad structure: bPINOperation {0:02X} is not verify (00) or modify (01)")]
    Operation(u8),
    #[error("PIN pad structure: {0}")]
    Unsupported(&'static str),
    #[error("PIN pad APDU of {0} bytes does not fit")]
    TooLong(usize),
}

/// GET_FEATURE_REQUEST's answer: the control codes of the features the reader has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub verify_pin_direct: Option<u32>,
    pub modify_pin_direct: Option<u32>,
    pub tlv_properties: Option<u32>,
}

impl Features {
    /// Parse the TLV list (tag, length 4, control code big-endian; part 10 §2.3).
    /// Entries of other lengths are skipped; a list cut short is an error.
    pub fn parse(tlv: &[u8]) -> Result<Features, PadError> {
        let mut f = Features::default();
        let mut rest = tlv;
        while !rest.is_empty() {
            let (&tag, after) = rest.split_first().ok_or(PadError::TooShort(tlv.len()))?;
            let (&len, after) = after.split_first().ok_or(PadError::TooShort(tlv.len()))?;
            let value = after
                .get(..usize::from(len))
                .ok_or(PadError::TooShort(tlv.len()))?;
            rest = &after[usize::from(len)..];
            let Ok(code) = <[u8; 4]>::try_from(value).map(u32::from_be_bytes) else {
                continue;
            };
            match tag {
                FEATURE_VERIFY_PIN_DIRECT => f.verify_pin_direct = Some(code),
                FEATURE_MODIFY_PIN_DIRECT => f.modify_pin_direct = Some(code),
                FEATURE_GET_TLV_PROPERTIES => f.tlv_properties = Some(code),
                _ => {}
            }
        }
        Ok(f)
    }

    /// The reader can verify a PIN typed on its keypad.
    pub fn pin_pad(&self) -> bool {
        self.verify_pin_direct.is_some()
    }
}

/// The encoding of a digit in the PIN block (bmFormatString bits 1-0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// One digit a byte, its value.
    Binary,
    /// Two digits a byte (packed BCD).
    Bcd,
    /// One digit a byte, ASCII.
    Ascii,
}

/// How the reader puts a PIN into the template (the fields PIN_VERIFY and PIN_MODIFY
/// share).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinFormat {
    /// bTimerOut: seconds the holder has (0: the reader's default).
    pub timeout_s: u8,
    /// bmFormatString: bit 7 units are bytes (else bits), bits 6-3 the PIN's position in
    /// the APDU's data in those units (verify only), bit 2 right-justified, bits 1-0 the
    /// encoding (00 binary, 01 BCD, 10 ASCII).
    pub format_string: u8,
    /// bmPINBlockString: bits 7-4 the size in bits of a PIN length field in the APDU
    /// (0: none), bits 3-0 the PIN block's size in bytes.
    pub block_string: u8,
    /// bmPINLengthFormat: bit 4 units are bytes (else bits), bits 3-0 the length field's
    /// position.
    pub length_format: u8,
    /// Fewest and most digits (wPINMaxExtraDigit: `0xXXYY`, XX min, YY max).
    pub min_digits: u8,
    pub max_digits: u8,
    /// bEntryValidationCondition: bit 0 max size reached, bit 1 the OK key, bit 2 timeout.
    pub validation: u8,
    /// wLangId of the prompts (`0x0804`: Chinese, PRC).
    pub lang_id: u16,
}

impl PinFormat {
    /// The card profile's PIN (1.1 §1): 4 to 12 digits, packed BCD, left-justified in a
    /// 6-byte block of `F`s that starts the command data, no length field, entry ended
    /// with the OK key, prompts in Chinese.
    pub fn card_profile(timeout_s: u8) -> PinFormat {
        PinFormat {
            timeout_s,
            format_string: 0x80 | 0x01,
            block_string: 0x06,
            length_format: 0x00,
            min_digits: 4,
            max_digits: 12,
            validation: 0x02,
            lang_id: 0x0804,
        }
    }

    fn max_extra_digit(&self) -> u16 {
        u16::from(self.min_digits) << 8 | u16::from(self.max_digits)
    }

    fn encoding(&self) -> Result<Encoding, PadError> {
        match self.format_string & 0x03 {
            0 => Ok(Encoding::Binary),
            1 => Ok(Encoding::Bcd),
            2 => Ok(Encoding::Ascii),
            _ => Err(PadError::Unsupported(
                "bmFormatString encoding 11 is reserved",
            )),
        }
    }

    /// Put `digits` into `block` (the PIN block of the APDU, its template bytes kept
    /// where no digit goes).
    fn put(&self, digits: &[u8], block: &mut [u8]) -> Result<(), PinEntry> {
        let n = digits.len();
        if n < usize::from(self.min_digits) || n > usize::from(self.max_digits) {
            return Err(PinEntry::Length);
        }
        let right = self.format_string & 0x04 != 0;
        match self.encoding().map_err(|_| PinEntry::Length)? {
            Encoding::Bcd => {
                let nibbles = block.len() * 2;
                if n > nibbles {
                    return Err(PinEntry::Length);
                }
                let start = if right { nibbles - n } else { 0 };
                for (i, d) in digits.iter().enumerate() {
                    let at = start + i;
                    let byte = &mut block[at / 2];
                    *byte = if at % 2 == 0 {
                        (*byte & 0x0F) | (d << 4)
                    } else {
                        (*byte & 0xF0) | d
                    };
                }
            }
            e @ (Encoding::Binary | Encoding::Ascii) => {
                if n > block.len() {
                    return Err(PinEntry::Length);
                }
                let start = if right { block.len() - n } else { 0 };
                for (i, d) in digits.iter().enumerate() {
                    block[start + i] = if e == Encoding::Ascii { b'0' + d } else { *d };
                }
            }
        }
        Ok(())
    }
}

/// What the holder is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    Change,
}

impl Purpose {
    /// As the API's `pin.prompt` event names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Verify => "verify",
            Purpose::Change => "change",
        }
    }
}

/// The modification fields of PIN_MODIFY (part 10 §2.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modify {
    /// bInsertionOffsetOld / New: where the current and the new PIN go, in bytes from
    /// the start of the command data.
    pub offset_old: u8,
    pub offset_new: u8,
    /// bConfirmPIN: bit 0 the new PIN is typed twice, bit 1 the current PIN is typed.
    pub confirm: u8,
    /// bNumberMessage and bMsgIndex1..3.
    pub messages: u8,
    pub msg_index: [u8; 3],
}

/// A PIN entry the reader is asked to run: the format, and the command APDU whose PIN
/// blocks it fills. Holds no PIN (the template's PIN blocks are padding).
#[derive(Clone, PartialEq, Eq)]
pub struct PadRequest {
    pub format: PinFormat,
    /// bNumberMessage and bMsgIndex of a verification.
    pub verify_messages: (u8, u8),
    /// Present for a modification.
    pub modify: Option<Modify>,
    /// bTeoPrologue: the T=1 block prologue a TPDU reader puts before the APDU (zeros
    /// for T=0, and for APDU-level readers).
    pub teo_prologue: [u8; 3],
    /// The command APDU with its PIN blocks as templates.
    pub apdu: Vec<u8>,
}

impl fmt::Debug for PadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // a parsed request may come from anyone: its APDU is never printed
        f.debug_struct("PadRequest")
            .field("purpose", &self.purpose())
            .field("format", &self.format)
            .field("apdu_len", &self.apdu.len())
            .finish_non_exhaustive()
    }
}

/// The fixed 6-byte template of a PIN block (card profile 1.1 §1).
const BLOCK: [u8; 6] = [0xFF; 6];

impl PadRequest {
    /// VERIFY `00 20 00 00 06 <block>` with the PIN typed on the pad (card profile
    /// 1.1 §1, §5).
    pub fn verify(timeout_s: u8) -> PadRequest {
        let mut apdu = vec![0x00, 0x20, 0x00, 0x00, 0x06];
        apdu.extend_from_slice(&BLOCK);
        PadRequest {
            format: PinFormat::card_profile(timeout_s),
            verify_messages: (1, 0),
            modify: None,
            teo_prologue: [0; 3],
            apdu,
        }
    }

    /// CHANGE PIN `80 5E 01 00 0D <old block> FF <new block>`, both PINs typed on the
    /// pad and the new one confirmed (card profile 1.1 §1, §5).
    pub fn change(timeout_s: u8) -> PadRequest {
        let mut apdu = vec![0x80, 0x5E, 0x01, 0x00, 0x0D];
        apdu.extend_from_slice(&BLOCK);
        apdu.push(0xFF);
        apdu.extend_from_slice(&BLOCK);
        PadRequest {
            format: PinFormat::card_profile(timeout_s),
            verify_messages: (1, 0),
            modify: Some(Modify {
                offset_old: 0,
                offset_new: 7,
                confirm: 0x03,
                messages: 3,
                msg_index: [0, 1, 2],
            }),
            teo_prologue: [0; 3],
            apdu,
        }
    }

    pub fn purpose(&self) -> Purpose {
        if self.modify.is_some() {
            Purpose::Change
        } else {
            Purpose::Verify
        }
    }

    /// How many PINs the holder types: 1 to verify; to change, the current one (when
    /// asked for), the new one, and its confirmation (when asked for).
    pub fn entries(&self) -> usize {
        match &self.modify {
            None => 1,
            Some(m) => 1 + usize::from(m.confirm & 0x02 != 0) + usize::from(m.confirm & 0x01 != 0),
        }
    }

    /// The PIN_VERIFY_STRUCTURE / PIN_MODIFY_STRUCTURE (pcsc-lite `reader.h`,
    /// little-endian fields) for `SCardControl`.
    pub fn pcsc_bytes(&self) -> Vec<u8> {
        let f = &self.format;
        let mut v = vec![
            f.timeout_s,
            0, // bTimerOut2
            f.format_string,
            f.block_string,
            f.length_format,
        ];
        match &self.modify {
            None => {
                v.extend_from_slice(&f.max_extra_digit().to_le_bytes());
                v.push(f.validation);
                v.push(self.verify_messages.0);
                v.extend_from_slice(&f.lang_id.to_le_bytes());
                v.push(self.verify_messages.1);
            }
            Some(m) => {
                v.push(m.offset_old);
                v.push(m.offset_new);
                v.extend_from_slice(&f.max_extra_digit().to_le_bytes());
                v.push(m.confirm);
                v.push(f.validation);
                v.push(m.messages);
                v.extend_from_slice(&f.lang_id.to_le_bytes());
                v.extend_from_slice(&m.msg_index);
            }
        }
        v.extend_from_slice(&self.teo_prologue);
        v.extend_from_slice(&(self.apdu.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.apdu);
        v
    }

    /// `PC_to_RDR_Secure`'s abData: bPINOperation (00 verify, 01 modify) and the CCID
    /// PIN data structure (CCID §6.1.11.7, §6.1.11.8).
    pub fn ccid_bytes(&self) -> Vec<u8> {
        let f = &self.format;
        let mut v = vec![
            u8::from(self.modify.is_some()),
            f.timeout_s,
            f.format_string,
            f.block_string,
            f.length_format,
        ];
        match &self.modify {
            None => {
                v.extend_from_slice(&f.max_extra_digit().to_le_bytes());
                v.push(f.validation);
                v.push(self.verify_messages.0);
                v.extend_from_slice(&f.lang_id.to_le_bytes());
                v.push(self.verify_messages.1);
            }
            Some(m) => {
                v.push(m.offset_old);
                v.push(m.offset_new);
                v.extend_from_slice(&f.max_extra_digit().to_le_bytes());
                v.push(m.confirm);
                v.push(f.validation);
                v.push(m.messages);
                v.extend_from_slice(&f.lang_id.to_le_bytes());
                v.extend_from_slice(&m.msg_index[..ccid_msg_indexes(m.messages)]);
            }
        }
        v.extend_from_slice(&self.teo_prologue);
        v.extend_from_slice(&self.apdu);
        v
    }

    /// Parse `PC_to_RDR_Secure`'s abData (what a reader receives; see
    /// [`PadRequest::ccid_bytes`]).
    pub fn parse_ccid(data: &[u8]) -> Result<PadRequest, PadError> {
        let mut r = Reader::new(data);
        let op = r.u8()?;
        let mut format = PinFormat::card_profile(r.u8()?);
        format.format_string = r.u8()?;
        format.block_string = r.u8()?;
        format.length_format = r.u8()?;
        let (verify_messages, modify) = match op {
            0 => {
                let extra = r.u16le()?;
                (format.min_digits, format.max_digits) = ((extra >> 8) as u8, extra as u8);
                format.validation = r.u8()?;
                let messages = r.u8()?;
                format.lang_id = r.u16le()?;
                ((messages, r.u8()?), None)
            }
            1 => {
                let (offset_old, offset_new) = (r.u8()?, r.u8()?);
                let extra = r.u16le()?;
                (format.min_digits, format.max_digits) = ((extra >> 8) as u8, extra as u8);
                let confirm = r.u8()?;
                format.validation = r.u8()?;
                let messages = r.u8()?;
                format.lang_id = r.u16le()?;
                let mut msg_index = [0u8; 3];
                for m in msg_index.iter_mut().take(ccid_msg_indexes(messages)) {
                    *m = r.u8()?;
                }
                let m = Modify {
                    offset_old,
                    offset_new,
                    confirm,
                    messages,
                    msg_index,
                };
                ((1, 0), Some(m))
            }
            other => return Err(PadError::Operation(other)),
        };
        let teo_prologue = [r.u8()?, r.u8()?, r.u8()?];
        let apdu = r.rest().to_vec();
        if apdu.len() < 4 {
            return Err(PadError::TooShort(data.len()));
        }
        Ok(PadRequest {
            format,
            verify_messages,
            modify,
            teo_prologue,
            apdu,
        })
    }

    /// Parse a PIN_VERIFY_STRUCTURE (`modify` false) or PIN_MODIFY_STRUCTURE (what an
    /// IFD handler receives from `SCardControl`; see [`PadRequest::pcsc_bytes`]).
    pub fn parse_pcsc(data: &[u8], modify: bool) -> Result<PadRequest, PadError> {
        let header = if modify { 24 } else { 19 };
        let (head, apdu) = data
            .split_at_checked(header)
            .ok_or(PadError::TooShort(data.len()))?;
        let declared = u32::from_le_bytes([
            head[header - 4],
            head[header - 3],
            head[header - 2],
            head[header - 1],
        ]) as usize;
        if declared != apdu.len() {
            return Err(PadError::Length {
                declared,
                actual: apdu.len(),
            });
        }
        // the CCID form: bPINOperation, no bTimerOut2, every message index, no length
        let mut ccid = vec![u8::from(modify), head[0]];
        ccid.extend_from_slice(&head[2..header - 4]);
        let mut parsed = if modify {
            // all three indexes are in the PC/SC structure whatever bNumberMessage says
            let mut c = ccid.clone();
            c.extend_from_slice(apdu);
            let messages = head[11];
            c[11] = 3;
            let mut p = PadRequest::parse_ccid(&c)?;
            if let Some(m) = p.modify.as_mut() {
                m.messages = messages;
            }
            p
        } else {
            ccid.extend_from_slice(apdu);
            PadRequest::parse_ccid(&ccid)?
        };
        parsed.apdu = apdu.to_vec();
        Ok(parsed)
    }

    /// What the pad does with what the holder typed (`entries`, each a PIN's digits as
    /// values 0 to 9, in the order [`PadRequest::entries`] says): the APDU to send the
    /// card, or the pad's own answer (`Length`, or `Mismatch` when the confirmation
    /// differs from the new PIN).
    pub fn fill(&self, entries: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, PinEntry> {
        if entries.len() != self.entries() || entries.iter().flat_map(|e| e.iter()).any(|d| *d > 9)
        {
            return Err(PinEntry::Length);
        }
        let mut apdu = Zeroizing::new(self.apdu.clone());
        let block_len = usize::from(self.format.block_string & 0x0F);
        if self.format.block_string & 0xF0 != 0 {
            // a PIN length field in the APDU: not used by the card profile
            return Err(PinEntry::Length);
        }
        let mut put = |offset: usize, digits: &[u8]| -> Result<(), PinEntry> {
            let start = 5 + offset;
            let block = apdu
                .get_mut(start..start + block_len)
                .ok_or(PinEntry::Length)?;
            self.format.put(digits, block)
        };
        match &self.modify {
            None => {
                if self.format.format_string & 0x80 == 0 {
                    // positions in bits: not used by the card profile
                    return Err(PinEntry::Length);
                }
                let position = usize::from(self.format.format_string >> 3 & 0x0F);
                put(position, entries[0])?;
            }
            Some(m) => {
                let mut e = entries.iter();
                if m.confirm & 0x02 != 0 {
                    put(usize::from(m.offset_old), e.next().ok_or(PinEntry::Length)?)?;
                }
                let new = e.next().ok_or(PinEntry::Length)?;
                if m.confirm & 0x01 != 0 && e.next() != Some(new) {
                    return Err(PinEntry::Mismatch);
                }
                put(usize::from(m.offset_new), new)?;
            }
        }
        Ok(apdu)
    }
}

/// How many of bMsgIndex1..3 a CCID PIN modification structure carries for
/// `bNumberMessage` (CCID §6.1.11.8; libccid's `SecurePINModify` does the same).
fn ccid_msg_indexes(messages: u8) -> usize {
    match messages {
        0 => 1,
        1 | 2 => 2,
        _ => 3,
    }
}

/// Reads the fields of a structure, each an error when the bytes end first.
struct Reader<'a> {
    all: usize,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader {
            all: b.len(),
            rest: b,
        }
    }
    fn u8(&mut self) -> Result<u8, PadError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or(PadError::TooShort(self.all))?;
        self.rest = rest;
        Ok(b)
    }
    fn u16le(&mut self) -> Result<u16, PadError> {
        Ok(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn the_verify_structure_as_pcsc_lite_lays_it_out() {
        let r = PadRequest::verify(30);
        let b = r.pcsc_bytes();
        // 19 bytes of header (reader.h), then ulDataLength bytes of APDU
        assert_eq!(b.len(), 19 + 11);
        assert_eq!(
            b[..19],
            h("1E 00 81 06 00 0C04 02 01 0408 00 000000 0B000000")[..]
        );
        assert_eq!(b[19..], h("00200000 06 FFFFFFFFFFFF")[..]);
        assert_eq!(PadRequest::parse_pcsc(&b, false).unwrap(), r);
    }

    #[test]
    fn the_modify_structure_as_pcsc_lite_lays_it_out() {
        let r = PadRequest::change(20);
        let b = r.pcsc_bytes();
        assert_eq!(b.len(), 24 + 18);
        assert_eq!(
            b[..24],
            h("14 00 81 06 00 00 07 0C04 03 02 03 0408 000102 000000 12000000")[..]
        );
        assert_eq!(PadRequest::parse_pcsc(&b, true).unwrap(), r);
    }

    #[test]
    fn the_ccid_form_drops_timer2_and_the_length_and_round_trips() {
        for r in [PadRequest::verify(30), PadRequest::change(30)] {
            let pcsc = r.pcsc_bytes();
            let ccid = r.ccid_bytes();
            let header = if r.modify.is_some() { 24 } else { 19 };
            // what libccid's SecurePINVerify/Modify build from the PC/SC structure
            let mut expect = vec![u8::from(r.modify.is_some()), pcsc[0]];
            expect.extend_from_slice(&pcsc[2..header - 4]);
            expect.extend_from_slice(&pcsc[header..]);
            assert_eq!(ccid, expect);
            assert_eq!(PadRequest::parse_ccid(&ccid).unwrap(), r);
        }
    }

    #[test]
    fn message_indexes_follow_b_number_message_in_ccid() {
        let mut r = PadRequest::change(30);
        let full = r.ccid_bytes().len();
        for (messages, dropped) in [(0u8, 2usize), (1, 1), (2, 1), (3, 0), (0xFF, 0)] {
            if let Some(m) = r.modify.as_mut() {
                m.messages = messages;
            }
            let b = r.ccid_bytes();
            assert_eq!(b.len(), full - dropped, "bNumberMessage {messages}");
            let p = PadRequest::parse_ccid(&b).unwrap();
            assert_eq!(p.apdu, r.apdu);
        }
    }

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn a_filled_verify_is_the_card_profiles_fixed_block() {
        let r = PadRequest::verify(30);
        let apdu = r.fill(&[&digits("123456")]).unwrap();
        assert_eq!(apdu[..], h("00200000 06 123456FFFFFF")[..]);
        let apdu = r.fill(&[&digits("12345")]).unwrap();
        assert_eq!(apdu[..], h("00200000 06 12345FFFFFFF")[..]);
        let apdu = r.fill(&[&digits("123456789012")]).unwrap();
        assert_eq!(apdu[..], h("00200000 06 123456789012")[..]);
        assert_eq!(r.fill(&[&digits("123")]), Err(PinEntry::Length));
        assert_eq!(r.fill(&[&digits("1234567890123")]), Err(PinEntry::Length));
    }

    #[test]
    fn a_filled_change_is_old_ff_new_and_a_differing_confirmation_is_mismatch() {
        let r = PadRequest::change(30);
        assert_eq!(r.entries(), 3);
        let (old, new) = (digits("123456"), digits("9876"));
        let apdu = r.fill(&[&old, &new, &new]).unwrap();
        assert_eq!(apdu[..], h("805E0100 0D 123456FFFFFF FF 9876FFFFFFFF")[..]);
        assert_eq!(
            r.fill(&[&old, &new, &digits("9875")]),
            Err(PinEntry::Mismatch)
        );
        assert_eq!(r.fill(&[&old, &new]), Err(PinEntry::Length));
    }

    #[test]
    fn the_filled_blocks_are_the_drivers_own_pin_blocks() {
        use crate::app::Pin;
        let r = PadRequest::verify(30);
        for p in ["1234", "123456", "0000000", "987654321098"] {
            let pin = Pin::new(p).unwrap();
            let filled = r.fill(&[&digits(p)]).unwrap();
            assert_eq!(filled[5..], pin.fixed_block().unwrap()[..], "{p}");
        }
        let c = PadRequest::change(30);
        let (o, n) = (Pin::new("123456").unwrap(), Pin::new("24680").unwrap());
        let filled = c
            .fill(&[&digits("123456"), &digits("24680"), &digits("24680")])
            .unwrap();
        assert_eq!(filled[5..], Pin::change_block(&o, &n).unwrap()[..]);
    }

    #[test]
    fn ascii_and_right_justified_formats() {
        let mut r = PadRequest::verify(30);
        r.format.format_string = 0x80 | 0x04 | 0x02; // bytes, right-justified, ASCII
        r.format.block_string = 0x08;
        r.apdu = h("00200000 08 FFFFFFFFFFFFFFFF");
        let apdu = r.fill(&[&digits("1234")]).unwrap();
        assert_eq!(apdu[5..], h("FFFFFFFF31323334")[..]);
    }

    #[test]
    fn features_from_the_tlv_list() {
        let f = Features::parse(&h(
            "06 04 42330006 07 04 42330007 12 04 42330012 01 02 0000",
        ))
        .unwrap();
        assert_eq!(f.verify_pin_direct, Some(0x4233_0006));
        assert_eq!(f.modify_pin_direct, Some(0x4233_0007));
        assert_eq!(f.tlv_properties, Some(0x4233_0012));
        assert!(f.pin_pad());
        assert_eq!(Features::parse(&[]).unwrap(), Features::default());
        assert!(Features::parse(&h("06 04 4233")).is_err());
    }

    #[test]
    fn bad_structures_are_errors() {
        assert!(matches!(
            PadRequest::parse_ccid(&[]),
            Err(PadError::TooShort(0))
        ));
        assert!(matches!(
            PadRequest::parse_ccid(&h("02 1E 81 06 00")),
            Err(PadError::Operation(2))
        ));
        let mut b = PadRequest::verify(30).pcsc_bytes();
        b.pop();
        assert!(matches!(
            PadRequest::parse_pcsc(&b, false),
            Err(PadError::Length { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_apdu() {
        let mut r = PadRequest::verify(30);
        r.apdu = h("00200000 06 123456FFFFFF");
        let s = format!("{r:?}");
        assert!(!s.contains("123456") && !s.contains("18, 52"), "{s}");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64), m: bool) {
            let _ = PadRequest::parse_ccid(&b);
            let _ = PadRequest::parse_pcsc(&b, m);
            let _ = Features::parse(&b);
            if let Ok(r) = PadRequest::parse_ccid(&b) {
                let d: &[u8] = &[1, 2, 3, 4];
                let _ = r.fill(&[d, d, d][..r.entries().min(3)]);
            }
        }
    }
}
