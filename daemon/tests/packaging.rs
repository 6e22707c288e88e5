//! The systemd files in `packaging/systemd/`, checked by systemd's own tools: the unit
//! verifies cleanly (no unknown keys), the sysusers file makes the user and group, the
//! tmpfiles file makes the directories with their modes, and the unit's paths agree with
//! the daemon's defaults.

use sscard_daemon::config::{BackupConfig, Config, DEFAULT_PATH};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(file)
}

fn unit() -> String {
    std::fs::read_to_string(packaging("sscardd.service")).unwrap()
}

/// The values of `key=` lines.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_verifies_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let u = unit().replace("/usr/bin/sscardd", env!("CARGO_BIN_EXE_sscardd"));
    let path = dir.path().join("sscardd.service");
    std::fs::write(&path, u).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // unknown or misspelt keys are only warned about: none may be there
    let ours: Vec<_> = err
        .lines()
        .filter(|l| l.contains("sscardd.service"))
        .collect();
    assert!(ours.is_empty(), "{err}");
}

#[test]
fn the_unit_runs_as_sscard_hardened_with_the_default_paths() {
    let u = unit();
    assert_eq!(values(&u, "User"), ["sscard"]);
    assert_eq!(values(&u, "Group"), ["sscard"]);
    assert_eq!(
        values(&u, "ExecStart"),
        [format!("/usr/bin/sscardd --config {DEFAULT_PATH}")]
    );
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(values(&u, k), [v], "{k}");
    }
    // the default socket, journal and backups live in the directories the unit makes
    // writable (everything else is read-only under ProtectSystem=strict)
    let c = Config::test("650200".parse().unwrap(), "650200000001".parse().unwrap());
    let run = format!("/run/{}", values(&u, "RuntimeDirectory")[0]);
    let state = format!("/var/lib/{}", values(&u, "StateDirectory")[0]);
    assert!(c.socket.starts_with(&run), "{}", c.socket.display());
    assert!(c.journal.starts_with(&state), "{}", c.journal.display());
    assert!(BackupConfig::default().dir.starts_with(&state));
    assert!(Path::new(DEFAULT_PATH)
        .starts_with(format!("/etc/{}", values(&u, "ConfigurationDirectory")[0])));
    // stopping waits longer than the daemon's grace for the operation in flight
    let stop: u64 = values(&u, "TimeoutStopSec")[0].parse().unwrap();
    assert!(stop > sscard_daemon::daemon::SHUTDOWN_GRACE.as_secs());
}

/// Run a systemd tool on a packaging file inside the scratch root `root`.
fn in_root(tool: &str, extra: &[&str], root: &Path, file: &str) {
    let out = Command::new(tool)
        .args(extra)
        .arg(format!("--root={}", root.display()))
        .arg(packaging(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sysusers_and_tmpfiles_make_the_user_and_the_directories() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    in_root("systemd-sysusers", &[], root.path(), "sscard.sysusers");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("sscard:"))
        .expect("user sscard")
        .split(':')
        .collect();
    assert_eq!(entry[5], "/var/lib/sscard");
    assert_eq!(entry[6], "/usr/sbin/nologin");
    let uid: u32 = entry[2].parse().unwrap();
    let gid: u32 = entry[3].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system user");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group
        .lines()
        .any(|l| l.starts_with(&format!("sscard:x:{gid}:"))));

    in_root(
        "systemd-tmpfiles",
        &["--create"],
        root.path(),
        "sscard.tmpfiles",
    );
    for (dir, mode, owner) in [
        ("etc/sscard", 0o750, 0),
        ("var/lib/sscard", 0o750, uid),
        ("var/lib/sscard/backup", 0o700, uid),
    ] {
        let m = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "{dir}");
        assert_eq!((m.uid(), m.gid()), (owner, gid), "{dir}");
    }
}
