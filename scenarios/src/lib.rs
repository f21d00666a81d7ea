//! Jobs, their runners on each engine, the event stream and the reports.

pub mod campaign;
pub mod devmem;
pub mod ethtool;
pub mod events;
pub mod feed;
pub mod guest_tools;
pub mod job;
pub mod nested;
pub mod netkit;
pub mod qemu;
pub mod report;
pub mod reset;
pub mod run;
pub mod scenario;
pub mod session;
pub mod steps;
pub mod topology;
pub mod verify;
