//! The journal on a real file system: its files' modes under umask 000, and a really
//! full (then read-only) disk. Each runs in a child of this test binary: `sh` sets the
//! umask, `unshare -m` gives a mount namespace of its own for a 1 MB tmpfs (root only).

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const DIR: &str = "SSCARD_JOURNAL_TEST_DIR";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Run the ignored test `name` of this binary through `sh -c script` (the script ends
/// with `exec "$0" …`), with [`DIR`] set to `dir`.
fn child(wrap: &[&str], script: &str, name: &str, dir: &Path) {
    let exe = std::env::current_exe().unwrap();
    let st = Command::new(wrap[0])
        .args(&wrap[1..])
        .args(["sh", "-c", script])
        .arg(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(DIR, dir)
        .status()
        .unwrap();
    assert!(st.success(), "{name} failed in its child: {st}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

#[test]
fn files_are_0640_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    child(
        &["env"],
        r#"umask 000 && exec "$0" "$@""#,
        "fs_tests::modes_under_umask_000",
        dir.path(),
    );
}

#[test]
#[ignore = "run by files_are_0640_whatever_the_umask"]
fn modes_under_umask_000() {
    let dir = PathBuf::from(std::env::var_os(DIR).unwrap());
    // the umask really is 000 here: a plain file comes out 0666
    std::fs::write(dir.join("plain"), "x").unwrap();
    assert_eq!(mode(&dir.join("plain")), 0o666);
    let path = dir.join("j.db");
    let mut j = Journal::open(&path).unwrap();
    j.audit("t", "li", "m", "", "", "ok").unwrap();
    for p in [
        path.clone(),
        with_suffix(&path, "-wal"),
        with_suffix(&path, "-shm"),
    ] {
        assert_eq!(mode(&p), FILE_MODE, "{}", p.display());
    }
    drop(j);
    // a world-readable journal left by someone else loses the others' access
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    drop(Journal::open(&path).unwrap());
    assert_eq!(mode(&path), 0o660);
}

#[test]
fn a_full_disk_fails_the_probe_and_the_audit() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    child(
        &["unshare", "-m", "--propagation", "private"],
        r#"mount -t tmpfs -o size=1m sscard-test "$SSCARD_JOURNAL_TEST_DIR" && exec "$0" "$@""#,
        "fs_tests::full_disk_in_a_tmpfs",
        dir.path(),
    );
    // the tmpfs lived in the child's namespace only
    assert!(!dir.path().join("j.db").exists());
}

#[test]
#[ignore = "run by a_full_disk_fails_the_probe_and_the_audit"]
fn full_disk_in_a_tmpfs() {
    let dir = PathBuf::from(std::env::var_os(DIR).unwrap());
    let path = dir.join("j.db");
    let mut j = Journal::open(&path).unwrap();
    for i in 0..20 {
        j.audit("t", "li", "m", "", "", &format!("before {i}"))
            .unwrap();
    }
    j.probe_write().unwrap();
    // fill what is left
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // audit writes fail once the WAL must grow, and say so
    let mut failed = None;
    for i in 0..2000 {
        if let Err(e) = j.audit(
            "t",
            "li",
            "m",
            "",
            "",
            &format!("full {i} {}", "x".repeat(500)),
        ) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("no audit write failed on a full disk");
    assert!(e.to_string().contains("full"), "{e}");
    let e = j
        .probe_write()
        .expect_err("the probe passed on a full disk");
    assert!(e.to_string().contains("full"), "{e}");
    // room again: both work and the chain holds only what was written
    std::fs::remove_file(&filler).unwrap();
    j.probe_write().unwrap();
    j.audit("t", "li", "m", "", "", "after").unwrap();
    assert_eq!(verify(&path).unwrap().findings, []);
    // the same journal seen through a read-only mount fails the probe and the audit
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    for args in [&["--bind"][..], &["-o", "remount,bind,ro"][..]] {
        let st = Command::new("mount")
            .args(args)
            .arg(if args.len() == 1 { &dir } else { &ro })
            .arg(&ro)
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?}");
    }
    // (SQLite opens it: the -shm file exists while `j` has it open)
    let mut r = Journal::open(&ro.join("j.db")).unwrap();
    r.check().unwrap();
    let e = r
        .probe_write()
        .expect_err("the probe passed on a read-only journal");
    assert!(e.to_string().contains("readonly"), "{e}");
    assert!(r.audit("t", "li", "m", "", "", "ro").is_err());
}
