//! Processes that tests elsewhere in the crate start: a small tmpfs for a
//! real full disk (Linux, as root) and a sleeper in a process group of its
//! own (a stand-in for a tool a dead process left running).

use std::path::{Path, PathBuf};

/// `sleep 300` in a process group of its own.
pub fn sleeper_in_own_group() -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("sleep").arg("300").process_group(0).spawn().unwrap()
}

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g.
    /// "4m"); `None`, with the reason printed, where mounting is not
    /// permitted.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!("SKIPPED: cannot mount a tmpfs here: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler`; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert!(crate::error::is_disk_full(&e), "filling failed with another error: {e}");
                break;
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
