//! initramfs assembly: cpio newc writer, module dependency resolution, busybox, guest agent
