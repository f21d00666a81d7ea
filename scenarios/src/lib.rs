//! Jobs, their runners on each engine, the event stream and the reports.

pub mod events;
pub mod job;
pub mod nested;
pub mod qemu;
pub mod run;
