//! PSAM key provider (in progress).
