"""vmd: OpenBSD's vmd(8) for Linux on KVM."""
