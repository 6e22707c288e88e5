//! What `sscardd` does to files outside its journal: `--socket` never deletes what is
//! not a stale socket, and the demo modes (`--simulate`, `--dev`) never back up into
//! the configured `backup.dir`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A child killed on drop, and its stdout (kept open: a closed one is not the test).
struct Proc(Child, #[allow(dead_code)] BufReader<ChildStdout>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sscardd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sscardd"));
    c.env("SSCARD_LOG", "warn");
    c
}

/// Start, wait for the `socket:` line.
fn serve(mut cmd: Command) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("socket: "), "{line:?}");
    Proc(child, out)
}

/// The backup files in `dir`, waiting up to 20 s for the first.
fn backups(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..200 {
        let v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".db"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !v.is_empty() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no backup in {} after 20 s", dir.display());
}

/// A configuration whose backups go daily to `prod` (taken at start).
fn config(dir: &Path, prod: &Path) -> PathBuf {
    let p = dir.join("sscardd.toml");
    std::fs::write(
        &p,
        format!(
            "terminal_id = \"650200000001\"\nregion = \"650200\"\n\
             [backup]\nschedule = \"daily\"\ndir = \"{}\"\n",
            prod.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_file_at_the_socket_path_is_kept_and_the_daemon_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("journal-copy.db");
    std::fs::write(&file, vec![7u8; 172 * 1024]).unwrap();
    let out = sscardd()
        .arg("--simulate")
        .arg("--socket")
        .arg(&file)
        .arg("--journal")
        .arg(tmp.path().join("j.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), vec![7u8; 172 * 1024]);
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_and_the_first_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    let run = |j: &str| {
        let mut c = sscardd();
        c.arg("--simulate")
            .arg("--socket")
            .arg(&sock)
            .arg("--journal")
            .arg(tmp.path().join(j));
        c
    };
    let _first = serve(run("a.db"));
    let out = run("b.db").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another daemon"), "{err}");
    std::os::unix::net::UnixStream::connect(&sock).expect("the first still serves");
}

#[test]
fn a_demo_with_an_explicit_journal_backs_up_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let prod = tmp.path().join("prod-backup");
    let cfg = config(tmp.path(), &prod);
    let jdir = tmp.path().join("demo");
    std::fs::create_dir(&jdir).unwrap();
    let mut c = sscardd();
    c.arg("--simulate")
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .arg("--journal")
        .arg(jdir.join("journal.db"));
    let _d = serve(c);
    let b = backups(&jdir.join("backup"));
    assert_eq!(b.len(), 1);
    assert!(!prod.exists(), "the configured backup.dir was used");
}

#[test]
fn a_demo_with_its_temporary_journal_backs_up_in_its_temporary_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let prod = tmp.path().join("prod-backup");
    let cfg = config(tmp.path(), &prod);
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let mut c = sscardd();
    c.env("TMPDIR", &scratch)
        .arg("--simulate")
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(tmp.path().join("s.sock"));
    let d = serve(c);
    let demo = scratch.join(format!("sscardd-{}", d.0.id()));
    assert_eq!(backups(&demo.join("backup")).len(), 1);
    assert!(demo.join("journal.db").exists());
    assert!(!prod.exists(), "the configured backup.dir was used");
}
