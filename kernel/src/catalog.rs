//! The kernel catalog: `kernel/catalog.toml`, embedded at build time.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::KernelError;

const CATALOG_TOML: &str = include_str!("../catalog.toml");

/// All kernels `--kernel ID` accepts, plus how to reach their packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub apt: AptSettings,
    #[serde(rename = "kernel")]
    pub kernels: Vec<CatalogKernel>,
}

/// The private apt index the packages are looked up in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSettings {
    /// Suites of the private index, e.g. `trixie-backports`.
    pub suites: Vec<String>,
    /// Components, e.g. `main`.
    pub components: Vec<String>,
    /// Keyring the index signatures are checked against.
    pub keyring: String,
}

/// One kernel id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogKernel {
    /// The id, e.g. `patched`.
    pub id: String,
    /// One line for `netmem-lab list`.
    pub description: String,
    /// `uname -r` of the kernel, e.g. `7.3.4+deb13-cloud-amd64`.
    pub release: String,
    /// The Debian package users know the kernel by (`linux-image-…`).
    pub image_package: String,
    /// Its Debian version.
    pub version: String,
    /// The packages it is assembled from: one each of binary, modules, base.
    #[serde(rename = "package")]
    pub packages: Vec<Package>,
}

/// What part of the kernel a package carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageRole {
    /// vmlinuz.
    Binary,
    /// lib/modules/<release>/kernel.
    Modules,
    /// config, System.map, modules.builtin, modules.order.
    Base,
}

impl PackageRole {
    pub const ALL: [PackageRole; 3] =
        [PackageRole::Binary, PackageRole::Modules, PackageRole::Base];

    pub fn as_str(self) -> &'static str {
        match self {
            PackageRole::Binary => "binary",
            PackageRole::Modules => "modules",
            PackageRole::Base => "base",
        }
    }
}

/// One pinned Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub role: PackageRole,
    /// Debian package name.
    pub name: String,
    /// Debian version.
    pub version: String,
    /// Directory in the mirror, relative to its root (`pool/main/l/linux`).
    pub pool: String,
    /// File name of the .deb in `pool`.
    pub filename: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// sha256 of the .deb, lowercase hex.
    pub sha256: String,
}

impl Package {
    /// `name=version`, as `apt-get download` takes it.
    pub fn apt_spec(&self) -> String {
        format!("{}={}", self.name, self.version)
    }

    /// Path of the .deb relative to the mirror root.
    pub fn pool_path(&self) -> String {
        format!("{}/{}", self.pool.trim_end_matches('/'), self.filename)
    }
}

impl CatalogKernel {
    /// The package with the given role (validated catalogs have exactly one).
    pub fn package(&self, role: PackageRole) -> Option<&Package> {
        self.packages.iter().find(|p| p.role == role)
    }
}

impl Catalog {
    /// Parses and validates a catalog.
    pub fn parse(text: &str) -> Result<Catalog, KernelError> {
        let catalog: Catalog = toml::from_str(text).map_err(|e| KernelError::Catalog {
            detail: e.to_string(),
        })?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// The kernel with this id.
    pub fn get(&self, id: &str) -> Option<&CatalogKernel> {
        self.kernels.iter().find(|k| k.id == id)
    }

    /// All ids, in catalog order.
    pub fn ids(&self) -> Vec<String> {
        self.kernels.iter().map(|k| k.id.clone()).collect()
    }

    fn validate(&self) -> Result<(), KernelError> {
        let bad = |detail: String| Err(KernelError::Catalog { detail });
        if self.apt.suites.is_empty() || self.apt.components.is_empty() {
            return bad("[apt] needs at least one suite and one component".into());
        }
        if self.kernels.is_empty() {
            return bad("no [[kernel]] entries".into());
        }
        for (i, k) in self.kernels.iter().enumerate() {
            if k.id.is_empty() || k.id.contains('/') || k.id.contains(char::is_whitespace) {
                return bad(format!(
                    "kernel id '{}' must be non-empty, without '/' or spaces",
                    k.id
                ));
            }
            if self.kernels[..i].iter().any(|o| o.id == k.id) {
                return bad(format!("kernel id '{}' appears twice", k.id));
            }
            if k.release.is_empty() || k.release.contains('/') {
                return bad(format!(
                    "kernel '{}': invalid release '{}'",
                    k.id, k.release
                ));
            }
            for role in PackageRole::ALL {
                let n = k.packages.iter().filter(|p| p.role == role).count();
                if n != 1 {
                    return bad(format!(
                        "kernel '{}' has {n} '{}' packages, needs exactly one",
                        k.id,
                        role.as_str()
                    ));
                }
            }
            for p in &k.packages {
                let what = format!("kernel '{}', package '{}'", k.id, p.name);
                if p.sha256.len() != 64
                    || !p
                        .sha256
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return bad(format!("{what}: sha256 must be 64 lowercase hex digits"));
                }
                if p.size == 0 {
                    return bad(format!("{what}: size must be > 0"));
                }
                if p.name.is_empty() || p.version.is_empty() {
                    return bad(format!("{what}: name and version must be set"));
                }
                if !p.filename.ends_with(".deb") || p.filename.contains('/') {
                    return bad(format!("{what}: filename must be a plain *.deb name"));
                }
                if !p.pool.starts_with("pool/") || p.pool.split('/').any(|c| c == "..") {
                    return bad(format!("{what}: pool must be a path under pool/"));
                }
            }
        }
        Ok(())
    }
}

