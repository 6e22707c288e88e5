//! Encrypted keystore file (in progress).
