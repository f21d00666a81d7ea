//! Virtio over PCI, modern (virtio 1.2 §4.1) only.
//!
//! Everything lives in one 64-bit memory BAR (BAR 0):
//!
//! | offset   | region                                   |
//! |----------|------------------------------------------|
//! | `0x0000` | common configuration (`virtio_pci_common_cfg`) |
//! | `0x1000` | ISR status byte (read clears)            |
//! | `0x2000` | device-specific configuration            |
//! | `0x3000` | notifications, queue `i` at `4 * i`      |
//! | `0x4000` | MSI-X table                              |
//! | `0x5000` | MSI-X PBA                                |
//!
//! Capabilities: MSI-X, then the vendor capabilities COMMON_CFG, ISR_CFG,
//! DEVICE_CFG, NOTIFY_CFG (multiplier 4) and PCI_CFG (the config-space window
//! onto the BAR).

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::worker::drain;
use super::{
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR, VirtioDevice, VirtioInterrupt,
};
use crate::device::MsiSink;
use crate::iommu::{EndpointMemory, IommuDma};
use crate::pci::configuration::{BarKind, PciConfiguration, PciHeader};
use crate::pci::msix::{MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK, MsixConfig};
use crate::pci::{PciDevice, PciError, lock};

pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are `0x1040 + virtio device type`.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision ID of a non-transitional device.
pub const VIRTIO_PCI_REVISION: u8 = 1;

/// BAR holding every virtio-pci structure.
pub const VIRTIO_BAR: usize = 0;
pub const VIRTIO_BAR_SIZE: u64 = 0x8000;
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
pub const COMMON_CFG_SIZE: u64 = 0x1000;
pub const ISR_CFG_OFFSET: u64 = 0x1000;
pub const ISR_CFG_SIZE: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_SIZE: u64 = 0x1000;
pub const NOTIFY_CFG_OFFSET: u64 = 0x3000;
pub const NOTIFY_CFG_SIZE: u64 = 0x1000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_TABLE_SIZE: u64 = 0x1000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
pub const MSIX_PBA_SIZE: u64 = 0x1000;
/// Queue `i` is notified at `NOTIFY_CFG_OFFSET + i * NOTIFY_OFF_MULTIPLIER`.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Queues that fit in the notify region.
pub const MAX_QUEUES: usize = (NOTIFY_CFG_SIZE / NOTIFY_OFF_MULTIPLIER as u64) as usize;
/// Vectors that fit in the MSI-X table region.
pub const MAX_VECTORS: u16 = (MSIX_TABLE_SIZE / 16) as u16;

/// Largest split-queue size (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Vendor capability `cfg_type` values.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
const PCI_CAP_ID_VNDR: u8 = 0x09;

// struct virtio_pci_common_cfg field offsets.
const COMMON_DFSELECT: u64 = 0x00;
const COMMON_DF: u64 = 0x04;
const COMMON_GFSELECT: u64 = 0x08;
const COMMON_GF: u64 = 0x0c;
const COMMON_MSIX: u64 = 0x10;
const COMMON_NUMQ: u64 = 0x12;
const COMMON_STATUS: u64 = 0x14;
const COMMON_CFGGENERATION: u64 = 0x15;
const COMMON_Q_SELECT: u64 = 0x16;
const COMMON_Q_SIZE: u64 = 0x18;
const COMMON_Q_MSIX: u64 = 0x1a;
const COMMON_Q_ENABLE: u64 = 0x1c;
const COMMON_Q_NOFF: u64 = 0x1e;
const COMMON_Q_DESC: u64 = 0x20;
const COMMON_Q_AVAIL: u64 = 0x28;
const COMMON_Q_USED: u64 = 0x30;
const COMMON_Q_NDATA: u64 = 0x38;
const COMMON_Q_RESET: u64 = 0x3a;

/// Errors building a virtio-pci function (host side).
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("device declares {0} queues; 1..={MAX_QUEUES} supported")]
    QueueCount(usize),
    #[error("queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    QueueSize { index: usize, size: u16 },
    #[error("PCI configuration")]
    Pci(#[from] PciError),
    #[error("cannot create queue notification EventFd")]
    EventFd(#[source] io::Error),
}

/// PCI class code used for each virtio device type.
fn class_code(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,  // network controller
        2 => 0x01_00_00,  // mass storage
        3 => 0x07_80_00,  // simple communication, other
        23 => 0x08_80_00, // iommu: system peripheral, other
        _ => 0xff_00_00,  // unclassified
    }
}

/// Register view of one queue, as programmed through common config.
#[derive(Clone, Copy, Debug)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Interrupt state shared with the device's worker thread.
struct InterruptState {
    msix: Arc<Mutex<MsixConfig>>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    config_generation: AtomicU8,
}

impl InterruptState {
    fn raise(&self, isr_bit: u8, vector: u16) {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != VIRTIO_MSI_NO_VECTOR {
            lock(&self.msix).notify(vector);
        }
    }

    fn reset_vectors(&self) {
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        for v in &self.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
        self.isr.store(0, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for InterruptState {
    fn signal_used_queue(&self, queue_index: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue_index))
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst));
        self.raise(1, vector);
    }

    fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(2, self.config_vector.load(Ordering::SeqCst));
    }
}

