"""Virtio devices on PCI: the transport, split virtqueues, and one file per device type."""
