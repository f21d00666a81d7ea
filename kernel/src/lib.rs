//! Kernel catalog: Debian package ids, private apt fetch, sha256 check, extraction, cache
