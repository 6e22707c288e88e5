//! The `sscard` binary end to end: through the private pcscd with a virtual card, and
//! with no pcscd at all. Run under `scripts/with-pcscd` (scripts/test does).

use sscard_firmware_tests::testbed::{bin_path, Vcard};
use std::process::Command;

fn sscard(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin_path("sscard"))
        .args(args)
        .output()
        .expect("run sscard");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn reads_the_virtual_card_through_pcscd() {
    let v = Vcard::start(&["--t0"]);
    let (code, out, err) = sscard(&["read", "--reader", v.reader()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("张三"), "{out}");
    assert!(out.contains("650200D1560000050011223344556677"), "{out}");
    let (code, out, _) = sscard(&["--json", "read", "--reader", v.reader()]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["card_number"], "A65020001");
    assert_eq!(j["expiry_date"], "2036-01-01");
    let (code, out, _) = sscard(&["atr", "--reader", v.reader()]);
    assert_eq!(code, 0);
    assert!(out.contains("protocols offered: T=0"), "{out}");
    let (code, out, _) = sscard(&["--json", "readers"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let me = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == v.reader())
        .unwrap();
    assert_eq!(me["card_present"], true);
}

#[test]
fn offline_commands_and_usage_errors() {
    let (code, out, _) = sscard(&["sw", "63C1"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 tries left"), "{out}");
    assert_eq!(sscard(&["sw", "XYZ"]).0, 2);
    let (code, out, _) = sscard(&["atr", "3B6A00005353432D4145532076 31"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SSC-AES v1"), "{out}");
    assert_eq!(sscard(&["atr", "3C00"]).0, 1);
}

#[test]
fn no_pcscd_is_a_clear_error() {
    // a mount namespace where /run/pcscd is empty: no pcscd to talk to
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /run/pcscd && exec {} readers",
            bin_path("sscard").display()
        ))
        .output()
        .expect("unshare");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("pcscd"), "{err}");
}
