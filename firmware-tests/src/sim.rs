//! In-process reader holding a virtual card. (in progress)
