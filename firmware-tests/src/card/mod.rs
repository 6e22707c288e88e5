//! The SSC-AES card emulator (card side of the card profile). (in progress)
