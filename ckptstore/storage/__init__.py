"""Bytes at keys: the Backend interface, local disk, fsspec object stores, mount detection."""
