//! Finding the Debian mirror the host already uses, from its apt sources.
//!
//! The lab never names a mirror itself: it reuses the URI of the host's
//! Debian archive (not its security archive), read from
//! `/etc/apt/sources.list.d/*.sources` (deb822) and `/etc/apt/sources.list`,
//! `/etc/apt/sources.list.d/*.list` (one-line format). `NETMEM_LAB_DEBIAN_MIRROR`
//! overrides the discovery.

use std::path::Path;

/// Environment variable that names the mirror explicitly (URI of the
/// directory holding `dists/` and `pool/`).
pub const MIRROR_ENV: &str = "NETMEM_LAB_DEBIAN_MIRROR";

/// Debian codenames and suite aliases a host source may use.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "oldstable",
    "oldoldstable",
    "testing",
    "unstable",
    "experimental",
];

fn is_debian_suite(suite: &str) -> bool {
    if suite.ends_with("-security") || suite.contains("/updates") {
        return false;
    }
    let base = suite.split('-').next().unwrap_or(suite);
    DEBIAN_SUITES.contains(&base)
}

/// Whether a URI points at a Debian archive root (path ends in `/debian`).
fn is_debian_archive(uri: &str) -> bool {
    let has_scheme = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| uri.starts_with(s));
    has_scheme && uri.trim_end_matches('/').ends_with("/debian")
}

fn accept(types_deb: bool, uri: &str, suites: &[&str], out: &mut Vec<String>) {
    if types_deb && is_debian_archive(uri) && suites.iter().any(|s| is_debian_suite(s)) {
        let uri = uri.trim_end_matches('/').to_string();
        if !out.contains(&uri) {
            out.push(uri);
        }
    }
}

/// Mirror URIs in a deb822 `.sources` file, in order.
pub fn parse_deb822(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in deb822_stanzas(text) {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if field("Enabled").is_some_and(|v| v.trim().eq_ignore_ascii_case("no")) {
            continue;
        }
        let types_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let suites: Vec<&str> = field("Suites").unwrap_or("").split_whitespace().collect();
        for uri in field("URIs").unwrap_or("").split_whitespace() {
            accept(types_deb, uri, &suites, &mut out);
        }
    }
    out
}

/// Stanzas of a deb822 file as (field, value) pairs; continuation lines are
/// joined with a space, comments dropped.
fn deb822_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                stanzas.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        stanzas.push(cur);
    }
    stanzas
}

/// Mirror URIs in a one-line `sources.list`, in order.
pub fn parse_one_line(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.split_once(char::is_whitespace) {
            Some(("deb", rest)) => rest.trim_start(),
            _ => continue,
        };
        // Options: `[key=value ...]`.
        if let Some(r) = rest.strip_prefix('[') {
            match r.split_once(']') {
                Some((_, after)) => rest = after.trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        accept(true, uri, &[suite], &mut out);
    }
    out
}

/// Mirror URIs configured under an apt `etc` directory (normally `/etc/apt`):
/// `sources.list` first, then `sources.list.d/` in file-name order. Files
/// that are neither `*.list` nor `*.sources` (e.g. `*.disabled`, `*.save`)
/// are ignored, as apt does.
pub fn mirrors_in(etc_apt: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |uris: Vec<String>| {
        for u in uris {
            if !out.contains(&u) {
                out.push(u);
            }
        }
    };
    if let Ok(text) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        add(parse_one_line(&text));
    }
    let mut files: Vec<_> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if name.ends_with(".sources") {
            add(parse_deb822(&text));
        } else if name.ends_with(".list") {
            add(parse_one_line(&text));
        }
    }
    out
}

/// The mirror to use: `$NETMEM_LAB_DEBIAN_MIRROR`, else the first Debian
/// archive in the host's apt sources.
pub fn host_mirrors() -> Vec<String> {
    if let Ok(m) = std::env::var(MIRROR_ENV) {
        let m = m.trim().trim_end_matches('/');
        if !m.is_empty() {
            return vec![m.to_string()];
        }
    }
    mirrors_in(Path::new("/etc/apt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Host names here are placeholders; the repo never names a real mirror.
    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_main_archive_only() {
        assert_eq!(parse_deb822(DEB822), vec!["http://mirror.example/debian"]);
    }

    #[test]
    fn deb822_variants() {
        let text = "\
Types: deb
URIs: https://other.example/debian/
Suites: trixie
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example/debian
Suites: trixie

types: deb deb-src
uris:
 http://multi.example/debian
 http://multi2.example/debian
suites: trixie-backports
components: main

Types: deb
URIs: http://ubuntu.example/ubuntu
Suites: noble

Types: deb
URIs: http://sec.example/debian
Suites: trixie-security
";
        assert_eq!(
            parse_deb822(text),
            vec![
                "http://multi.example/debian",
                "http://multi2.example/debian"
            ]
        );
    }

    #[test]
    fn one_line() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://one.example/debian/ trixie main contrib
deb-src http://src.example/debian trixie main
deb http://sec2.example/debian bookworm/updates main
deb http://one.example/debian sid main
deb cdrom:[Debian]/ bookworm main
deb http://ubuntu.example/ubuntu noble main
";
        assert_eq!(parse_one_line(text), vec!["http://one.example/debian"]);
    }

    #[test]
    fn etc_dir_ignores_disabled_files() {
        let dir = crate::testutil::TempDir::new("sources");
        let etc = dir.path();
        std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
        std::fs::write(
            etc.join("sources.list.d/a.sources.disabled"),
            DEB822.replace("mirror.example", "disabled.example"),
        )
        .unwrap();
        std::fs::write(
            etc.join("sources.list.d/b.list.save"),
            "deb http://save.example/debian bookworm main\n",
        )
        .unwrap();
        assert!(mirrors_in(etc).is_empty());

        std::fs::write(etc.join("sources.list.d/debian.sources"), DEB822).unwrap();
        std::fs::write(
            etc.join("sources.list.d/extra.list"),
            "deb http://extra.example/debian trixie main\n",
        )
        .unwrap();
        assert_eq!(
            mirrors_in(etc),
            vec![
                "http://mirror.example/debian",
                "http://extra.example/debian"
            ]
        );

        std::fs::write(
            etc.join("sources.list"),
            "deb http://first.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(mirrors_in(etc)[0], "http://first.example/debian");
    }
}
