"""Whole-store state and operations: the catalog, save sessions, leases, disk space, retention, gc, copy, backups, and the Store facade."""