/// The embedded catalog (`kernel/catalog.toml`).
///
/// The catalog is validated by this crate's tests, so a parse failure here is
/// a build defect and panics.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| match Catalog::parse(CATALOG_TOML) {
        Ok(c) => c,
        Err(e) => panic!("embedded kernel/catalog.toml: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_parses() {
        let c = Catalog::parse(CATALOG_TOML).unwrap();
        assert_eq!(c.ids(), vec!["patched".to_string(), "baseline".to_string()]);
        assert_eq!(catalog(), &c);
    }

    #[test]
    fn every_id_has_binary_modules_base() {
        for k in &catalog().kernels {
            for role in PackageRole::ALL {
                let p = k
                    .package(role)
                    .unwrap_or_else(|| panic!("{} lacks {role:?}", k.id));
                assert!(
                    p.name.starts_with(&format!("linux-{}-", role.as_str())),
                    "{}",
                    p.name
                );
                assert!(p.name.ends_with(&k.release), "{} vs {}", p.name, k.release);
                assert_eq!(p.version, k.version);
                assert!(p.filename.starts_with(&format!("{}_", p.name)));
            }
            assert!(k.image_package.ends_with(&k.release));
        }
    }

    #[test]
    fn sha256_are_64_hex() {
        for k in &catalog().kernels {
            for p in &k.packages {
                assert_eq!(p.sha256.len(), 64, "{}", p.name);
                assert!(
                    p.sha256.chars().all(|c| c.is_ascii_hexdigit()),
                    "{}",
                    p.name
                );
                assert!(hex::decode(&p.sha256).is_ok());
            }
        }
    }

    #[test]
    fn known_values() {
        let p = catalog().get("patched").unwrap();
        assert_eq!(p.release, "7.3.4+deb13-cloud-amd64");
        assert_eq!(p.image_package, "linux-image-7.3.4+deb13-cloud-amd64");
        let b = catalog()
            .get("baseline")
            .unwrap()
            .package(PackageRole::Binary)
            .unwrap();
        assert_eq!(
            b.pool_path(),
            "pool/main/l/linux-signed-amd64/linux-binary-7.1.13+deb13-cloud-amd64_7.1.13-1~bpo13+1_amd64.deb"
        );
        assert_eq!(
            b.apt_spec(),
            "linux-binary-7.1.13+deb13-cloud-amd64=7.1.13-1~bpo13+1"
        );
        assert!(catalog().get("nope").is_none());
    }

    #[test]
    fn no_mirror_host_in_catalog() {
        // The mirror comes from the host's apt sources; the catalog stays host-free.
        assert!(!CATALOG_TOML.contains("://"));
    }

    fn replace(from: &str, to: &str) -> Result<Catalog, KernelError> {
        assert!(CATALOG_TOML.contains(from), "{from}");
        Catalog::parse(&CATALOG_TOML.replacen(from, to, 1))
    }

    #[test]
    fn rejects_bad_catalogs() {
        // Short sha256.
        let e = replace(
            "c4fbc8e404958693b28825474c20742d70594d65ca58aea7be6a279c81eb6fa0",
            "c4fbc8e4",
        )
        .unwrap_err();
        assert!(e.to_string().contains("64 lowercase hex"), "{e}");
        // Uppercase / non-hex.
        let e = replace(
            "c4fbc8e404958693b28825474c20742d70594d65ca58aea7be6a279c81eb6fa0",
            "G4fbc8e404958693b28825474c20742d70594d65ca58aea7be6a279c81eb6fa0",
        )
        .unwrap_err();
        assert!(matches!(e, KernelError::Catalog { .. }));
        // A role missing (two modules packages, no base).
        let e = replace("role = \"base\"", "role = \"modules\"").unwrap_err();
        assert!(e.to_string().contains("needs exactly one"), "{e}");
        // Duplicate id.
        let e = replace("id = \"baseline\"", "id = \"patched\"").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        // Unknown field.
        let e = replace("size = 1025208", "size = 1025208\nsizee = 1").unwrap_err();
        assert!(matches!(e, KernelError::Catalog { .. }));
        // Pool escaping the mirror.
        let e = replace("pool = \"pool/main/l/linux\"", "pool = \"pool/../etc\"").unwrap_err();
        assert!(e.to_string().contains("pool"), "{e}");
    }
}
