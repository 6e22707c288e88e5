//! Conformance suite for the card profile, over any transport. (in progress)
