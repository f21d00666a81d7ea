//! Integration tests: boot real VMs through the CLI
