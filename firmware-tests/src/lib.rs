//! # sscard-firmware-tests
//!
//! The card side of the SSC-AES card profile, for tests and demos: a card emulator,
//! a PSAM emulator, the vpcd bridge that plugs them into the real pcscd
//! (`sscard-vcard`), an in-process transport, and the conformance suites.

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
pub mod clearing;
pub mod conformance;
pub mod persist;
pub mod perso;
pub mod psam;
pub mod sim;
pub mod testbed;
pub mod vpcd;
