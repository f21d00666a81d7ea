//! Kernel catalog: Debian package ids, private apt fetch, sha256 check, extraction, cache.
//!
//! `resolve("patched")` turns a kernel id from [`catalog()`] into files on
//! disk: the three Debian packages a `linux-image` is split into (binary,
//! modules, base) are downloaded once through a private apt configuration
//! (falling back to the mirror's pool for packages the index no longer
//! lists), checked against the catalog's size and sha256, unpacked together
//! and cached under [`cache_dir()`]. Later runs need no network.
//!
//! `resolve("/path/to/bzImage")` accepts a user's own kernel instead
//! (bzImage or ELF vmlinux), with an optional modules directory.
//!
//! The Debian mirror is the one the host's apt already uses (see
//! [`sources`]); `NETMEM_LAB_DEBIAN_MIRROR` overrides it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

mod catalog;
mod error;
mod fetch;
mod image;
pub mod sources;

pub use catalog::{AptSettings, Catalog, CatalogKernel, Package, PackageRole, catalog};
pub use error::KernelError;
pub use image::{KernelFormat, inspect_image};

/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "NETMEM_LAB_CACHE";

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedKernel {
    /// `patched`, `baseline` or the user's path, as given.
    pub spec: String,
    /// `uname -r`, e.g. `7.3.4+deb13-cloud-amd64`; for a path, the bzImage's
    /// version string's first word (ELF: the `Linux version` banner), or
    /// `unknown`.
    pub release: String,
    /// The bzImage (vmlinuz) or ELF vmlinux.
    pub image: PathBuf,
    /// What `image` is.
    pub format: KernelFormat,
    /// `…/lib/modules/<release>` (contains `kernel/…`); for a path, the
    /// `--modules` directory if one was given.
    pub modules_dir: Option<PathBuf>,
    /// The kernel's config file, if known.
    pub config: Option<PathBuf>,
}

/// What [`resolve`] is doing, for a progress line. Display gives a
/// human-readable sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Another process holds the cache lock; waiting for it.
    WaitingForLock { path: PathBuf },
    /// Refreshing the private apt index (`apt-get update`).
    Updating,
    /// Downloading a package of `bytes` bytes.
    Downloading { package: String, bytes: u64 },
    /// Fetching a package straight from the mirror's pool (the index has no
    /// candidate for it, or apt is unavailable).
    FromPool { package: String, url: String },
    /// Checking size and sha256 of a package.
    Verifying { package: String },
    /// Unpacking a package.
    Extracting { package: String },
    /// The kernel was already in the cache; nothing was downloaded.
    Cached { id: String, release: String },
    /// The kernel was fetched and unpacked into the cache.
    Ready { id: String, release: String },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::WaitingForLock { path } => {
                write!(f, "waiting for another netmem-lab using {}", path.display())
            }
            Progress::Updating => write!(f, "updating the private Debian package index"),
            Progress::Downloading { package, bytes } => {
                write!(f, "downloading {package} ({:.1} MB)", *bytes as f64 / 1e6)
            }
            Progress::FromPool { package, url } => {
                write!(f, "downloading {package} from the pool: {url}")
            }
            Progress::Verifying { package } => write!(f, "verifying {package}"),
            Progress::Extracting { package } => write!(f, "extracting {package}"),
            Progress::Cached { id, release } => write!(f, "kernel {id} ({release}) is cached"),
            Progress::Ready { id, release } => write!(f, "kernel {id} ({release}) is ready"),
        }
    }
}

/// Where downloads and unpacked kernels live: `$NETMEM_LAB_CACHE`, else
/// `$XDG_CACHE_HOME/netmem-lab`, else `$HOME/.cache/netmem-lab`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k))
}

fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var(CACHE_ENV) {
        return d;
    }
    if let Some(d) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return d.join("netmem-lab");
    }
    if let Some(h) = var("HOME") {
        return h.join(".cache").join("netmem-lab");
    }
    std::env::temp_dir().join("netmem-lab-cache")
}

/// Whether a `--kernel` value names a file rather than a catalog id: it
/// contains `/` or an existing file has that name.
pub fn is_path_spec(spec: &str) -> bool {
    spec.contains('/') || Path::new(spec).is_file()
}

