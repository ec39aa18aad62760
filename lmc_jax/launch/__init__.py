"""Job launchers for clusters (Cloud TPU VMs); standard library only, so they run before any install."""
