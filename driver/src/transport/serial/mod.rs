//! Serial CCID readers: the GemPC Twin / GemCore serial protocol that libccid's
//! `libccidtwin` speaks (LudovicRousseau/CCID, `src/ccid_serial.c`).
//!
//! Two layers, shared by the serial backend and the reader emulator of the test bed:
//!
//! - [`frame`]: the bytes on the line: `SYNC (03) ‖ CTRL (06 ACK) ‖ CCID message ‖ LRC`,
//!   the NAK frame `03 15 16`, the card movement notifications `50 02` / `50 03` and the
//!   one-byte time requests (`80`…`FF`) of a reader talking T=0 to its card; an
//!   incremental decoder that resynchronises after garbage.
//! - [`ccid`]: the CCID messages those frames carry (USB CCID specification rev 1.1,
//!   §6.1 and §6.2), typed, with encode and decode.
//!
//! The backend on top of them (T=0 and T=1 cards; the PIN pad comes later):
//!
//! - [`port`]: the port, opened as libccidtwin opens it (115200 bit/s, 8N2, raw);
//! - [`link`]: one command at a time on the port, with one `bSeq` for all its slots:
//!   echo and late answers skipped, NAKs both ways (bounded), time requests, card
//!   movement notices, timeouts, a vanished port reopened at the next use;
//! - [`tpdu`]: short APDUs as T=0 TPDUs;
//! - [`t1`]: the T=1 block protocol (I-, R- and S-blocks, chaining, error recovery);
//! - [`model`]: the reader models and what differs between them on the wire;
//! - [`reader`]: [`reader::SerialReader`] and its slots, [`reader::SerialSlot`], each a
//!   [`super::CardTransport`].

pub mod ccid;
#[cfg(test)]
mod fake;
pub mod frame;
pub mod link;
pub mod model;
pub mod port;
pub mod reader;
pub mod t1;
pub mod tpdu;
