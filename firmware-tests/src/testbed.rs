//! Test fixtures: private pcscd, vcard processes, cleaned up on drop. (in progress)
