//! # sscard-firmware-tests
//!
//! The test bed around the card side of the SSC-AES card profile: the vpcd bridge that
//! plugs an emulated card or PSAM into the real pcscd (`vpcd`, binary `sscard-vcard`),
//! fixtures that start a private pcscd and virtual cards (`testbed`), the conformance
//! suites (`conformance`) and the settlement centre's check of a purchase (`clearing`).
//!
//! The emulators themselves are `sscard-emulator` (what `sscardd --simulate` links);
//! they are re-exported here under their old paths (`sscard_firmware_tests::card`, …).

pub use sscard_emulator::{card, persist, perso, psam, sim};
pub use sscard_emulator::{Reply, VirtualCard};

pub mod clearing;
pub mod conformance;
pub mod reader_conformance;
pub mod serial_reader;
pub mod serial_t1;
pub mod testbed;
pub mod vpcd;
