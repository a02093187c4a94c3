"""Shared test configuration. Real-ZFS tests live in tests/zfs/ (marked ``zfs``)."""
