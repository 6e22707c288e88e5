//! PC/SC backend on the `pcsc` crate (pcsc-lite's libpcsclite). Filled in by the
//! foundation work; see `PcscCard`.
