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

pub mod ccid;
pub mod frame;
