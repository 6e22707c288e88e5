//! `sscard keys`: keystores written 0600 whatever the umask, check values that match the
//! contract's vectors (read from `shared/spec/vectors.json` at run time), and keys shown
//! only with `--reveal` onto a terminal.

use sscard_firmware_tests::testbed::bin_path;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn vectors() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("vectors.json")).expect("JSON")
}

fn sh(cmd: &str) -> (i32, String, String) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_keystore_is_0600_whatever_the_umask_and_shows_its_check_values() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "office passphrase\n").unwrap();
    let ks = dir.path().join("office.keystore");
    let bin = bin_path("sscard");
    let (code, _, err) = sh(&format!(
        "umask 000; {} keys create --out {} --region 650200 --terminal-id 650200000009 \
         --purposes all --test-keys --secret-file {}",
        bin.display(),
        ks.display(),
        secret.display()
    ));
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(&ks).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keystore mode {mode:o}");
    // the old name still works
    let (code, _, err) = sh(&format!(
        "umask 022; {} keystore create --out {}.2 --region 650200 --terminal-id 650200000009 \
         --test-keys --secret-file {}",
        bin.display(),
        ks.display(),
        secret.display()
    ));
    assert_eq!(code, 0, "{err}");
    let show = format!(
        "{} --json keys show --keystore {} --secret-file {}",
        bin.display(),
        ks.display(),
        secret.display()
    );
    let (code, out, err) = sh(&show);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["region"], "650200");
    assert_eq!(j["terminal_id"], "650200000009");
    let v = vectors();
    let keys = j["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 7);
    for k in keys {
        let p = k["purpose"].as_str().unwrap();
        let k3 = v["hierarchy"]["keys"][p]["K3"].as_str().unwrap();
        let k3 = sscard_driver::Key16::from_hex(k3).unwrap();
        assert_eq!(
            k["kcv"].as_str().unwrap(),
            hex::encode_upper(sscard_driver::crypto::kcv(&k3)),
            "{p}"
        );
        assert!(k.get("key").is_none(), "no key without --reveal: {k}");
        assert!(!out.contains(v["hierarchy"]["keys"][p]["K3"].as_str().unwrap()));
    }
    // --reveal into a pipe is refused, and says why
    let (code, out, err) = sh(&format!("{show} --reveal | cat"));
    assert_eq!(code, 0, "the pipeline's cat");
    assert!(out.contains("only onto a terminal"), "{out}{err}");
    let (code, _, _) = sh(&format!("{show} --reveal > {}/out", dir.path().display()));
    assert_eq!(code, 2);
    // a wrong passphrase is a file error that names no key
    std::fs::write(&secret, "another passphrase\n").unwrap();
    let (code, out, err) = sh(&show);
    assert_eq!(code, 5, "{out}{err}");
}

#[test]
fn derive_gives_the_hierarchy_of_the_vectors_and_reveals_only_onto_a_terminal() {
    let v = vectors();
    let h = &v["hierarchy"];
    let region = h["region"].as_str().unwrap();
    let card = h["card_id"].as_str().unwrap();
    let bin = bin_path("sscard");
    let base = format!(
        "{} --json keys derive --region {region} --purposes all --test-keys --card-id {card}",
        bin.display()
    );
    let (code, out, err) = sh(&base);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = j["keys"].as_array().unwrap();
    assert_eq!(rows.len(), 7 * 4, "K1, K2, K3 and Kc of seven purposes");
    for r in rows.iter().filter(|r| r["level"] == "Kc") {
        let p = r["purpose"].as_str().unwrap();
        assert_eq!(r["kcv"], h["keys"][p]["KCV_Kc"], "{p}");
    }
    // onto a terminal (script(1) gives the command a pty), --reveal shows K2 and K3
    let (code, out, err) = sh(&format!("script -qec '{base} --reveal' /dev/null"));
    assert_eq!(code, 0, "{out}{err}");
    for p in ["EXT", "MAINT", "TAC"] {
        for level in ["K2", "K3", "Kc"] {
            let k = h["keys"][p][level].as_str().unwrap();
            assert!(out.contains(k), "{p} {level} not revealed: {out}");
        }
    }
    // a card of another region is a usage error
    let (code, _, err) = sh(&format!(
        "{} keys derive --region 110100 --test-keys --card-id {card}",
        bin.display()
    ));
    assert_eq!(code, 2, "{err}");
}