/// A virtio device exposed as a PCI function (virtio-pci modern).
pub struct VirtioPciDevice {
    config: PciConfiguration,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap<()>,
    /// The IOMMU endpoint this function's DMA goes through, if it sits
    /// behind the virtio-iommu.
    dma: Option<Arc<IommuDma>>,
    intr: Arc<InterruptState>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    queues: Vec<QueueRegs>,
    notify: Vec<EventFd>,
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    active: bool,
}

impl VirtioPciDevice {
    /// Wrap `device`. `mem` is guest memory the device's queues live in;
    /// `msi` delivers this function's MSI-X vectors (one sink per device).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap<()>,
        msi: Arc<dyn MsiSink>,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(sizes.len()));
        }
        for (index, &size) in sizes.iter().enumerate() {
            if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
                return Err(VirtioPciError::QueueSize { index, size });
            }
        }
        let device_type = device.device_type();
        let mut device_features = device.features() | (1 << VIRTIO_F_VERSION_1);
        if device.access_platform() {
            device_features |= 1 << VIRTIO_F_ACCESS_PLATFORM;
        }

        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16),
            revision_id: VIRTIO_PCI_REVISION,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: device_type as u16,
        });
        config.add_bar(
            VIRTIO_BAR,
            VIRTIO_BAR_SIZE,
            BarKind::Memory64 {
                prefetchable: false,
            },
        )?;

        let msix = MsixConfig::new(Self::msix_vectors(device.as_ref()), msi);
        let bar = VIRTIO_BAR as u8;
        let msix_cap = config.add_capability(&msix.capability(
            bar,
            MSIX_TABLE_OFFSET as u32,
            bar,
            MSIX_PBA_OFFSET as u32,
        ))?;
        config.set_writable_mask(
            msix_cap + 3,
            &[((MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK) >> 8) as u8],
        );

        let vcap = |cfg_type: u8, offset: u64, length: u64, extra: usize| {
            let mut c = vec![0u8; 16 + extra];
            c[0] = PCI_CAP_ID_VNDR;
            c[2] = c.len() as u8;
            c[3] = cfg_type;
            c[4] = bar;
            c[8..12].copy_from_slice(&(offset as u32).to_le_bytes());
            c[12..16].copy_from_slice(&(length as u32).to_le_bytes());
            c
        };
        config.add_capability(&vcap(
            VIRTIO_PCI_CAP_COMMON_CFG,
            COMMON_CFG_OFFSET,
            COMMON_CFG_SIZE,
            0,
        ))?;
        config.add_capability(&vcap(
            VIRTIO_PCI_CAP_ISR_CFG,
            ISR_CFG_OFFSET,
            ISR_CFG_SIZE,
            0,
        ))?;
        config.add_capability(&vcap(
            VIRTIO_PCI_CAP_DEVICE_CFG,
            DEVICE_CFG_OFFSET,
            DEVICE_CFG_SIZE,
            0,
        ))?;
        let mut notify_cap = vcap(
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_CFG_OFFSET,
            NOTIFY_CFG_SIZE,
            4,
        );
        notify_cap[16..20].copy_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config.add_capability(&notify_cap)?;
        // PCI_CFG window: bar, offset, length and data are driver-writable.
        let pci_cfg_cap = config.add_capability(&vcap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 4))?;
        config.set_writable_mask(pci_cfg_cap + 4, &[0xff]);
        config.set_writable_mask(pci_cfg_cap + 8, &[0xff; 12]);

        let notify = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let intr = Arc::new(InterruptState {
            msix: Arc::new(Mutex::new(msix)),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: sizes
                .iter()
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            config_generation: AtomicU8::new(0),
        });
        Ok(VirtioPciDevice {
            config,
            device,
            mem,
            dma: None,
            intr,
            msix_cap,
            pci_cfg_cap,
            queues: sizes.iter().map(|&s| QueueRegs::new(s)).collect(),
            notify,
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            active: false,
        })
    }

    /// Put the function behind an IOMMU endpoint: `VIRTIO_F_ACCESS_PLATFORM`
    /// is offered and must be accepted (FEATURES_OK is refused otherwise),
    /// and the device is started with [`VirtioDevice::activate_platform`]
    /// on a view of memory that translates every access through `dma`.
    pub fn set_iommu(&mut self, dma: Arc<IommuDma>) {
        self.device_features |= 1 << VIRTIO_F_ACCESS_PLATFORM;
        self.dma = Some(dma);
    }

    /// The IOMMU endpoint handle, if the function sits behind the IOMMU.
    pub fn iommu_dma(&self) -> Option<&Arc<IommuDma>> {
        self.dma.as_ref()
    }

    /// MSI-X vectors a virtio-pci function for `device` has (config + one
    /// per queue, at most 256): size the device's `MsiSink` for this many.
    pub fn msix_vectors(device: &dyn VirtioDevice) -> u16 {
        (device.queue_max_sizes().len() + 1).min(usize::from(MAX_VECTORS)) as u16
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Guest-physical address of the virtio BAR as currently programmed.
    pub fn bar_address(&self) -> Option<u64> {
        self.config.bar_address(VIRTIO_BAR)
    }

    /// EventFd written when the guest notifies queue `index` (for a future
    /// KVM ioeventfd at `bar_address() + NOTIFY_CFG_OFFSET + 4 * index`).
    pub fn notify_eventfd(&self, index: usize) -> Option<&EventFd> {
        self.notify.get(index)
    }

    /// Current device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn num_vectors(&self) -> u16 {
        lock(&self.intr.msix).num_vectors()
    }

    /// A vector number the guest wrote, or NO_VECTOR if it can't be used.
    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.num_vectors() {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn selected_queue(&self) -> Option<usize> {
        let i = usize::from(self.queue_select);
        (i < self.queues.len()).then_some(i)
    }

    /// Virtio reset (status 0): stop the device, forget negotiation and
    /// queue setup. MSI-X state belongs to PCI and is kept.
    fn reset_virtio(&mut self) {
        if !self.device.reset() {
            tracing::warn!(
                device_type = self.device.device_type(),
                "virtio device could not be reset"
            );
        }
        self.active = false;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        for e in &self.notify {
            drain(e);
        }
        self.intr.reset_vectors();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset_virtio();
            return;
        }
        let old = self.status;
        // The driver only ever adds bits (reset is the only way back).
        let old_driver = old & !STATUS_DEVICE_NEEDS_RESET;
        if old_driver & !value != 0 {
            tracing::debug!(old, value, "virtio status write clears bits; ignored");
            return;
        }
        let newly = value & !old;
        let mut new = old | value;
        if newly & STATUS_FEATURES_OK != 0 {
            let platform_ok =
                self.dma.is_none() || self.driver_features & (1 << VIRTIO_F_ACCESS_PLATFORM) != 0;
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
                && platform_ok;
            if ok {
                self.device.ack_features(self.driver_features);
            } else {
                new &= !STATUS_FEATURES_OK;
            }
        }
        if newly & STATUS_DRIVER_OK != 0 {
            let ok = new & STATUS_FEATURES_OK != 0 && !self.active && self.activate();
            if !ok {
                new |= STATUS_DEVICE_NEEDS_RESET;
            }
        }
        let needs_reset = new & !old & STATUS_DEVICE_NEEDS_RESET != 0;
        self.status = new;
        if needs_reset {
            self.intr.signal_config_change();
        }
    }

    /// Build the queues and start the device. Returns false on failure.
    fn activate(&mut self) -> bool {
        let event_idx = self.driver_features & (1 << VIRTIO_F_EVENT_IDX) != 0;
        // Behind the IOMMU, ring addresses are IOVAs: validate them through
        // the endpoint's current mappings (and translate again on every
        // later access).
        let view = self.dma.as_ref().map(|dma| {
            let rings = self
                .queues
                .iter()
                .filter(|r| r.enabled)
                .flat_map(|r| {
                    let n = u64::from(r.size);
                    [
                        (r.desc, r.desc.saturating_add(16 * n)),
                        (r.driver, r.driver.saturating_add(6 + 2 * n)),
                        (r.device, r.device.saturating_add(6 + 8 * n)),
                    ]
                })
                .collect();
            EndpointMemory::new(dma.clone(), rings)
        });
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, r) in self.queues.iter().enumerate() {
            let Ok(mut q) = Queue::new(r.max_size) else {
                return false;
            };
            if r.enabled {
                let valid = q.try_set_size(r.size).is_ok()
                    && q.try_set_desc_table_address(GuestAddress(r.desc)).is_ok()
                    && q.try_set_avail_ring_address(GuestAddress(r.driver)).is_ok()
                    && q.try_set_used_ring_address(GuestAddress(r.device)).is_ok();
                q.set_event_idx(event_idx);
                q.set_ready(true);
                let mapped = match &view {
                    Some(v) => q.is_valid(v),
                    None => q.is_valid(&self.mem),
                };
                if !valid || !mapped {
                    tracing::warn!(queue = i, "virtio queue set up with invalid rings");
                    return false;
                }
            }
            let Ok(evt) = self.notify[i].try_clone() else {
                return false;
            };
            queues.push((q, evt));
        }
        let intr: Arc<dyn VirtioInterrupt> = self.intr.clone();
        let started = match view {
            Some(v) => self.device.activate_platform(v, queues, intr),
            None => self.device.activate(self.mem.clone(), queues, intr),
        };
        match started {
            Ok(()) => {
                self.active = true;
                true
            }
            Err(e) => {
                tracing::warn!(
                    device_type = self.device.device_type(),
                    "virtio activation failed: {e}"
                );
                false
            }
        }
    }

    fn common_read(&self, off: u64, data: &mut [u8]) {
        let q = self.selected_queue();
        let qr = q.map(|i| self.queues[i]);
        let sel = |v: u64, s: u32| match s {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        let value: u64 = match (off, data.len()) {
            (COMMON_DFSELECT, 4) => self.device_feature_select.into(),
            (COMMON_DF, 4) => sel(self.device_features, self.device_feature_select),
            (COMMON_GFSELECT, 4) => self.driver_feature_select.into(),
            (COMMON_GF, 4) => sel(self.driver_features, self.driver_feature_select),
            (COMMON_MSIX, 2) => self.intr.config_vector.load(Ordering::SeqCst).into(),
            (COMMON_NUMQ, 2) => self.queues.len() as u64,
            (COMMON_STATUS, 1) => self.status.into(),
            (COMMON_CFGGENERATION, 1) => self.intr.config_generation.load(Ordering::SeqCst).into(),
            (COMMON_Q_SELECT, 2) => self.queue_select.into(),
            (COMMON_Q_SIZE, 2) => qr.map_or(0, |r| r.size).into(),
            (COMMON_Q_MSIX, 2) => q
                .map_or(VIRTIO_MSI_NO_VECTOR, |i| {
                    self.intr.queue_vectors[i].load(Ordering::SeqCst)
                })
                .into(),
            (COMMON_Q_ENABLE, 2) => qr.is_some_and(|r| r.enabled).into(),
            (COMMON_Q_NOFF, 2) => q.unwrap_or(0) as u64,
            (COMMON_Q_NDATA, 2) | (COMMON_Q_RESET, 2) => 0,
            _ => match (split_u64_field(off, data.len()), qr) {
                (Some((base, shift, mask)), Some(r)) => {
                    let v = match base {
                        COMMON_Q_DESC => r.desc,
                        COMMON_Q_AVAIL => r.driver,
                        _ => r.device,
                    };
                    (v >> shift) & mask
                }
                _ => 0,
            },
        };
        let bytes = value.to_le_bytes();
        for (d, b) in data.iter_mut().zip(bytes) {
            *d = b;
        }
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        for (r, d) in raw.iter_mut().zip(data) {
            *r = *d;
        }
        let value = u64::from_le_bytes(raw);
        let q = self.selected_queue();
        // Queue layout is frozen once the driver set DRIVER_OK.
        let q_writable =
            q.filter(|&i| !self.queues[i].enabled && self.status & STATUS_DRIVER_OK == 0);
        match (off, data.len()) {
            (COMMON_DFSELECT, 4) => self.device_feature_select = value as u32,
            (COMMON_GFSELECT, 4) => self.driver_feature_select = value as u32,
            (COMMON_GF, 4) => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    let v = value & 0xffff_ffff;
                    match self.driver_feature_select {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                        1 => {
                            self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32)
                        }
                        _ => {}
                    }
                }
            }
            (COMMON_MSIX, 2) => {
                let v = self.checked_vector(value as u16);
                self.intr.config_vector.store(v, Ordering::SeqCst);
            }
            (COMMON_STATUS, 1) => self.set_status(value as u8),
            (COMMON_Q_SELECT, 2) => self.queue_select = value as u16,
            (COMMON_Q_SIZE, 2) => {
                let size = value as u16;
                if let Some(i) = q_writable {
                    let r = &mut self.queues[i];
                    if size != 0 && size.is_power_of_two() && size <= r.max_size {
                        r.size = size;
                    }
                }
            }
            (COMMON_Q_MSIX, 2) => {
                if let Some(i) = q {
                    let v = self.checked_vector(value as u16);
                    self.intr.queue_vectors[i].store(v, Ordering::SeqCst);
                }
            }
            (COMMON_Q_ENABLE, 2) => {
                if let Some(i) = q_writable
                    && value == 1
                {
                    self.queues[i].enabled = true;
                }
            }
            _ => {
                if let (Some((base, shift, mask)), Some(i)) =
                    (split_u64_field(off, data.len()), q_writable)
                {
                    let r = &mut self.queues[i];
                    let field = match base {
                        COMMON_Q_DESC => &mut r.desc,
                        COMMON_Q_AVAIL => &mut r.driver,
                        _ => &mut r.device,
                    };
                    *field = (*field & !(mask << shift)) | ((value & mask) << shift);
                }
            }
        }
    }

    fn bar_read_inner(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        let inside = |start: u64, size: u64| offset >= start && end <= start + size;
        if inside(COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.common_read(offset - COMMON_CFG_OFFSET, data);
        } else if inside(ISR_CFG_OFFSET, ISR_CFG_SIZE) {
            if offset == ISR_CFG_OFFSET
                && let Some(b) = data.first_mut()
            {
                *b = self.intr.isr.swap(0, Ordering::SeqCst);
            }
        } else if inside(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if inside(MSIX_TABLE_OFFSET, MSIX_TABLE_SIZE) {
            lock(&self.intr.msix).read_table(offset - MSIX_TABLE_OFFSET, data);
        } else if inside(MSIX_PBA_OFFSET, MSIX_PBA_SIZE) {
            lock(&self.intr.msix).read_pba(offset - MSIX_PBA_OFFSET, data);
        }
    }

    fn bar_write_inner(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        let inside = |start: u64, size: u64| offset >= start && end <= start + size;
        if inside(COMMON_CFG_OFFSET, COMMON_CFG_SIZE) {
            self.common_write(offset - COMMON_CFG_OFFSET, data);
        } else if inside(DEVICE_CFG_OFFSET, DEVICE_CFG_SIZE) {
            self.device.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if inside(NOTIFY_CFG_OFFSET, NOTIFY_CFG_SIZE) {
            let index = ((offset - NOTIFY_CFG_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
            if self.queues.get(index).is_some_and(|q| q.enabled)
                && let Err(e) = self.notify[index].write(1)
            {
                tracing::debug!(index, "queue notify EventFd write failed: {e}");
            }
        } else if inside(MSIX_TABLE_OFFSET, MSIX_TABLE_SIZE) {
            lock(&self.intr.msix).write_table(offset - MSIX_TABLE_OFFSET, data);
        }
        // ISR and PBA are read-only.
    }

    /// The PCI_CFG capability's window parameters, if valid: (offset, len).
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let c = self.pci_cfg_cap;
        let bar = usize::from(self.config.read_u8(c + 4));
        let offset = u64::from(self.config.read_u32(c + 8));
        let len = self.config.read_u32(c + 12) as usize;
        (bar == VIRTIO_BAR && matches!(len, 1 | 2 | 4) && offset % len as u64 == 0)
            .then_some((offset, len))
    }

    fn pci_cfg_data_reg(&self) -> usize {
        (self.pci_cfg_cap + 16) / 4
    }
}

/// For the 64-bit queue address fields: (field base, shift, mask) of a
/// natural 8-byte or 4-byte-half access.
fn split_u64_field(off: u64, len: usize) -> Option<(u64, u64, u64)> {
    [COMMON_Q_DESC, COMMON_Q_AVAIL, COMMON_Q_USED]
        .into_iter()
        .find_map(|base| match (off.checked_sub(base)?, len) {
            (0, 8) => Some((base, 0, u64::MAX)),
            (0, 4) => Some((base, 0, 0xffff_ffff)),
            (4, 4) => Some((base, 32, 0xffff_ffff)),
            _ => None,
        })
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_data_reg()
            && let Some((offset, len)) = self.pci_cfg_window()
        {
            let mut buf = [0u8; 4];
            self.bar_read_inner(offset, &mut buf[..len]);
            let v = u32::from_le_bytes(buf);
            self.config.write_u32(self.pci_cfg_cap + 16, v);
            return v;
        }
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if !self.config.write_reg(reg, offset, data) {
            return;
        }
        if reg == self.msix_cap / 4 && offset + data.len() > 2 {
            let ctrl = self.config.read_u16(self.msix_cap + 2);
            lock(&self.intr.msix).set_message_control(ctrl);
        }
        if reg == self.pci_cfg_data_reg()
            && let Some((offset, len)) = self.pci_cfg_window()
        {
            let v = self.config.read_u32(self.pci_cfg_cap + 16).to_le_bytes();
            self.bar_write_inner(offset, &v[..len]);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == VIRTIO_BAR {
            self.bar_read_inner(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == VIRTIO_BAR {
            self.bar_write_inner(offset, data);
        }
    }

    fn decode_bar(&self, addr: u64, len: u64) -> Option<(usize, u64)> {
        self.config.decode_bar(addr, len)
    }

    fn reset(&mut self) {
        self.reset_virtio();
        let ctrl = {
            let mut m = lock(&self.intr.msix);
            m.reset();
            m.message_control()
        };
        self.config.reset();
        self.config.write_u16(self.msix_cap + 2, ctrl);
        self.intr.config_generation.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::msix::tests::{FakeSink, SinkCall};
    use crate::virtio::{ActivateError, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FAILED};
    use std::sync::atomic::AtomicUsize;
    use vm_memory::Bytes;

    /// Records activations; config space is 8 bytes of which the first 4
    /// are writable.
    pub(crate) struct FakeDevice {
        pub activations: Arc<AtomicUsize>,
        pub resets: Arc<AtomicUsize>,
        pub acked: Arc<Mutex<u64>>,
        pub ready: Arc<Mutex<Vec<bool>>>,
        pub interrupt: Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>,
        cfg: [u8; 8],
        fail: bool,
    }

    impl FakeDevice {
        pub fn new() -> Self {
            FakeDevice {
                activations: Arc::default(),
                resets: Arc::default(),
                acked: Arc::default(),
                ready: Arc::default(),
                interrupt: Arc::default(),
                cfg: [1, 2, 3, 4, 5, 6, 7, 8],
                fail: false,
            }
        }
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn ack_features(&mut self, f: u64) {
            *self.acked.lock().unwrap() = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, d) in data.iter_mut().enumerate() {
                *d = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.cfg.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, d) in data.iter().enumerate() {
                if let Some(o) = usize::try_from(offset).ok().map(|o| o + i)
                    && o < 4
                {
                    self.cfg[o] = *d;
                }
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap<()>,
            queues: Vec<(Queue, EventFd)>,
            interrupt: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::AlreadyActive);
            }
            self.activations.fetch_add(1, Ordering::SeqCst);
            *self.ready.lock().unwrap() = queues.iter().map(|(q, _)| q.ready()).collect();
            *self.interrupt.lock().unwrap() = Some(interrupt);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.resets.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    /// A minimal driver poking a VirtioPciDevice's BAR directly.
    pub(crate) struct Driver<'a> {
        pub dev: &'a mut VirtioPciDevice,
    }

    impl Driver<'_> {
        pub fn r(&mut self, off: u64, len: usize) -> u64 {
            let mut d = vec![0u8; len];
            self.dev.bar_read(VIRTIO_BAR, off, &mut d);
            d.iter().rev().fold(0, |a, b| (a << 8) | u64::from(*b))
        }
        pub fn w(&mut self, off: u64, len: usize, v: u64) {
            self.dev.bar_write(VIRTIO_BAR, off, &v.to_le_bytes()[..len]);
        }
        pub fn status(&mut self) -> u8 {
            self.r(COMMON_STATUS, 1) as u8
        }
        pub fn set_status(&mut self, s: u8) {
            self.w(COMMON_STATUS, 1, s.into());
        }
        pub fn device_features(&mut self) -> u64 {
            self.w(COMMON_DFSELECT, 4, 0);
            let lo = self.r(COMMON_DF, 4);
            self.w(COMMON_DFSELECT, 4, 1);
            lo | (self.r(COMMON_DF, 4) << 32)
        }
        pub fn negotiate(&mut self, features: u64) -> bool {
            self.set_status(STATUS_ACKNOWLEDGE);
            self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            self.w(COMMON_GFSELECT, 4, 0);
            self.w(COMMON_GF, 4, features & 0xffff_ffff);
            self.w(COMMON_GFSELECT, 4, 1);
            self.w(COMMON_GF, 4, features >> 32);
            self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
            self.status() & STATUS_FEATURES_OK != 0
        }
        /// Enable MSI-X and program vector `v` unmasked.
        pub fn enable_msix(&mut self, vectors: u16) {
            let cap = self.dev.msix_cap;
            self.dev
                .config_write(cap / 4, 2, &MSIX_CTRL_ENABLE.to_le_bytes());
            for v in 0..u64::from(vectors) {
                let base = MSIX_TABLE_OFFSET + v * 16;
                self.w(base, 4, 0xfee0_0000);
                self.w(base + 4, 4, 0);
                self.w(base + 8, 4, 0x30 + v);
                self.w(base + 12, 4, 0);
            }
        }
        pub fn setup_queue(
            &mut self,
            q: u16,
            size: u16,
            desc: u64,
            avail: u64,
            used: u64,
            vector: u16,
        ) {
            self.w(COMMON_Q_SELECT, 2, q.into());
            self.w(COMMON_Q_SIZE, 2, size.into());
            self.w(COMMON_Q_DESC, 4, desc & 0xffff_ffff);
            self.w(COMMON_Q_DESC + 4, 4, desc >> 32);
            self.w(COMMON_Q_AVAIL, 8, avail);
            self.w(COMMON_Q_USED, 4, used);
            self.w(COMMON_Q_USED + 4, 4, used >> 32);
            self.w(COMMON_Q_MSIX, 2, vector.into());
            self.w(COMMON_Q_ENABLE, 2, 1);
        }
        pub fn notify(&mut self, q: u16) {
            self.w(NOTIFY_CFG_OFFSET + u64::from(q) * 4, 2, q.into());
        }
    }

    pub(crate) fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn fake() -> (VirtioPciDevice, Arc<FakeSink>, FakeHandles) {
        let d = FakeDevice::new();
        let h = FakeHandles {
            activations: d.activations.clone(),
            resets: d.resets.clone(),
            acked: d.acked.clone(),
            ready: d.ready.clone(),
            interrupt: d.interrupt.clone(),
        };
        let sink = Arc::new(FakeSink::default());
        let dev = VirtioPciDevice::new(Box::new(d), memory(), sink.clone()).unwrap();
        (dev, sink, h)
    }

    struct FakeHandles {
        activations: Arc<AtomicUsize>,
        resets: Arc<AtomicUsize>,
        acked: Arc<Mutex<u64>>,
        ready: Arc<Mutex<Vec<bool>>>,
        interrupt: Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>,
    }

    /// Walk the capability list and return (offset, id, cfg_type) triples.
    fn caps(dev: &mut VirtioPciDevice) -> Vec<(usize, u8, u8)> {
        let mut out = vec![];
        let mut p = (dev.config_read(0x34 / 4) & 0xff) as usize;
        while p != 0 && out.len() < 16 {
            let d = dev.config_read(p / 4);
            out.push((p, d as u8, (d >> 24) as u8));
            p = ((d >> 8) & 0xff) as usize;
        }
        out
    }

    #[test]
    fn pci_identity_and_capabilities() {
        let (mut dev, _, _) = fake();
        assert_eq!(
            dev.config_read(0),
            (u32::from(0x1040u16 + 42) << 16) | 0x1af4
        );
        assert_eq!(dev.config_read(2) & 0xff, 1);
        assert_eq!(dev.config_read(0xb), (42 << 16) | 0x1af4);
        assert_ne!(dev.config_read(1) & (0x10 << 16), 0);
        let caps = caps(&mut dev);
        let ids: Vec<u8> = caps.iter().map(|c| c.1).collect();
        assert_eq!(ids, vec![0x11, 9, 9, 9, 9, 9]);
        let types: Vec<u8> = caps[1..].iter().map(|c| c.2).collect();
        assert_eq!(types, vec![1, 3, 4, 2, 5]);
        // MSI-X: 3 vectors (config + 2 queues), table/PBA in BAR 0.
        let (m, _, _) = caps[0];
        assert_eq!(dev.config_read(m / 4) >> 16, 2);
        assert_eq!(dev.config_read(m / 4 + 1), MSIX_TABLE_OFFSET as u32);
        assert_eq!(dev.config_read(m / 4 + 2), MSIX_PBA_OFFSET as u32);
        // Notify cap: offset, length and multiplier.
        let (n, _, _) = caps[4];
        assert_eq!(dev.config_read(n / 4 + 2), NOTIFY_CFG_OFFSET as u32);
        assert_eq!(dev.config_read(n / 4 + 4), NOTIFY_OFF_MULTIPLIER);
        // BAR 0 is a 64-bit memory BAR of 32 KiB.
        dev.config_write(4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(dev.config_read(4), !(VIRTIO_BAR_SIZE as u32 - 1) | 0b100);
        // Vendor caps are read-only.
        let (c, _, _) = caps[1];
        dev.config_write(c / 4 + 2, 0, &0u32.to_le_bytes());
        assert_eq!(dev.config_read(c / 4 + 2), COMMON_CFG_OFFSET as u32);
        dev.config_write(c / 4 + 3, 0, &0u32.to_le_bytes());
        assert_eq!(dev.config_read(c / 4 + 3), COMMON_CFG_SIZE as u32);
    }

    #[test]
    fn feature_negotiation() {
        let (mut dev, _, h) = fake();
        let mut d = Driver { dev: &mut dev };
        let f = d.device_features();
        assert_eq!(f, (1 << 5) | (1 << VIRTIO_F_VERSION_1));
        d.w(COMMON_DFSELECT, 4, 7);
        assert_eq!(d.r(COMMON_DF, 4), 0);
        // Not a subset: FEATURES_OK refused.
        assert!(!d.negotiate(f | (1 << 6)));
        d.set_status(0);
        // Without VERSION_1: refused.
        assert!(!d.negotiate(1 << 5));
        d.set_status(0);
        assert_eq!(d.status(), 0);
        assert!(d.negotiate(f));
        assert_eq!(*h.acked.lock().unwrap(), f);
        // Features are frozen after FEATURES_OK.
        d.w(COMMON_GFSELECT, 4, 0);
        d.w(COMMON_GF, 4, 0);
        assert_eq!(d.r(COMMON_GF, 4), 1 << 5);
        assert_eq!(d.dev.driver_features(), f);
        // Clearing bits without reset is ignored.
        d.set_status(STATUS_ACKNOWLEDGE);
        assert_eq!(
            d.status(),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
        // FAILED can be added.
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED);
        assert_eq!(d.status() & STATUS_FAILED, STATUS_FAILED);
        // ACCESS_PLATFORM is offered only on request.
        assert_eq!(f & (1 << VIRTIO_F_ACCESS_PLATFORM), 0);
    }

    #[test]
    fn queue_setup_and_activation() {
        let (mut dev, sink, h) = fake();
        let mut d = Driver { dev: &mut dev };
        let f = d.device_features();
        assert_eq!(d.r(COMMON_NUMQ, 2), 2);
        // DRIVER_OK without FEATURES_OK → NEEDS_RESET, no activation.
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(h.activations.load(Ordering::SeqCst), 0);
        d.set_status(0);
        assert_eq!(d.status(), 0);

        assert!(d.negotiate(f));
        d.enable_msix(3);
        // Queue 0: max 16. Invalid sizes are ignored.
        d.w(COMMON_Q_SELECT, 2, 0);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 16);
        d.w(COMMON_Q_SIZE, 2, 12);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 16);
        d.w(COMMON_Q_SIZE, 2, 32);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 16);
        d.w(COMMON_Q_SIZE, 2, 0);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 16);
        d.w(COMMON_Q_SIZE, 2, 4);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 4);
        assert_eq!(d.r(COMMON_Q_NOFF, 2), 0);
        // Vector beyond the table reads back NO_VECTOR.
        d.w(COMMON_Q_MSIX, 2, 3);
        assert_eq!(d.r(COMMON_Q_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        d.w(COMMON_MSIX, 2, 0);
        assert_eq!(d.r(COMMON_MSIX, 2), 0);
        d.setup_queue(0, 4, 0x1000, 0x2000, 0x3000, 1);
        assert_eq!(d.r(COMMON_Q_DESC, 8), 0x1000);
        assert_eq!(d.r(COMMON_Q_AVAIL, 4), 0x2000);
        assert_eq!(d.r(COMMON_Q_USED + 4, 4), 0);
        assert_eq!(d.r(COMMON_Q_ENABLE, 2), 1);
        // Enabled queues can't be reprogrammed.
        d.w(COMMON_Q_DESC, 8, 0x5000);
        d.w(COMMON_Q_SIZE, 2, 2);
        assert_eq!(d.r(COMMON_Q_DESC, 8), 0x1000);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 4);
        // Out-of-range queue select: zeros, writes ignored.
        d.w(COMMON_Q_SELECT, 2, 9);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 0);
        d.w(COMMON_Q_ENABLE, 2, 1);
        assert_eq!(d.r(COMMON_Q_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        // Queue 1 left disabled.
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(h.activations.load(Ordering::SeqCst), 1);
        assert_eq!(*h.ready.lock().unwrap(), vec![true, false]);

        // Notifications: only enabled queues signal their EventFd.
        d.notify(0);
        d.notify(1);
        d.w(NOTIFY_CFG_OFFSET + 4 * 500, 2, 0);
        assert_eq!(d.dev.notify_eventfd(0).unwrap().read().unwrap(), 1);
        assert!(d.dev.notify_eventfd(1).unwrap().read().is_err());

        // Interrupts: queue 0 → vector 1; config → vector 0 + generation.
        sink.take();
        let intr = h.interrupt.lock().unwrap().clone().unwrap();
        intr.signal_used_queue(0);
        assert_eq!(sink.take(), vec![SinkCall::Trigger(1)]);
        intr.signal_used_queue(1); // NO_VECTOR: ISR only
        intr.signal_used_queue(77);
        assert!(sink.take().is_empty());
        let gen0 = d.r(COMMON_CFGGENERATION, 1);
        intr.signal_config_change();
        assert_eq!(sink.take(), vec![SinkCall::Trigger(0)]);
        assert_eq!(d.r(COMMON_CFGGENERATION, 1), gen0 + 1);
        // ISR read clears.
        assert_eq!(d.r(ISR_CFG_OFFSET, 1), 3);
        assert_eq!(d.r(ISR_CFG_OFFSET, 1), 0);

        // Device config passthrough.
        assert_eq!(d.r(DEVICE_CFG_OFFSET, 4), 0x0403_0201);
        d.w(DEVICE_CFG_OFFSET + 2, 2, 0xbbaa);
        assert_eq!(d.r(DEVICE_CFG_OFFSET, 8), 0x0807_0605_bbaa_0201);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 0xffe, 2), 0);
        assert_eq!(d.r(DEVICE_CFG_OFFSET + 0xfff, 2), 0);

        // Reset: device reset, queues back to defaults.
        d.set_status(0);
        assert_eq!(h.resets.load(Ordering::SeqCst), 2);
        d.w(COMMON_Q_SELECT, 2, 0);
        assert_eq!(d.r(COMMON_Q_ENABLE, 2), 0);
        assert_eq!(d.r(COMMON_Q_SIZE, 2), 16);
        assert_eq!(d.r(COMMON_Q_DESC, 8), 0);
        assert_eq!(d.r(COMMON_Q_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
        assert_eq!(d.r(COMMON_MSIX, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    }

    #[test]
    fn invalid_rings_fail_activation() {
        let (mut dev, _, h) = fake();
        let mut d = Driver { dev: &mut dev };
        let f = d.device_features();
        assert!(d.negotiate(f));
        // Used ring beyond guest memory.
        d.setup_queue(0, 16, 0x1000, 0x2000, 0xfff_0000, 0);
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(h.activations.load(Ordering::SeqCst), 0);
        // Misaligned descriptor table.
        d.set_status(0);
        assert!(d.negotiate(f));
        d.setup_queue(0, 16, 0x1001, 0x2000, 0x3000, 0);
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(h.activations.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn pci_cfg_window_and_msix_control() {
        let (mut dev, sink, _) = fake();
        let c = dev.pci_cfg_cap;
        // Window onto common cfg num_queues (offset 0x12, 2 bytes).
        dev.config_write(c / 4 + 1, 0, &[VIRTIO_BAR as u8]);
        dev.config_write(c / 4 + 2, 0, &0x12u32.to_le_bytes());
        dev.config_write(c / 4 + 3, 0, &2u32.to_le_bytes());
        assert_eq!(dev.config_read(c / 4 + 4), 2);
        // Write device status 1 through the window.
        dev.config_write(c / 4 + 2, 0, &0x14u32.to_le_bytes());
        dev.config_write(c / 4 + 3, 0, &1u32.to_le_bytes());
        dev.config_write(c / 4 + 4, 0, &1u32.to_le_bytes());
        assert_eq!(dev.status(), 1);
        // Bad length / misaligned offset: plain register, no access.
        dev.config_write(c / 4 + 3, 0, &3u32.to_le_bytes());
        dev.config_write(c / 4 + 4, 0, &0u32.to_le_bytes());
        assert_eq!(dev.status(), 1);
        // Message control: enable + function mask stick, table size is RO.
        let m = dev.msix_cap;
        dev.config_write(m / 4, 2, &0xffffu16.to_le_bytes());
        assert_eq!(dev.config_read(m / 4) >> 16, 0xc002);
        // Unmask vector 0 via the BAR, then clear the function mask.
        dev.bar_write(VIRTIO_BAR, MSIX_TABLE_OFFSET + 12, &0u32.to_le_bytes());
        assert!(sink.take().is_empty());
        dev.config_write(m / 4, 3, &[0x80]);
        assert_eq!(
            sink.take(),
            vec![SinkCall::Route(
                0,
                Some(crate::device::MsiMessage::default())
            )]
        );
        // FLR: MSI-X disabled, routes removed, status 0.
        dev.reset();
        assert_eq!(sink.take(), vec![SinkCall::Route(0, None)]);
        assert_eq!(dev.config_read(m / 4) >> 16, 2);
        assert_eq!(dev.status(), 0);
        assert_eq!(dev.config_read(1) & 0xffff, 0);
    }

    #[test]
    fn bad_device_definitions() {
        struct NoQueues;
        impl VirtioDevice for NoQueues {
            fn device_type(&self) -> u32 {
                4
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[]
            }
            fn features(&self) -> u64 {
                0
            }
            fn read_config(&self, _: u64, _: &mut [u8]) {}
            fn write_config(&mut self, _: u64, _: &[u8]) {}
            fn activate(
                &mut self,
                _: GuestMemoryMmap<()>,
                _: Vec<(Queue, EventFd)>,
                _: Arc<dyn VirtioInterrupt>,
            ) -> Result<(), ActivateError> {
                Ok(())
            }
            fn reset(&mut self) -> bool {
                true
            }
        }
        let sink = Arc::new(FakeSink::default());
        assert!(matches!(
            VirtioPciDevice::new(Box::new(NoQueues), memory(), sink),
            Err(VirtioPciError::QueueCount(0))
        ));
        // Guest memory sanity for the helpers.
        let m = memory();
        m.write_obj(1u32, GuestAddress(0)).unwrap();
    }
}