/// Resolves `spec` (a catalog id or a PATH to a kernel image) into files on
/// disk, using [`cache_dir()`].
///
/// For a catalog id, `modules` (if given) replaces the packaged modules
/// directory. For a PATH, `modules` is the modules directory to use; a
/// directory holding `<release>/` (like `/lib/modules`) is accepted too.
pub fn resolve(
    spec: &str,
    modules: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ResolvedKernel, KernelError> {
    resolve_in(&cache_dir(), spec, modules, progress)
}

/// [`resolve`] with an explicit cache directory.
pub fn resolve_in(
    cache: &Path,
    spec: &str,
    modules: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ResolvedKernel, KernelError> {
    if is_path_spec(spec) {
        return resolve_path(spec, modules);
    }
    let cat = catalog();
    let kernel = cat.get(spec).ok_or_else(|| KernelError::UnknownId {
        id: spec.to_string(),
        known: cat.ids(),
    })?;
    let mut r = fetch::resolve_catalog_kernel(
        cache,
        kernel,
        &cat.apt,
        fetch::FetchOptions::default(),
        progress,
    )?;
    if let Some(m) = modules {
        r.modules_dir = Some(modules_dir(m, &r.release)?);
    }
    Ok(r)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A user-supplied modules directory; `/lib/modules`-style parents are
/// narrowed to `<release>/`.
fn modules_dir(dir: &Path, release: &str) -> Result<PathBuf, KernelError> {
    if !dir.is_dir() {
        return Err(KernelError::Missing {
            path: dir.to_path_buf(),
        });
    }
    let inner = dir.join(release);
    if !dir.join("kernel").is_dir() && inner.join("kernel").is_dir() {
        return Ok(absolute(&inner));
    }
    Ok(absolute(dir))
}

fn resolve_path(spec: &str, modules: Option<&Path>) -> Result<ResolvedKernel, KernelError> {
    let path = Path::new(spec);
    if !path.exists() {
        return Err(KernelError::Missing {
            path: path.to_path_buf(),
        });
    }
    let format = inspect_image(path)?;
    let release = image::image_release(path, &format).unwrap_or_else(|| "unknown".to_string());
    let modules_dir = modules.map(|m| modules_dir(m, &release)).transpose()?;
    let config = find_config(path, &release, modules_dir.as_deref());
    Ok(ResolvedKernel {
        spec: spec.to_string(),
        release,
        image: absolute(path),
        format,
        modules_dir,
        config,
    })
}

/// A config next to a user's kernel: `<modules>/config`, `config-<release>`
/// beside the image, or a build tree's `.config` (bzImage sits in
/// `arch/x86/boot/`, vmlinux at the top).
fn find_config(image: &Path, release: &str, modules: Option<&Path>) -> Option<PathBuf> {
    if let Some(c) = modules.map(|m| m.join("config")).filter(|c| c.is_file()) {
        return Some(c);
    }
    let dir = absolute(image).parent()?.to_path_buf();
    let beside = dir.join(format!("config-{release}"));
    if release != "unknown" && beside.is_file() {
        return Some(beside);
    }
    dir.ancestors()
        .take(4)
        .map(|d| d.join(".config"))
        .find(|c| c.is_file())
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary directory removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "netmem-kernel-test-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether a program is on PATH.
    pub fn have(program: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testutil::{TempDir, have};

    #[test]
    fn unknown_id_lists_known_and_mentions_path() {
        let e = resolve_in(Path::new("/nonexistent"), "nope", None, &mut |_| {}).unwrap_err();
        match &e {
            KernelError::UnknownId { id, known } => {
                assert_eq!(id, "nope");
                assert_eq!(known, &["patched", "baseline"]);
            }
            e => panic!("{e:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("patched, baseline") && msg.contains("PATH"),
            "{msg}"
        );
    }

    #[test]
    fn path_specs() {
        assert!(is_path_spec("./patched"));
        assert!(is_path_spec("/boot/vmlinuz"));
        assert!(!is_path_spec("patched"));

        let e = resolve_in(
            Path::new("/nonexistent"),
            "/nonexistent/bzImage",
            None,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, KernelError::Missing { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/bzImage"));
    }

    #[test]
    fn resolve_user_bzimage_with_modules() {
        let dir = TempDir::new("userpath");
        let rel = "6.9.0-custom";
        let img = dir.path().join("arch/x86/boot/bzImage");
        std::fs::create_dir_all(img.parent().unwrap()).unwrap();
        std::fs::write(
            &img,
            image::tests::synthetic_bzimage(Some(&format!("{rel} (me@box) #3 SMP"))),
        )
        .unwrap();
        std::fs::write(dir.path().join(".config"), b"CONFIG_NET=y\n").unwrap();
        let mods = dir.path().join("mods/lib/modules");
        std::fs::create_dir_all(mods.join(rel).join("kernel")).unwrap();

        let spec = img.to_str().unwrap();
        let r = resolve_in(dir.path(), spec, Some(&mods), &mut |_| {}).unwrap();
        assert_eq!(r.spec, spec);
        assert_eq!(r.release, rel);
        assert_eq!(r.image, img);
        assert_eq!(r.modules_dir, Some(mods.join(rel)));
        assert_eq!(r.config, Some(dir.path().join(".config")));

        // No modules; missing modules dir is an error.
        let r = resolve_in(dir.path(), spec, None, &mut |_| {}).unwrap();
        assert_eq!(r.modules_dir, None);
        let e = resolve_in(
            dir.path(),
            spec,
            Some(&dir.path().join("nope")),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, KernelError::Missing { .. }));
    }

    #[test]
    fn resolve_user_elf_without_banner_is_unknown() {
        let dir = TempDir::new("userelf");
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, image::tests::synthetic_elf(2, 62, 2)).unwrap();
        let r = resolve_in(dir.path(), p.to_str().unwrap(), None, &mut |_| {}).unwrap();
        assert_eq!(r.format, KernelFormat::Elf64);
        assert_eq!(r.release, "unknown");
    }

    #[test]
    fn user_path_not_a_kernel() {
        let dir = TempDir::new("notkernel");
        let p = dir.path().join("initrd.img");
        std::fs::write(&p, b"070701000000").unwrap();
        let e = resolve_in(dir.path(), p.to_str().unwrap(), None, &mut |_| {}).unwrap_err();
        assert!(matches!(e, KernelError::NotX86Kernel { .. }));
        assert!(e.to_string().contains("cpio"), "{e}");
    }

    #[test]
    fn cache_dir_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let all = &[
            ("NETMEM_LAB_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_from(env(all)), Path::new("/c"));
        assert_eq!(
            cache_dir_from(env(&[
                ("NETMEM_LAB_CACHE", ""),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            Path::new("/x/netmem-lab")
        );
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])),
            Path::new("/h/.cache/netmem-lab")
        );
    }

    #[test]
    fn progress_lines_read_well() {
        let p = Progress::Downloading {
            package: "linux-binary-x".into(),
            bytes: 13_604_064,
        };
        assert_eq!(p.to_string(), "downloading linux-binary-x (13.6 MB)");
    }

    #[test]
    fn no_registry_host_in_sources() {
        // The mirror is the host's; the repo never names one.
        let host = ["deb", "debian", "org"].join(".");
        for text in [
            include_str!("lib.rs"),
            include_str!("fetch.rs"),
            include_str!("sources.rs"),
            include_str!("catalog.rs"),
            include_str!("image.rs"),
            include_str!("error.rs"),
            include_str!("../catalog.toml"),
        ] {
            assert!(!text.contains(&host));
        }
    }

    /// Real download of `id` from the host's Debian mirror into a fresh cache.
    fn network_resolve(id: &str) {
        for tool in ["apt-get", "dpkg-deb", "curl"] {
            if !have(tool) {
                eprintln!("note: {tool} not installed, skipping the network test for {id}");
                return;
            }
        }
        if sources::host_mirrors().is_empty() {
            eprintln!("note: no Debian mirror in the host's apt sources, skipping {id}");
            return;
        }
        let dir = TempDir::new(&format!("net-{id}"));
        let t = std::time::Instant::now();
        let mut events = Vec::new();
        let r = resolve_in(dir.path(), id, None, &mut |p| {
            eprintln!("[{id}] {p}");
            events.push(p)
        })
        .unwrap_or_else(|e| panic!("resolve {id}: {e}"));
        eprintln!("[{id}] cold resolve took {:?}", t.elapsed());
        let k = catalog().get(id).unwrap();
        assert_eq!(r.spec, id);
        assert_eq!(r.release, k.release);
        match &r.format {
            KernelFormat::BzImage {
                protocol, version, ..
            } => {
                assert!(*protocol >= 0x20c);
                assert!(version.as_deref().unwrap().starts_with(&k.release));
            }
            f => panic!("{f:?}"),
        }
        let m = r.modules_dir.as_ref().unwrap();
        assert!(m.ends_with(format!("lib/modules/{}", k.release)));
        assert!(m.join("kernel").is_dir());
        assert!(m.join("modules.order").is_file());
        let config = std::fs::read_to_string(r.config.as_ref().unwrap()).unwrap();
        assert!(config.contains("CONFIG_X86_64=y"));

        let t = std::time::Instant::now();
        let mut again = Vec::new();
        let r2 = resolve_in(dir.path(), id, None, &mut |p| again.push(p)).unwrap();
        eprintln!("[{id}] cached resolve took {:?}", t.elapsed());
        assert_eq!(r2, r);
        assert!(
            matches!(again.as_slice(), [Progress::Cached { .. }]),
            "{again:?}"
        );
        // The quirk: some packages come from the pool, not the index.
        let from_pool = events
            .iter()
            .filter(|e| matches!(e, Progress::FromPool { .. }))
            .count();
        eprintln!("[{id}] {from_pool} package(s) fetched from the pool");
    }

    #[test]
    fn network_resolve_patched() {
        network_resolve("patched");
    }

    #[test]
    fn network_resolve_baseline() {
        network_resolve("baseline");
    }
}
