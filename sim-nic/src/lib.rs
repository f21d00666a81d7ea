//! gve-compatible DQO-RDA NIC model, wires, fault hooks, pcap (no KVM inside)
