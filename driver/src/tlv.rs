//! TLV placeholder
