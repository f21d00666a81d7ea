//! Gathers [`HelloInfo`] from procfs, sysfs and `/dev/kmsg`.
//!
//! Every function takes the filesystem root (`/` in the guest) so the tests
//! can point it at a fake tree. Gathering is best effort: a missing file
//! gives an empty field, never an error.

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::protocol::{HelloInfo, IommuGroup, PciFunction};

/// At most this many kernel warnings are reported (the latest ones).
pub const MAX_DMESG_WARNINGS: usize = 200;

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn parse_hex(s: &str) -> Option<u32> {
    let s = s.trim();
    u32::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn sorted_dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `uname(2)` fields: (release, version, machine).
fn uname() -> Option<(String, String, String)> {
    // SAFETY: utsname is plain old data; uname fills it in.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((field(&u.release), field(&u.version), field(&u.machine)))
}

/// Everything for [`crate::protocol::Op::Hello`].
pub fn gather_hello(root: &Path) -> HelloInfo {
    let kernel = root.join("proc/sys/kernel");
    let (mut release, mut version, mut machine) = (
        read_trimmed(&kernel.join("osrelease")).unwrap_or_default(),
        read_trimmed(&kernel.join("version")).unwrap_or_default(),
        read_trimmed(&kernel.join("arch")).unwrap_or_default(),
    );
    if root == Path::new("/")
        && let Some((r, v, m)) = uname()
    {
        (release, version, machine) = (r, v, m);
    }
    HelloInfo {
        release,
        version,
        machine,
        cmdline: read_trimmed(&root.join("proc/cmdline")).unwrap_or_default(),
        pci: pci_functions(root),
        iommu_groups: iommu_groups(root),
        modules: loaded_modules(root),
        uptime_ms: uptime_ms(root).unwrap_or(0),
        dmesg_warnings: kmsg_warnings(root, MAX_DMESG_WARNINGS),
    }
}

/// `/sys/bus/pci/devices/*`, sorted by address.
pub fn pci_functions(root: &Path) -> Vec<PciFunction> {
    let base = root.join("sys/bus/pci/devices");
    sorted_dir_names(&base)
        .into_iter()
        .map(|bdf| {
            let dev = base.join(&bdf);
            let hex = |f: &str| read_trimmed(&dev.join(f)).and_then(|s| parse_hex(&s));
            PciFunction {
                vendor: hex("vendor").unwrap_or(0xffff) as u16,
                device: hex("device").unwrap_or(0xffff) as u16,
                class: hex("class").unwrap_or(0),
                driver: link_name(&dev.join("driver")),
                iommu_group: link_name(&dev.join("iommu_group")).and_then(|n| n.parse().ok()),
                bdf,
            }
        })
        .collect()
}

/// `/sys/kernel/iommu_groups/*`, sorted by id.
pub fn iommu_groups(root: &Path) -> Vec<IommuGroup> {
    let base = root.join("sys/kernel/iommu_groups");
    let mut groups: Vec<IommuGroup> = sorted_dir_names(&base)
        .into_iter()
        .filter_map(|name| {
            let id: u32 = name.parse().ok()?;
            let dir = base.join(&name);
            Some(IommuGroup {
                id,
                type_: read_trimmed(&dir.join("type")).unwrap_or_default(),
                devices: sorted_dir_names(&dir.join("devices")),
            })
        })
        .collect();
    groups.sort_by_key(|g| g.id);
    groups
}

/// Module names from `/proc/modules`, in its order (most recently loaded first).
pub fn loaded_modules(root: &Path) -> Vec<String> {
    fs::read_to_string(root.join("proc/modules"))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `/proc/uptime` in milliseconds.
pub fn uptime_ms(root: &Path) -> Option<u64> {
    let s = fs::read_to_string(root.join("proc/uptime")).ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Parses one `/dev/kmsg` record header line `prio,seq,usec,flags[,...];message`
/// into (level 0-7, message). Continuation lines (starting with a space) give `None`.
pub fn parse_kmsg_record(line: &str) -> Option<(u8, &str)> {
    if line.starts_with(' ') {
        return None;
    }
    let (head, msg) = line.split_once(';')?;
    let prio: u32 = head.split(',').next()?.trim().parse().ok()?;
    Some(((prio & 7) as u8, msg))
}

/// Kernel log messages with level <= 4 (warning), the last `max` of them.
///
/// Reads `/dev/kmsg` with `O_NONBLOCK` until `EAGAIN` (each `read` on the
/// real device returns one record; a plain file in tests is read whole).
pub fn kmsg_warnings(root: &Path, max: usize) -> Vec<String> {
    let path = root.join("dev/kmsg");
    let Ok(mut f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    else {
        return Vec::new();
    };
    const MAX_BYTES: usize = 8 << 20;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                if all.len() > MAX_BYTES {
                    break;
                }
            }
            // EPIPE: the record we were about to read was overwritten; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break, // EAGAIN (no more records) or anything else
        }
    }
    let text = String::from_utf8_lossy(&all);
    let mut out: Vec<String> = text
        .lines()
        .filter_map(parse_kmsg_record)
        .filter(|(level, _)| *level <= 4)
        .map(|(_, msg)| msg.to_string())
        .collect();
    if out.len() > max {
        out.drain(..out.len() - max);
    }
    out
}

/// Builds a fake `/proc` + `/sys` + `/dev/kmsg` tree (for tests, here and in the host's).
pub mod fake {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn put(root: &Path, rel: &str, contents: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(p, contents).expect("write");
    }

    /// Two PCI functions (a gve NIC in IOMMU group 1, a virtio device
    /// without driver in group 0), kernel files, three modules and a kmsg
    /// with two warnings among four records.
    pub fn populate(root: &Path) {
        put(
            root,
            "proc/sys/kernel/osrelease",
            "7.3.4+deb13-cloud-amd64\n",
        );
        put(
            root,
            "proc/sys/kernel/version",
            "#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1\n",
        );
        put(root, "proc/sys/kernel/arch", "x86_64\n");
        put(root, "proc/cmdline", "console=ttyS0 iommu.strict=1\n");
        put(root, "proc/uptime", "1.25 0.50\n");
        put(
            root,
            "proc/modules",
            "gve 126976 0 - Live 0x0000000000000000\nvirtio_iommu 28672 0 - Live 0x0\nkvm 1404928 1 kvm_amd, Live 0x0\n",
        );
        let devices = "sys/devices/pci0000:00";
        for (bdf, vendor, device, class) in [
            ("0000:00:03.0", "0x1ae0", "0x0042", "0x020000"),
            ("0000:00:01.0", "0x1af4", "0x1057", "0x088000"),
        ] {
            put(
                root,
                &format!("{devices}/{bdf}/vendor"),
                &format!("{vendor}\n"),
            );
            put(
                root,
                &format!("{devices}/{bdf}/device"),
                &format!("{device}\n"),
            );
            put(
                root,
                &format!("{devices}/{bdf}/class"),
                &format!("{class}\n"),
            );
        }
        fs::create_dir_all(root.join("sys/bus/pci/devices")).expect("mkdir");
        fs::create_dir_all(root.join("sys/bus/pci/drivers/gve")).expect("mkdir");
        for bdf in ["0000:00:03.0", "0000:00:01.0"] {
            symlink(
                format!("../../../devices/pci0000:00/{bdf}"),
                root.join(format!("sys/bus/pci/devices/{bdf}")),
            )
            .expect("symlink");
        }
        symlink(
            "../../../bus/pci/drivers/gve",
            root.join(format!("{devices}/0000:00:03.0/driver")),
        )
        .expect("symlink");
        for (group, bdf, ty) in [
            ("1", "0000:00:03.0", "DMA"),
            ("0", "0000:00:01.0", "identity"),
        ] {
            put(
                root,
                &format!("sys/kernel/iommu_groups/{group}/type"),
                &format!("{ty}\n"),
            );
            fs::create_dir_all(root.join(format!("sys/kernel/iommu_groups/{group}/devices")))
                .expect("mkdir");
            symlink(
                format!("../../../../devices/pci0000:00/{bdf}"),
                root.join(format!("sys/kernel/iommu_groups/{group}/devices/{bdf}")),
            )
            .expect("symlink");
            symlink(
                format!("../../../kernel/iommu_groups/{group}"),
                root.join(format!("{devices}/{bdf}/iommu_group")),
            )
            .expect("symlink");
        }
        put(
            root,
            "dev/kmsg",
            "6,1,100,-;Linux version 7.3.4\n\
             4,2,200,-;virtio_iommu: something odd\n SUBSYSTEM=virtio\n DEVICE=+virtio:virtio0\n\
             3,3,300,-;gve 0000:00:03.0: failed to frob\n\
             12,4,400,-;netmem-init: user message at notice... prio 12 = user.warning\n\
             7,5,500,c;debug\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_from_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        fake::populate(t.path());
        let h = gather_hello(t.path());
        assert_eq!(h.release, "7.3.4+deb13-cloud-amd64");
        assert_eq!(h.machine, "x86_64");
        assert!(h.version.contains("Debian"));
        assert_eq!(h.cmdline, "console=ttyS0 iommu.strict=1");
        assert_eq!(h.uptime_ms, 1250);
        assert_eq!(h.modules, ["gve", "virtio_iommu", "kvm"]);
        assert_eq!(
            h.pci,
            vec![
                PciFunction {
                    bdf: "0000:00:01.0".into(),
                    vendor: 0x1af4,
                    device: 0x1057,
                    class: 0x088000,
                    driver: None,
                    iommu_group: Some(0),
                },
                PciFunction {
                    bdf: "0000:00:03.0".into(),
                    vendor: 0x1ae0,
                    device: 0x0042,
                    class: 0x020000,
                    driver: Some("gve".into()),
                    iommu_group: Some(1),
                },
            ]
        );
        assert_eq!(
            h.iommu_groups,
            vec![
                IommuGroup {
                    id: 0,
                    type_: "identity".into(),
                    devices: vec!["0000:00:01.0".into()]
                },
                IommuGroup {
                    id: 1,
                    type_: "DMA".into(),
                    devices: vec!["0000:00:03.0".into()]
                },
            ]
        );
        assert_eq!(
            h.dmesg_warnings,
            [
                "virtio_iommu: something odd",
                "gve 0000:00:03.0: failed to frob",
                "netmem-init: user message at notice... prio 12 = user.warning"
            ]
        );
        assert_eq!(
            kmsg_warnings(t.path(), 1),
            ["netmem-init: user message at notice... prio 12 = user.warning"]
        );
    }

    #[test]
    fn empty_tree_gives_empty_info() {
        let t = tempfile::tempdir().unwrap();
        let h = gather_hello(t.path());
        assert_eq!(h, HelloInfo::default());
    }

    #[test]
    fn kmsg_record_parsing() {
        assert_eq!(
            parse_kmsg_record("4,12,345,-;hello; world"),
            Some((4, "hello; world"))
        );
        assert_eq!(parse_kmsg_record("30,1,2,-,caller=T1;x"), Some((6, "x")));
        assert_eq!(parse_kmsg_record(" KEY=value"), None);
        assert_eq!(parse_kmsg_record("garbage"), None);
    }

    #[test]
    fn real_root_does_not_panic() {
        let h = gather_hello(Path::new("/"));
        assert!(!h.release.is_empty());
        assert!(!h.machine.is_empty());
    }
}
