//! The keystore file: round trip with a passphrase and with a credential, and every
//! failure a clear, secret-free error.

use sscard_driver::keyprovider::keystore::{Keystore, KeystoreError, KeystoreSecret};
use sscard_driver::keyprovider::{KeyProvider, MemorySequence};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::{crypto, CardId, Region};
use zeroize::Zeroizing;

fn region() -> Region {
    "650200".parse().unwrap()
}
fn pass(s: &str) -> KeystoreSecret {
    KeystoreSecret::Passphrase(Zeroizing::new(s.to_string()))
}
fn test_store() -> Keystore {
    let m = test_master_keys();
    let ps = [KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase];
    let masters: Vec<_> = ps.iter().map(|p| (*p, m.get(*p).clone())).collect();
    Keystore::from_master_keys(region(), "650200000001".parse().unwrap(), &masters)
}

#[test]
fn round_trip_gives_the_city_keys() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks.json");
    test_store().save(&p, &pass("correct horse")).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let k3 = test_master_keys().k3(KeyPurpose::Purchase, region());
    assert!(
        !text.contains(&hex::encode_upper(k3.expose())),
        "keys are encrypted at rest"
    );
    let ks = Keystore::open(&p, &pass("correct horse"), false).unwrap();
    assert_eq!(
        ks.purposes(),
        vec![KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase]
    );
    let mut prov = ks.into_provider(Box::new(MemorySequence::default()));
    // the provider's cryptogram equals the hierarchy's Kc cryptogram
    let id: CardId = "650200D1560000050011223344556677".parse().unwrap();
    let kc = test_master_keys()
        .card_keys(&id)
        .get(KeyPurpose::Ext)
        .clone();
    assert_eq!(
        prov.external_auth_cryptogram(&id, &[7; 8]).unwrap(),
        crypto::auth_cryptogram(&kc, &[7; 8])
    );
    assert!(!prov.supports(KeyPurpose::Load));
}

#[test]
fn wrong_passphrase_corruption_and_wrong_check_value() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks.json");
    test_store().save(&p, &pass("secret-1")).unwrap();
    let e = Keystore::open(&p, &pass("secret-2"), false).err().unwrap();
    assert!(matches!(e, KeystoreError::WrongSecret), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    // a flipped ciphertext byte: the GCM tag fails
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let ct = j["ciphertext"].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if &ct[..1] == "0" { "1" } else { "0" }, &ct[1..]);
    let mut bad = j.clone();
    bad["ciphertext"] = flipped.into();
    std::fs::write(&p, bad.to_string()).unwrap();
    assert!(matches!(
        Keystore::open(&p, &pass("secret-1"), false),
        Err(KeystoreError::WrongSecret)
    ));
    std::fs::write(&p, b"{ not json").unwrap();
    assert!(matches!(
        Keystore::open(&p, &pass("secret-1"), false),
        Err(KeystoreError::Corrupted(_))
    ));
    // a recorded check value that does not match the key
    j["kcv"]["EXT"] = "000000".into();
    std::fs::write(&p, j.to_string()).unwrap();
    let e = Keystore::open(&p, &pass("secret-1"), false).err().unwrap();
    assert!(
        matches!(e, KeystoreError::WrongCheckValue { purpose: "EXT", .. }),
        "{e}"
    );
    assert!(matches!(
        Keystore::open(&d.path().join("missing.json"), &pass("x"), false),
        Err(KeystoreError::Io { .. })
    ));
}

#[test]
fn production_refuses_test_keys_and_accepts_others() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ks.json");
    test_store().save(&p, &pass("pw")).unwrap();
    let e = Keystore::open(&p, &pass("pw"), true).err().unwrap();
    assert!(matches!(e, KeystoreError::TestKeyInProduction(_)), "{e}");
    let real = Keystore::from_master_keys(
        region(),
        "650200000002".parse().unwrap(),
        &[(KeyPurpose::Purchase, Key16::from_bytes(rand::random()))],
    );
    real.save(&p, &pass("pw")).unwrap();
    assert!(Keystore::open(&p, &pass("pw"), true).is_ok());
}

#[test]
fn systemd_credential_file_key() {
    let d = tempfile::tempdir().unwrap();
    let cred = d.path().join("sscard-keystore");
    std::fs::write(&cred, rand::random::<[u8; 32]>()).unwrap();
    let secret = KeystoreSecret::from_credential(&cred).unwrap();
    assert!(matches!(secret, KeystoreSecret::FileKey(_)));
    let p = d.path().join("ks.json");
    test_store().save(&p, &secret).unwrap();
    assert!(Keystore::open(&p, &secret, false).is_ok());
    // a passphrase cannot open a credential-keyed store
    assert!(matches!(
        Keystore::open(&p, &pass("x"), false),
        Err(KeystoreError::Invalid(_))
    ));
    std::fs::write(&cred, b"a passphrase\n").unwrap();
    assert!(matches!(
        KeystoreSecret::from_credential(&cred).unwrap(),
        KeystoreSecret::Passphrase(_)
    ));
}
