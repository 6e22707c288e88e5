//! Emulators
