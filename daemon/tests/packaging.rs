//! What ships: the systemd files in `packaging/systemd/`, checked by systemd's own
//! tools (the unit verifies cleanly, no unknown keys; the sysusers file makes the user
//! and group; the tmpfiles file makes the directories with their modes; the unit's paths
//! agree with the daemon's defaults), and the crates `sscardd` and `sscard` link
//! (`cargo tree`): the emulator without the test bed, the journal without the daemon.

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
        ("DevicePolicy", "closed"),
        ("SupplementaryGroups", "dialout"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(values(&u, k), [v], "{k}");
    }
    // no device but the serial ports card readers hang on (PrivateDevices would hide
    // them all)
    assert_eq!(
        values(&u, "DeviceAllow"),
        ["char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"]
    );
    assert!(values(&u, "PrivateDevices").is_empty());
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

/// The workspace's root, where `cargo tree` runs.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The packages that `package` links when built to ship: `cargo tree -e normal` (no
/// dev- or build-dependencies), down to `depth` levels (all when `None`), by name.
fn linked(package: &str, depth: Option<u32>) -> Vec<String> {
    // the cargo running this test, else the one that built it, else the one on PATH
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["-p", package]);
    if let Some(d) = depth {
        cmd.args(["--depth", &d.to_string()]);
    }
    let out = cmd.output().expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The workspace's own crates among `names`.
fn ours(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("sscard-"))
        .collect()
}

#[test]
fn sscardd_links_the_emulator_not_the_test_bed() {
    let d = linked("sscard-daemon", None);
    let ours = ours(&d);
    for c in ["sscard-driver", "sscard-emulator", "sscard-journal"] {
        assert!(
            d.contains(&c.to_string()),
            "sscard-daemon without {c}: {ours:?}"
        );
    }
    assert!(
        !d.contains(&"sscard-firmware-tests".to_string()),
        "sscardd links the test bed: {ours:?}"
    );
}

#[test]
fn sscard_links_the_journal_not_the_daemon() {
    let c = linked("sscard-cli", None);
    let ours = ours(&c);
    assert!(c.contains(&"sscard-journal".to_string()), "{ours:?}");
    for not in ["sscard-daemon", "sscard-firmware-tests", "sscard-emulator"] {
        assert!(
            !c.contains(&not.to_string()),
            "sscard links {not}: {ours:?}"
        );
    }
}

#[test]
fn the_emulator_has_no_unsafe_code_and_no_libc() {
    let direct = linked("sscard-emulator", Some(1));
    assert!(direct.contains(&"sscard-driver".to_string()), "{direct:?}");
    for not in ["libc", "sscard-firmware-tests", "tokio"] {
        assert!(
            !direct.contains(&not.to_string()),
            "sscard-emulator depends on {not}: {direct:?}"
        );
    }
    for lib in [
        "emulator/src/lib.rs",
        "journal/src/lib.rs",
        "daemon/src/lib.rs",
    ] {
        let text = std::fs::read_to_string(workspace().join(lib)).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == "#![forbid(unsafe_code)]"),
            "{lib} does not forbid unsafe code"
        );
    }
    // nothing in the emulator starts a process or opens a socket
    for f in walk(&workspace().join("emulator/src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        for what in [
            "process::Command",
            "Command::new(",
            "TcpStream",
            "UnixStream",
        ] {
            assert!(!text.contains(what), "{} uses {what}", f.display());
        }
    }
}

/// The `.rs` files under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}
