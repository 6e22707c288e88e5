//! # sscard-emulator
//!
//! The card side of the SSC-AES card profile, in process: the card emulator (`card`),
//! the blank chip that personalization turns into a card (`perso`), the PSAM emulator
//! (`psam`) and an in-process reader that holds any of them (`sim`), behind the one
//! [`VirtualCard`] trait a reader talks to.
//!
//! This is what `sscardd --simulate` links. It starts no process, opens no socket and
//! has no unsafe code; the test bed around it (the vpcd bridge `sscard-vcard`, the
//! private pcscd fixtures, the conformance suites) is `sscard-firmware-tests`, which
//! re-exports these modules under the same paths.
#![forbid(unsafe_code)]

/// What a virtual card does with one command: answer it, stay silent (a mute card, or a
/// torn card that lost power mid-command), or leave the reader (tear: the bridge closes
/// the connection, which pcscd sees as the card pulled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The response APDU bytes (data ‖ SW1 SW2).
    Answer(Vec<u8>),
    /// No answer at all.
    Mute,
    /// The card is pulled now; the command may or may not have been committed,
    /// as the tear knob chose.
    Tear,
}

/// A card as a reader sees it: power, reset, ATR and commands.
pub trait VirtualCard: Send {
    /// The ATR the card answers a reset with.
    fn atr(&self) -> Vec<u8>;
    /// Cold reset (power on): volatile state (selection, PIN verified, challenge) is lost.
    fn power_on(&mut self);
    /// Power off.
    fn power_off(&mut self);
    /// Warm reset: volatile state is lost.
    fn reset(&mut self);
    /// One command APDU's bytes in, one reply out.
    fn process(&mut self, command: &[u8]) -> Reply;
}

pub mod card;
pub mod persist;
pub mod perso;
pub mod psam;
pub mod sim;
