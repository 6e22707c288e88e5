//! Test fixtures for end-to-end tests through the real pcscd: a lease on one of the
//! private pcscd's vpcd reader slots, and `sscard-vcard` processes plugged into it, each
//! cleaned up on drop.
//!
//! Tests run inside `scripts/with-pcscd` (what `scripts/test` does): a private pcscd in
//! a mount namespace with `SSCARD_VPCD_SLOTS` vpcd slots on ports from
//! `SSCARD_VPCD_BASE_PORT`. Each test leases a free slot through a file lock, so tests
//! in parallel (threads or processes) never share a reader.

use sscard_driver::transport::pcsc::{PcscCard, PcscContext, ShareMode};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the test bed is not usable.
pub fn require_private_pcscd() -> (PathBuf, u16, usize) {
    let fail = || -> ! {
        panic!(
            "this test needs the private pcscd of the test bed: run it under scripts/with-pcscd \
             (scripts/test does), e.g. `scripts/with-pcscd cargo test`"
        )
    };
    if std::env::var("SSCARD_PCSCD").as_deref() != Ok("private") {
        fail()
    }
    let dir = std::env::var("SSCARD_PCSCD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| fail());
    let base = std::env::var("SSCARD_VPCD_BASE_PORT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fail());
    let n = std::env::var("SSCARD_VPCD_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fail());
    (dir, base, n)
}

/// Exclusive use of one vpcd slot for as long as it lives.
pub struct SlotLease {
    _lock: File,
    pub index: usize,
    pub port: u16,
    pub reader: String,
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own; the lock is released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl SlotLease {
    fn try_slot(dir: &std::path::Path, base: u16, i: usize) -> Option<SlotLease> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("slot-{i}.lock")))
            .expect("slot lock file");
        try_lock(&f).then(|| SlotLease {
            _lock: f,
            index: i,
            port: base + i as u16,
            reader: reader_name(i),
        })
    }

    /// Lease a free slot, waiting up to two minutes for one.
    pub fn acquire() -> SlotLease {
        let (dir, base, n) = require_private_pcscd();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(l) = (0..n).find_map(|i| Self::try_slot(&dir, base, i)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no free vpcd slot for two minutes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lease every slot at once (for a program that sees all readers, like the
    /// daemon), waiting up to five minutes. All or none are held at any time, so two
    /// such tests never hold one slot each and wait for each other.
    pub fn acquire_all() -> Vec<SlotLease> {
        let (dir, base, n) = require_private_pcscd();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut held = Vec::new();
            for i in 0..n {
                match Self::try_slot(&dir, base, i) {
                    Some(l) => held.push(l),
                    None => break,
                }
            }
            if held.len() == n {
                return held;
            }
            drop(held);
            assert!(
                Instant::now() < deadline,
                "the vpcd slots were not all free together for five minutes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The name pcscd gives slot `i` of the test bed's reader.conf.
pub fn reader_name(i: usize) -> String {
    format!("sscard {} 00 {:02}", i / 2, i % 2)
}

/// Where the workspace's binaries are (`target/<profile>/`), from the test binary's path.
pub fn bin_path(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "SSCARD_BIN_{}",
        name.replace('-', "_").to_uppercase()
    )) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built (cargo build --workspace builds it)",
        p.display()
    );
    p
}

/// An `sscard-vcard` process serving a card in a leased slot; killed on drop.
pub struct Vcard {
    child: Option<Child>,
    lease: Option<SlotLease>,
    reader: String,
}

impl Vcard {
    /// Start `sscard-vcard` in a fresh slot with extra `args`, and wait until pcscd sees
    /// the card.
    pub fn start(args: &[&str]) -> Vcard {
        let lease = SlotLease::acquire();
        Self::start_in(lease, args)
    }

    /// Start in a given slot.
    pub fn start_in(lease: SlotLease, args: &[&str]) -> Vcard {
        let ctx = PcscContext::establish().expect("private pcscd");
        wait_present(&ctx, &lease.reader, false, Duration::from_secs(10));
        let child = Command::new(bin_path("sscard-vcard"))
            .arg("--port")
            .arg(lease.port.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sscard-vcard");
        let reader = lease.reader.clone();
        let v = Vcard {
            child: Some(child),
            lease: Some(lease),
            reader,
        };
        wait_present(&ctx, &v.reader, true, Duration::from_secs(10));
        v
    }

    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Connect to the card (shared, any protocol).
    pub fn connect(&self) -> PcscCard {
        let ctx = PcscContext::establish().expect("private pcscd");
        ctx.connect(&self.reader, ShareMode::Shared, None)
            .expect("connect to the virtual card")
    }

    /// Stop the card program: the card leaves the reader.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if let Ok(ctx) = PcscContext::establish() {
                wait_present(&ctx, &self.reader, false, Duration::from_secs(10));
            }
        }
    }
}

impl Vcard {
    /// Stop the card program and keep the slot, e.g. to start another card in it.
    pub fn into_lease(mut self) -> SlotLease {
        self.stop();
        match self.lease.take() {
            Some(l) => l,
            None => unreachable!("a running Vcard holds its lease"),
        }
    }
}

impl Drop for Vcard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until the reader reports a card present (or absent).
pub fn wait_present(ctx: &PcscContext, reader: &str, present: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = ctx
            .reader_states()
            .ok()
            .and_then(|v| v.into_iter().find(|r| r.name == reader))
            .map(|r| r.card_present);
        if now == Some(present) || (!present && now.is_none()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reader {reader:?} did not become {} (state {now:?})",
            if present { "present" } else { "empty" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The emulated serial readers `scripts/with-pcscd` started (`SSCARD_SERIAL_READERS`),
/// driven by pcscd through libccid's `libccidtwin`, by their names: the model, or
/// `<model>-t1` for an entry `<model>:t1` (a T=1 card).
pub fn serial_models() -> Vec<String> {
    std::env::var("SSCARD_SERIAL_READERS")
        .unwrap_or_default()
        .split_whitespace()
        .map(|e| e.replace(':', "-"))
        .collect()
}

/// Exclusive use of one of the test bed's emulated serial readers, its card put in the
/// reader (slot 0) for as long as the lease lives and taken out on drop.
///
/// It also holds one vpcd slot: the tests that see every reader (the daemon's) lease
/// all vpcd slots, so they never run while a serial reader holds a card.
pub struct SerialReaderLease {
    _lock: File,
    _vpcd: SlotLease,
    pub model: String,
    pid: libc::pid_t,
    readers: Vec<String>,
    dir: PathBuf,
}

impl SerialReaderLease {
    /// Lease the emulated `model` reader (waiting up to two minutes), put its card in
    /// and wait until pcscd sees it.
    pub fn acquire(model: &str) -> SerialReaderLease {
        let (dir, _, _) = require_private_pcscd();
        assert!(
            serial_models().iter().any(|m| m == model),
            "scripts/with-pcscd started no emulated {model} reader (SSCARD_SERIAL_READERS={:?})",
            std::env::var("SSCARD_SERIAL_READERS").unwrap_or_default()
        );
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("serial-{model}.lock")))
            .expect("serial reader lock file");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !try_lock(&f) {
            assert!(
                Instant::now() < deadline,
                "the {model} reader was not free for two minutes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let vpcd = SlotLease::acquire();
        let pid = std::fs::read_to_string(dir.join(format!("serial-{model}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("the emulated reader's pid file");
        let ctx = PcscContext::establish().expect("private pcscd");
        let prefix = format!("sscard serial {model} ");
        let mut readers: Vec<String> = ctx
            .reader_states()
            .expect("reader states")
            .into_iter()
            .map(|r| r.name)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        readers.sort();
        assert!(
            !readers.is_empty(),
            "pcscd has no {prefix:?} reader: did libccid open the emulated reader? (see pcscd.log)"
        );
        let lease = SerialReaderLease {
            _lock: f,
            _vpcd: vpcd,
            model: model.to_string(),
            pid,
            readers,
            dir,
        };
        lease.insert();
        lease
    }

    /// pcscd's name for slot `i` of the reader.
    pub fn reader(&self, slot: usize) -> &str {
        &self.readers[slot]
    }

    /// Every slot's reader name.
    pub fn readers(&self) -> &[String] {
        &self.readers
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of the emulator with-pcscd started.
        let r = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(r, 0, "signal to the emulated {} reader", self.model);
    }

    /// Put the card in slot 0 (SIGUSR2) and wait until pcscd sees it.
    pub fn insert(&self) {
        self.signal(libc::SIGUSR2);
        let ctx = PcscContext::establish().expect("private pcscd");
        wait_present(&ctx, self.reader(0), true, Duration::from_secs(10));
    }

    /// Take the card out of slot 0 (SIGUSR1) and wait until pcscd sees it gone.
    pub fn remove(&self) {
        self.signal(libc::SIGUSR1);
        if let Ok(ctx) = PcscContext::establish() {
            wait_present(&ctx, self.reader(0), false, Duration::from_secs(10));
        }
    }

    /// What the holder types at the next prompts of a GemPCPinPad's keypad (the first
    /// line of `<dir>/keypad-<model>`: PINs separated by spaces, `cancel` or
    /// `timeout`; docs/emulator.md).
    pub fn keypad(&self, line: &str) {
        std::fs::write(
            self.dir.join(format!("keypad-{}", self.model)),
            format!("{line}\n"),
        )
        .expect("the emulated keypad's file");
    }

    /// Connect to the card in slot 0 (shared, any protocol).
    pub fn connect(&self) -> PcscCard {
        let ctx = PcscContext::establish().expect("private pcscd");
        ctx.connect(self.reader(0), ShareMode::Shared, None)
            .expect("connect to the card in the emulated serial reader")
    }
}

impl Drop for SerialReaderLease {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; failures are left alone on drop.
        unsafe { libc::kill(self.pid, libc::SIGUSR1) };
        if let Ok(ctx) = PcscContext::establish() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let present = ctx
                    .reader_states()
                    .ok()
                    .and_then(|v| v.into_iter().find(|r| r.name == self.readers[0]))
                    .map(|r| r.card_present);
                if present != Some(true) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// An `sscard-vcard --serial-reader` process: an emulated serial reader on a
/// pseudo-terminal, with the default T=0 card in slot 0; killed on drop.
pub struct SerialVcard {
    child: Child,
    /// The host side of the pseudo-terminal (what a driver opens).
    pub pty: PathBuf,
}

impl SerialVcard {
    /// Start one of model `model` (`GemPCTwin`, `GemCorePOSPro`, …) with extra `args`.
    pub fn start(model: &str, args: &[&str]) -> SerialVcard {
        Self::start_card(model, true, args)
    }

    /// The same with the T=1 card (no `--t0`: the T=1 ATR unless `args` give one).
    pub fn start_t1(model: &str, args: &[&str]) -> SerialVcard {
        Self::start_card(model, false, args)
    }

    fn start_card(model: &str, t0: bool, args: &[&str]) -> SerialVcard {
        let mut child = Command::new(bin_path("sscard-vcard"))
            .args(["--serial-reader", "--model", model])
            .args(if t0 { &["--t0"][..] } else { &[][..] })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sscard-vcard");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let first = lines
            .next()
            .expect("a first line")
            .expect("stdout readable");
        let pty = PathBuf::from(
            first
                .strip_prefix("pty: ")
                .unwrap_or_else(|| panic!("first line {first:?}")),
        );
        // keep the pipe drained, whatever it prints later
        std::thread::spawn(move || lines.for_each(drop));
        SerialVcard { child, pty }
    }

    /// Send the emulator a signal: `USR1` pulls the card in slot 0 out, `USR2` puts it
    /// back.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for SerialVcard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pharmacy terminal's software keys in the test bed: EXT, INT and PURCHASE of the
/// test master keys for region 650200, terminal 650200000001.
pub fn pharmacy_keys() -> sscard_driver::keyprovider::SoftwareKeys {
    use sscard_driver::keys::KeyPurpose;
    sscard_driver::keyprovider::SoftwareKeys::test_keys(
        "650200".parse().expect("a region"),
        "650200000001".parse().expect("a terminal id"),
        &[KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase],
    )
}
