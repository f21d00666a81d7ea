//! Download, verify, extract and cache the packages of a catalog kernel.
//!
//! Layout under the cache directory:
//! ```text
//! lock                          held (flock) while fetching or extracting
//! apt/sources.list              private apt configuration (mirror from the host)
//! apt/sources.list.d/           empty: the host's sources are not used
//! apt/lists/, apt/cache/        private index and package cache
//! apt/updated                   stamp of the last successful `apt-get update`
//! debs/<filename>.deb           verified packages (size + sha256 from the catalog)
//! kernels/<release>/root/       all packages of the kernel, unpacked together
//! kernels/<release>/complete    marker: written last, names the files found
//! ```
//! A `.deb` only ever appears under `debs/` after it was verified, and
//! `root/` only counts once `complete` exists, so an interrupted run is
//! simply redone.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::catalog::{AptSettings, CatalogKernel, Package, PackageRole};
use crate::image::inspect_image;
use crate::{KernelError, KernelFormat, Progress, ResolvedKernel, sources};

const MARKER: &str = "complete";
const MARKER_HEADER: &str =
    "# netmem-lab kernel cache: every package below was verified and extracted into root/";
const APT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// How to fetch; tests replace the mirror and switch apt off.
#[derive(Debug, Clone)]
pub(crate) struct FetchOptions {
    /// Try `apt-get download` first (else go straight to the pool).
    pub use_apt: bool,
    /// Mirror URIs; `None` reads them from the host (`sources::host_mirrors`).
    pub mirrors: Option<Vec<String>>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            use_apt: true,
            mirrors: None,
        }
    }
}

struct Fetcher<'a> {
    cache: PathBuf,
    apt: &'a AptSettings,
    opts: FetchOptions,
    progress: &'a mut dyn FnMut(Progress),
    mirrors: Option<Vec<String>>,
    /// `Some(Ok(()))` once the private index is usable, `Some(Err(why))` if not.
    apt_ready: Option<Result<(), String>>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let context = context.into();
    move |e| KernelError::io(context, e)
}

/// Resolves a catalog kernel from the cache, fetching what is missing.
pub(crate) fn resolve_catalog_kernel(
    cache: &Path,
    kernel: &CatalogKernel,
    apt: &AptSettings,
    opts: FetchOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ResolvedKernel, KernelError> {
    let kdir = cache.join("kernels").join(&kernel.release);
    if let Some(r) = read_marker(&kdir, kernel) {
        progress(Progress::Cached {
            id: kernel.id.clone(),
            release: kernel.release.clone(),
        });
        return Ok(r);
    }
    fs::create_dir_all(&kdir).map_err(io_err(format!("cannot create {}", kdir.display())))?;
    let _lock = lock(cache, progress)?;
    // Somebody else may have finished while we waited.
    if let Some(r) = read_marker(&kdir, kernel) {
        progress(Progress::Cached {
            id: kernel.id.clone(),
            release: kernel.release.clone(),
        });
        return Ok(r);
    }
    let mut f = Fetcher {
        cache: cache.to_path_buf(),
        apt,
        opts,
        progress,
        mirrors: None,
        apt_ready: None,
    };
    f.clean_partials();
    let mut debs = Vec::new();
    for role in PackageRole::ALL {
        let pkg = kernel.package(role).ok_or_else(|| KernelError::Catalog {
            detail: format!("kernel '{}' has no {} package", kernel.id, role.as_str()),
        })?;
        debs.push((pkg, f.ensure_deb(pkg)?));
    }
    let r = f.extract(&kdir, kernel, &debs)?;
    (f.progress)(Progress::Ready {
        id: kernel.id.clone(),
        release: kernel.release.clone(),
    });
    Ok(r)
}

/// Takes the cache-wide lock, telling the user if it has to wait.
fn lock(cache: &Path, progress: &mut dyn FnMut(Progress)) -> Result<File, KernelError> {
    let path = cache.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("cannot open lock file {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            progress(Progress::WaitingForLock { path: path.clone() });
            file.lock()
                .map_err(io_err(format!("cannot lock {}", path.display())))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(KernelError::io(
                format!("cannot lock {}", path.display()),
                e,
            ));
        }
    }
    Ok(file)
}

