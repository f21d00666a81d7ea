//! Per-run scratch directories under the cache, removed on every exit path we
//! control; directories of runs that were killed outright are swept by the
//! next run (their owner pid is gone).

use std::path::{Path, PathBuf};

pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    unsafe {
        libc::kill(pid, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

impl RunDir {
    pub fn create(cache: &Path) -> std::io::Result<RunDir> {
        let runs = cache.join("runs");
        std::fs::create_dir_all(&runs)?;
        sweep(&runs);
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = runs.join(format!("{pid}-{nanos:08x}"));
        std::fs::create_dir_all(&path)?;
        Ok(RunDir {
            path,
            keep: std::env::var_os("NETMEM_LAB_KEEP_RUN").is_some(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Remove run directories whose owning process no longer exists.
pub fn sweep(runs: &Path) {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid != std::process::id() as i32 && !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("run directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
