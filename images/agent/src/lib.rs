//! Guest agent: framed serde protocol over a virtio-console port