impl Fetcher<'_> {
    fn debs_dir(&self) -> PathBuf {
        self.cache.join("debs")
    }

    /// Leftovers of interrupted runs (we hold the lock, so nobody owns them):
    /// `debs/.partial-*`, `kernels/<release>/*.partial-*`.
    fn clean_partials(&self) {
        let mut dirs = vec![self.debs_dir()];
        if let Ok(rd) = fs::read_dir(self.cache.join("kernels")) {
            dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        for dir in dirs {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(".partial-") {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
        }
    }

    fn mirrors(&mut self) -> Result<Vec<String>, KernelError> {
        if self.mirrors.is_none() {
            self.mirrors = Some(match &self.opts.mirrors {
                Some(m) => m.clone(),
                None => sources::host_mirrors(),
            });
        }
        let m = self.mirrors.clone().unwrap_or_default();
        if m.is_empty() {
            return Err(KernelError::NoMirror {
                detail: format!(
                    "no Debian archive (a URI ending in /debian with a Debian suite) in /etc/apt/sources.list or /etc/apt/sources.list.d/; set {} to a mirror URI",
                    sources::MIRROR_ENV
                ),
            });
        }
        Ok(m)
    }

    /// The verified .deb of `pkg` under `debs/`, downloading it if needed.
    fn ensure_deb(&mut self, pkg: &Package) -> Result<PathBuf, KernelError> {
        let dest = self.debs_dir().join(&pkg.filename);
        if dest.exists() {
            (self.progress)(Progress::Verifying {
                package: pkg.name.clone(),
            });
            verify(&dest, pkg)?;
            return Ok(dest);
        }
        let debs = self.debs_dir();
        fs::create_dir_all(&debs).map_err(io_err(format!("cannot create {}", debs.display())))?;
        let tmp = debs.join(format!(".partial-{}-{}", std::process::id(), pkg.name));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(format!("cannot create {}", tmp.display())))?;
        let result = self.download_into(pkg, &tmp).and_then(|file| {
            (self.progress)(Progress::Verifying {
                package: pkg.name.clone(),
            });
            verify(&file, pkg).map_err(|e| match e {
                KernelError::Checksum {
                    package,
                    expected,
                    actual,
                    ..
                } => KernelError::Checksum {
                    package,
                    expected,
                    actual,
                    path: None,
                },
                e => e,
            })?;
            fs::rename(&file, &dest).map_err(io_err(format!(
                "cannot move {} to {}",
                file.display(),
                dest.display()
            )))
        });
        let _ = fs::remove_dir_all(&tmp);
        result.map(|()| dest)
    }

    /// Downloads `pkg` into the empty directory `dir`; returns the file.
    fn download_into(&mut self, pkg: &Package, dir: &Path) -> Result<PathBuf, KernelError> {
        let mirrors = self.mirrors()?;
        let mut notes = Vec::new();
        if self.opts.use_apt {
            // Before announcing the download, so `Updating` comes first.
            let _ = self.ensure_apt_index(&mirrors[0]);
        }
        (self.progress)(Progress::Downloading {
            package: pkg.name.clone(),
            bytes: pkg.size,
        });
        if self.opts.use_apt {
            match self.apt_download(&mirrors[0], pkg, dir) {
                Ok(file) => return Ok(file),
                Err(why) => notes.push(why),
            }
            // Whatever apt left behind is not ours to verify.
            clear_dir(dir);
        }
        let target = dir.join(&pkg.filename);
        for mirror in &mirrors {
            let url = format!("{mirror}/{}", pkg.pool_path());
            (self.progress)(Progress::FromPool {
                package: pkg.name.clone(),
                url: url.clone(),
            });
            match curl(&url, &target) {
                Ok(()) => return Ok(target),
                Err(why) => notes.push(why),
            }
        }
        Err(KernelError::Download {
            package: pkg.name.clone(),
            detail: notes.join("; "),
        })
    }

    /// `apt-get download name=version` through the private index.
    fn apt_download(&mut self, mirror: &str, pkg: &Package, dir: &Path) -> Result<PathBuf, String> {
        self.ensure_apt_index(mirror)?;
        let out = self
            .apt_command()
            .arg("download")
            .arg(pkg.apt_spec())
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "apt-get download {}: {}",
                pkg.apt_spec(),
                failure(&out)
            ));
        }
        let debs: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        match debs.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!(
                "apt-get download {} left {} .deb files in {}",
                pkg.apt_spec(),
                debs.len(),
                dir.display()
            )),
        }
    }

    fn apt_dir(&self) -> PathBuf {
        self.cache.join("apt")
    }

    fn apt_command(&self) -> Command {
        let a = self.apt_dir();
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        let mut c = Command::new("apt-get");
        c.env("LC_ALL", "C")
            .stdin(Stdio::null())
            .arg("-q")
            .args(["-o", &opt("Dir::Etc::SourceList", &a.join("sources.list"))])
            .args([
                "-o",
                &opt("Dir::Etc::SourceParts", &a.join("sources.list.d")),
            ])
            .args(["-o", &opt("Dir::State::Lists", &a.join("lists"))])
            .args(["-o", &opt("Dir::Cache", &a.join("cache"))])
            .args(["-o", "Debug::NoLocking=1"])
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-o", "Acquire::Languages=none"]);
        c
    }

    /// Writes the private apt configuration and runs `apt-get update` when
    /// the index is missing, older than a day, or for another mirror.
    fn ensure_apt_index(&mut self, mirror: &str) -> Result<(), String> {
        if let Some(r) = &self.apt_ready {
            return r.clone();
        }
        let r = self.prepare_apt_index(mirror);
        self.apt_ready = Some(r.clone());
        r
    }

    fn prepare_apt_index(&mut self, mirror: &str) -> Result<(), String> {
        if !Path::new(&self.apt.keyring).exists() {
            return Err(format!(
                "{} not found (package debian-archive-keyring)",
                self.apt.keyring
            ));
        }
        let a = self.apt_dir();
        for d in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(a.join(d))
                .map_err(|e| format!("cannot create {}: {e}", a.join(d).display()))?;
        }
        let list = apt_sources_list(mirror, self.apt);
        let list_path = a.join("sources.list");
        let stamp = a.join("updated");
        let same_list = fs::read_to_string(&list_path).is_ok_and(|old| old == list);
        if !same_list {
            let _ = fs::remove_file(&stamp);
            fs::write(&list_path, &list)
                .map_err(|e| format!("cannot write {}: {e}", list_path.display()))?;
        }
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < APT_MAX_AGE);
        let has_lists = fs::read_dir(a.join("lists"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false);
        if fresh && has_lists {
            return Ok(());
        }
        (self.progress)(Progress::Updating);
        let out = self
            .apt_command()
            .arg("update")
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if !out.status.success() {
            return Err(format!("apt-get update: {}", failure(&out)));
        }
        // apt-get update exits 0 on some fetch failures; say so only via "W:".
        fs::write(&stamp, b"").map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
        Ok(())
    }

    /// Unpacks all packages into a fresh tree, finds the kernel's files and
    /// writes the marker.
    fn extract(
        &mut self,
        kdir: &Path,
        kernel: &CatalogKernel,
        debs: &[(&Package, PathBuf)],
    ) -> Result<ResolvedKernel, KernelError> {
        let tmp = kdir.join(format!("root.partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(format!("cannot create {}", tmp.display())))?;
        let result = (|| {
            for (pkg, deb) in debs {
                (self.progress)(Progress::Extracting {
                    package: pkg.name.clone(),
                });
                dpkg_extract(pkg, deb, &tmp)?;
            }
            locate(&tmp, kernel)
        })();
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let root = kdir.join("root");
        let marker = kdir.join(MARKER);
        let _ = fs::remove_file(&marker);
        if root.exists() {
            fs::remove_dir_all(&root)
                .map_err(io_err(format!("cannot remove stale {}", root.display())))?;
        }
        fs::rename(&tmp, &root).map_err(io_err(format!(
            "cannot move {} to {}",
            tmp.display(),
            root.display()
        )))?;
        let text = marker_text(kernel, &found);
        let marker_tmp = kdir.join(format!("{MARKER}.partial-{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&marker_tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&marker_tmp, &marker)
        };
        write().map_err(io_err(format!("cannot write {}", marker.display())))?;
        read_marker(kdir, kernel).ok_or_else(|| KernelError::Extract {
            package: kernel.image_package.clone(),
            detail: format!("the cache marker {} does not read back", marker.display()),
        })
    }
}

/// `deb [signed-by=…] <mirror> <suite> <components>` for each suite.
fn apt_sources_list(mirror: &str, apt: &AptSettings) -> String {
    let mut s = String::from("# Private to netmem-lab; the host's apt setup is untouched.\n");
    for suite in &apt.suites {
        // target=Packages: skip Contents, DEP-11 etc. the host may enable.
        s.push_str(&format!(
            "deb [signed-by={} target=Packages] {mirror} {suite} {}\n",
            apt.keyring,
            apt.components.join(" ")
        ));
    }
    s
}

fn clear_dir(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// The last lines of a failed command's stderr (or its exit status).
fn failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    if tail.is_empty() {
        format!("exited with {}", out.status)
    } else {
        tail
    }
}

fn curl(url: &str, target: &Path) -> Result<(), String> {
    let out = Command::new("curl")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .args(["-fsSL", "--retry", "2", "--connect-timeout", "20", "-o"])
        .arg(target)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl for {url}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let _ = fs::remove_file(target);
        Err(format!("curl {url}: {}", failure(&out)))
    }
}

fn dpkg_extract(pkg: &Package, deb: &Path, dir: &Path) -> Result<(), KernelError> {
    let out = Command::new("dpkg-deb")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .arg("-x")
        .arg(deb)
        .arg(dir)
        .output()
        .map_err(|e| KernelError::Extract {
            package: pkg.name.clone(),
            detail: if e.kind() == io::ErrorKind::NotFound {
                "dpkg-deb not found; install dpkg".into()
            } else {
                format!("cannot run dpkg-deb: {e}")
            },
        })?;
    if !out.status.success() {
        return Err(KernelError::Extract {
            package: pkg.name.clone(),
            detail: format!("dpkg-deb -x {}: {}", deb.display(), failure(&out)),
        });
    }
    Ok(())
}

/// Checks size and sha256 of a .deb against the catalog.
pub(crate) fn verify(path: &Path, pkg: &Package) -> Result<(), KernelError> {
    let checksum = |expected: String, actual: String| KernelError::Checksum {
        package: pkg.name.clone(),
        expected,
        actual,
        path: Some(path.to_path_buf()),
    };
    let len = fs::metadata(path)
        .map_err(io_err(format!("cannot stat {}", path.display())))?
        .len();
    if len != pkg.size {
        return Err(checksum(
            format!("{} bytes", pkg.size),
            format!("{len} bytes"),
        ));
    }
    let actual = sha256_file(path)?;
    if actual != pkg.sha256 {
        return Err(checksum(pkg.sha256.clone(), actual));
    }
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let mut f = File::open(path).map_err(io_err(format!("cannot open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Paths of a kernel's files, relative to `root/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    image: PathBuf,
    modules: PathBuf,
    config: Option<PathBuf>,
}

/// Finds vmlinuz, lib/modules/<release> and the config in an unpacked tree
/// (layouts differ between Debian releases, so search rather than assume).
fn locate(root: &Path, kernel: &CatalogKernel) -> Result<Found, KernelError> {
    let rel = &kernel.release;
    let err = |detail: String| KernelError::Extract {
        package: kernel.image_package.clone(),
        detail,
    };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    walk(root, root, &mut files, &mut dirs)
        .map_err(io_err(format!("cannot list {}", root.display())))?;
    files.sort();
    dirs.sort();

    let modules = dirs
        .iter()
        .find(|d| {
            d.ends_with(Path::new("lib/modules").join(rel)) && root.join(d).join("kernel").is_dir()
        })
        .cloned()
        .ok_or_else(|| {
            err(format!(
                "no lib/modules/{rel}/kernel directory in the packages"
            ))
        })?;

    let image_names = [
        format!("vmlinuz-{rel}"),
        "vmlinuz".to_string(),
        format!("vmlinux-{rel}"),
        "vmlinux".to_string(),
        "bzImage".to_string(),
    ];
    let image = image_names
        .iter()
        .find_map(|n| {
            files
                .iter()
                .find(|f| f.file_name().is_some_and(|x| x == n.as_str()))
        })
        .cloned()
        .ok_or_else(|| err(format!("no vmlinuz (or vmlinuz-{rel}) in the packages")))?;
    let format = inspect_image(&root.join(&image))?;
    if let Some(found) = format.release()
        && found != rel
    {
        return Err(err(format!(
            "{} reports release {found}, the catalog says {rel}",
            image.display()
        )));
    }

    let config_names = [format!("config-{rel}"), "config".to_string()];
    let config = config_names.iter().find_map(|n| {
        files
            .iter()
            .find(|f| {
                f.file_name().is_some_and(|x| x == n.as_str())
                    && (n != "config" || f.parent() == Some(modules.as_path()))
            })
            .cloned()
    });
    Ok(Found {
        image,
        modules,
        config,
    })
}

/// Collects regular files and directories under `dir`, relative to `root`,
/// without following symlinks.
fn walk(
    root: &Path,
    dir: &Path,
    files: &mut Vec<PathBuf>,
    dirs: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
        if t.is_dir() {
            dirs.push(rel);
            walk(root, &p, files, dirs)?;
        } else if t.is_file() {
            files.push(rel);
        }
    }
    Ok(())
}

fn packages_line(kernel: &CatalogKernel) -> String {
    PackageRole::ALL
        .iter()
        .filter_map(|r| kernel.package(*r))
        .map(|p| p.sha256.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn marker_text(kernel: &CatalogKernel, found: &Found) -> String {
    let mut s = format!(
        "{MARKER_HEADER}\nrelease={}\npackages={}\nimage={}\nmodules={}\n",
        kernel.release,
        packages_line(kernel),
        found.image.display(),
        found.modules.display()
    );
    if let Some(c) = &found.config {
        s.push_str(&format!("config={}\n", c.display()));
    }
    s
}

/// The cached kernel, if its marker matches the catalog and its files exist.
fn read_marker(kdir: &Path, kernel: &CatalogKernel) -> Option<ResolvedKernel> {
    let text = fs::read_to_string(kdir.join(MARKER)).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    if field("release")? != kernel.release || field("packages")? != packages_line(kernel) {
        return None;
    }
    let root = kdir.join("root");
    let image = root.join(field("image")?);
    let modules = root.join(field("modules")?);
    let config = field("config").map(|c| root.join(c));
    if !modules.join("kernel").is_dir() || config.as_ref().is_some_and(|c| !c.is_file()) {
        return None;
    }
    let format: KernelFormat = inspect_image(&image).ok()?;
    Some(ResolvedKernel {
        spec: kernel.id.clone(),
        release: kernel.release.clone(),
        image,
        format,
        modules_dir: Some(modules),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, catalog};
    use crate::testutil::{TempDir, have};

    fn patched() -> &'static CatalogKernel {
        catalog().get("patched").unwrap()
    }

    #[test]
    fn sources_list_format() {
        let s = apt_sources_list("http://mirror.example/debian", &catalog().apt);
        assert!(s.contains(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://mirror.example/debian trixie-backports main\n"
        ));
        assert!(s.contains(" http://mirror.example/debian sid main\n"));
    }

    #[test]
    fn cached_deb_with_wrong_hash_is_rejected() {
        let dir = TempDir::new("checksum");
        let cache = dir.path();
        let pkg = patched().package(PackageRole::Binary).unwrap();
        fs::create_dir_all(cache.join("debs")).unwrap();
        let fake = cache.join("debs").join(&pkg.filename);

        // Right size, wrong content: a sha256 mismatch.
        fs::write(&fake, vec![0u8; pkg.size as usize]).unwrap();
        let opts = FetchOptions {
            use_apt: false,
            mirrors: Some(vec!["file:///nonexistent/debian".into()]),
        };
        let e = resolve_catalog_kernel(cache, patched(), &catalog().apt, opts.clone(), &mut |_| {})
            .unwrap_err();
        match &e {
            KernelError::Checksum {
                package,
                expected,
                actual,
                path,
            } => {
                assert_eq!(package, &pkg.name);
                assert_eq!(expected, &pkg.sha256);
                assert_ne!(actual, expected);
                assert_eq!(actual.len(), 64);
                assert_eq!(path.as_deref(), Some(fake.as_path()));
            }
            e => panic!("expected Checksum, got {e:?}"),
        }
        assert!(e.to_string().contains("delete it"), "{e}");

        // Wrong size.
        fs::write(&fake, b"not a deb").unwrap();
        let e = resolve_catalog_kernel(cache, patched(), &catalog().apt, opts, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, KernelError::Checksum { .. }), "{e:?}");
        assert!(e.to_string().contains("9 bytes"), "{e}");
        // Nothing got marked complete.
        assert!(
            !cache
                .join("kernels")
                .join(&patched().release)
                .join(MARKER)
                .exists()
        );
    }

    #[test]
    fn verify_accepts_matching_file() {
        let dir = TempDir::new("verify");
        let p = dir.path().join("x.deb");
        fs::write(&p, b"abc").unwrap();
        let mut pkg = patched().package(PackageRole::Base).unwrap().clone();
        pkg.size = 3;
        pkg.sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into();
        verify(&p, &pkg).unwrap();
        pkg.sha256 = pkg.sha256.replace('b', "c");
        assert!(matches!(
            verify(&p, &pkg),
            Err(KernelError::Checksum { .. })
        ));
    }

    #[test]
    fn unreachable_mirror_is_a_download_error() {
        if !have("curl") {
            eprintln!("note: curl not installed, skipping");
            return;
        }
        let dir = TempDir::new("nomirror");
        let opts = FetchOptions {
            use_apt: false,
            mirrors: Some(vec![format!("file://{}/debian", dir.path().display())]),
        };
        let e = resolve_catalog_kernel(dir.path(), patched(), &catalog().apt, opts, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, KernelError::Download { .. }), "{e:?}");
        assert!(e.to_string().contains("linux-binary-7.3.4"), "{e}");
        // No partial download is left where a verified .deb would be.
        let left: Vec<_> = fs::read_dir(dir.path().join("debs"))
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn no_mirror_is_reported() {
        let dir = TempDir::new("nomirror2");
        let opts = FetchOptions {
            use_apt: false,
            mirrors: Some(vec![]),
        };
        let e = resolve_catalog_kernel(dir.path(), patched(), &catalog().apt, opts, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, KernelError::NoMirror { .. }), "{e:?}");
        assert!(e.to_string().contains(sources::MIRROR_ENV), "{e}");
    }

    /// Builds a fake Debian mirror with three packages of a synthetic kernel
    /// (old layout: vmlinuz and config in /boot) and a catalog for it.
    fn fake_mirror(dir: &Path) -> (Catalog, String) {
        let rel = "9.9.9-test-amd64";
        let mirror = dir.join("mirror/debian");
        let pool = "pool/main/t/test";
        fs::create_dir_all(mirror.join(pool)).unwrap();
        let mut toml = format!(
            "[apt]\nsuites = [\"none\"]\ncomponents = [\"main\"]\nkeyring = \"/nonexistent\"\n\n\
             [[kernel]]\nid = \"fake\"\ndescription = \"fake\"\nrelease = \"{rel}\"\n\
             image_package = \"linux-image-{rel}\"\nversion = \"1\"\n"
        );
        let bz =
            crate::image::tests::synthetic_bzimage(Some(&format!("{rel} (test@example) #1 SMP")));
        type Content = Vec<(String, Vec<u8>)>;
        let contents: [(&str, Content); 3] = [
            ("binary", vec![(format!("boot/vmlinuz-{rel}"), bz)]),
            (
                "modules",
                vec![(
                    format!("usr/lib/modules/{rel}/kernel/drivers/net/x.ko.xz"),
                    b"ko".to_vec(),
                )],
            ),
            (
                "base",
                vec![
                    (format!("boot/config-{rel}"), b"CONFIG_X=y\n".to_vec()),
                    (format!("usr/lib/modules/{rel}/modules.order"), b"".to_vec()),
                ],
            ),
        ];
        for (role, files) in contents {
            let name = format!("linux-{role}-{rel}");
            let src = dir.join("src").join(&name);
            for (path, data) in &files {
                let p = src.join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, data).unwrap();
            }
            fs::create_dir_all(src.join("DEBIAN")).unwrap();
            fs::write(
                src.join("DEBIAN/control"),
                format!("Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@example>\nDescription: t\n"),
            )
            .unwrap();
            let filename = format!("{name}_1_amd64.deb");
            let deb = mirror.join(pool).join(&filename);
            let st = Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zgzip", "-b"])
                .arg(&src)
                .arg(&deb)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            let size = fs::metadata(&deb).unwrap().len();
            let sha = sha256_file(&deb).unwrap();
            toml.push_str(&format!(
                "\n[[kernel.package]]\nrole = \"{role}\"\nname = \"{name}\"\nversion = \"1\"\npool = \"{pool}\"\n\
                 filename = \"{filename}\"\nsize = {size}\nsha256 = \"{sha}\"\n"
            ));
        }
        (
            Catalog::parse(&toml).unwrap(),
            format!("file://{}", mirror.display()),
        )
    }

    #[test]
    fn offline_pipeline_with_fake_mirror() {
        if !have("dpkg-deb") || !have("curl") {
            eprintln!("note: dpkg-deb or curl not installed, skipping");
            return;
        }
        let dir = TempDir::new("fakemirror");
        let (cat, mirror) = fake_mirror(dir.path());
        let k = cat.get("fake").unwrap();
        let cache = dir.path().join("cache");
        let opts = FetchOptions {
            use_apt: false,
            mirrors: Some(vec!["file:///nonexistent/debian".into(), mirror]),
        };
        let mut events = Vec::new();
        let r = resolve_catalog_kernel(&cache, k, &cat.apt, opts.clone(), &mut |p| events.push(p))
            .unwrap();
        assert_eq!(r.spec, "fake");
        assert_eq!(r.release, "9.9.9-test-amd64");
        assert!(
            r.image.ends_with("root/boot/vmlinuz-9.9.9-test-amd64"),
            "{}",
            r.image.display()
        );
        assert!(matches!(r.format, KernelFormat::BzImage { .. }));
        let m = r.modules_dir.clone().unwrap();
        assert!(m.ends_with("usr/lib/modules/9.9.9-test-amd64"));
        assert!(m.join("kernel/drivers/net/x.ko.xz").is_file());
        assert!(
            r.config
                .as_ref()
                .unwrap()
                .ends_with("boot/config-9.9.9-test-amd64")
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Progress::Extracting { .. }))
                .count(),
            3
        );
        assert!(events.iter().any(|e| matches!(e, Progress::Ready { .. })));
        // First mirror fails, second serves.
        assert!(events.iter().any(|e| matches!(e, Progress::FromPool { url, .. } if url.starts_with("file:///nonexistent"))));

        // Second run: straight from the marker, no mirror needed.
        let mut events = Vec::new();
        let offline = FetchOptions {
            use_apt: false,
            mirrors: Some(vec![]),
        };
        let r2 = resolve_catalog_kernel(&cache, k, &cat.apt, offline.clone(), &mut |p| {
            events.push(p)
        })
        .unwrap();
        assert_eq!(r2, r);
        assert!(
            matches!(events.as_slice(), [Progress::Cached { .. }]),
            "{events:?}"
        );

        // Interrupted extraction (marker gone, partial tree left): redone from
        // the cached debs, still without a mirror.
        let kdir = cache.join("kernels/9.9.9-test-amd64");
        fs::remove_file(kdir.join(MARKER)).unwrap();
        fs::create_dir_all(kdir.join("root.partial-1")).unwrap();
        fs::remove_file(&r.image).unwrap();
        let r3 = resolve_catalog_kernel(&cache, k, &cat.apt, offline.clone(), &mut |_| {}).unwrap();
        assert_eq!(r3, r);
        assert!(r.image.is_file());
        assert!(!kdir.join("root.partial-1").exists());

        // Files deleted behind the marker's back: not trusted, refetched.
        fs::remove_dir_all(kdir.join("root")).unwrap();
        let r4 = resolve_catalog_kernel(&cache, k, &cat.apt, offline, &mut |_| {}).unwrap();
        assert_eq!(r4, r);
    }

    #[test]
    fn locate_handles_new_layout() {
        let dir = TempDir::new("layout");
        let root = dir.path();
        let rel = &patched().release;
        let m = root.join("usr/lib/modules").join(rel);
        fs::create_dir_all(m.join("kernel/net")).unwrap();
        fs::write(m.join("config"), b"").unwrap();
        fs::write(
            m.join("vmlinuz"),
            crate::image::tests::synthetic_bzimage(Some(&format!("{rel} (x) #1"))),
        )
        .unwrap();
        let found = locate(root, patched()).unwrap();
        assert_eq!(
            found.image,
            Path::new("usr/lib/modules").join(rel).join("vmlinuz")
        );
        assert_eq!(found.modules, Path::new("usr/lib/modules").join(rel));
        assert_eq!(
            found.config,
            Some(Path::new("usr/lib/modules").join(rel).join("config"))
        );

        // An image of another release is refused.
        fs::write(
            m.join("vmlinuz"),
            crate::image::tests::synthetic_bzimage(Some("1.2.3-other (x) #1")),
        )
        .unwrap();
        let e = locate(root, patched()).unwrap_err();
        assert!(e.to_string().contains("1.2.3-other"), "{e}");
    }
}
