//! The test master keys K1 of `shared/spec/vectors.json`, for tests, demos, the
//! emulator and `--simulate` only. They are read at build time from the crate's copy of
//! the contract file, `driver/vectors.json` (never pasted into code; a test checks that
//! the copy equals `shared/spec/vectors.json` whenever the specs sit beside the
//! repository), and a production configuration refuses them ([`is_test_key`]).

use crate::crypto;
use crate::keys::{CardKeys, Key16, KeyPurpose};
use crate::types::{CardId, Region};

/// `driver/vectors.json`: a copy of `shared/spec/vectors.json` inside the crate, so that
/// it builds and packages without the sibling folder.
const VECTORS: &str = include_str!("../vectors.json");

/// The national master key K1 of each purpose (test set).
pub struct MasterKeys {
    keys: Vec<(KeyPurpose, Key16)>,
}

impl MasterKeys {
    /// K1 of a purpose.
    pub fn get(&self, p: KeyPurpose) -> &Key16 {
        // every purpose is present: `test_master_keys` checks that on load
        &self.keys[p.id() as usize - 1].1
    }

    /// The seven card keys Kc of a card, derived through the hierarchy.
    pub fn card_keys(&self, card_id: &CardId) -> CardKeys {
        CardKeys::new(|p| crypto::card_key_from_master(self.get(p), card_id))
    }

    /// A city's K3 of a purpose.
    pub fn k3(&self, p: KeyPurpose, region: Region) -> Key16 {
        crypto::derive_level(self.get(p), region, 3)
    }
}

/// The test master keys. Panics only if the contract file shipped with the source is
/// malformed, which the build's own tests catch.
pub fn test_master_keys() -> MasterKeys {
    let v: serde_json::Value = serde_json::from_str(VECTORS).expect("driver/vectors.json is JSON");
    let keys = KeyPurpose::ALL
        .iter()
        .map(|p| {
            let hex = v["test_master_keys"][p.name()]
                .as_str()
                .expect("vectors.json names every purpose");
            (*p, Key16::from_hex(hex).expect("vectors.json keys are hex"))
        })
        .collect();
    MasterKeys { keys }
}

/// The test transport batch key K_MANUF (§9), for blank emulated cards.
pub fn test_manufacturer_key() -> Key16 {
    let v: serde_json::Value = serde_json::from_str(VECTORS).expect("driver/vectors.json is JSON");
    Key16::from_hex(v["transport_key"]["K_MANUF"].as_str().unwrap_or_default())
        .expect("vectors.json K_MANUF is hex")
}

/// Whether a key, at any level for the given region, comes from the test master keys:
/// compared by key check value so no key is held longer than needed.
pub fn is_test_key(key: &Key16, region: Region) -> bool {
    let set = test_master_keys();
    let kcv = crypto::kcv(key);
    KeyPurpose::ALL.iter().any(|p| {
        (1..=3).any(|lvl| crypto::kcv(&crypto::derive_level(set.get(*p), region, lvl)) == kcv)
    }) || crypto::kcv(&test_manufacturer_key()) == kcv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_keys_are_recognised() {
        let region: Region = "650200".parse().unwrap();
        let set = test_master_keys();
        let k3 = set.k3(KeyPurpose::Purchase, region);
        assert!(is_test_key(&k3, region));
        assert!(!is_test_key(&Key16::from_bytes([7; 16]), region));
    }

    /// The crate's copy is the contract's file, byte for byte, wherever the specs are
    /// beside the repository (`../shared/spec/`); a packaged crate has only its copy.
    #[test]
    fn the_copy_of_the_vectors_is_the_contract_file() {
        let spec =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors.json");
        match std::fs::read(&spec) {
            Ok(bytes) => assert!(
                bytes == VECTORS.as_bytes(),
                "driver/vectors.json differs from {}: copy it again",
                spec.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!(
                "note: no {}: the copy in driver/vectors.json is not compared",
                spec.display()
            ),
            Err(e) => panic!("{}: {e}", spec.display()),
        }
    }
}
