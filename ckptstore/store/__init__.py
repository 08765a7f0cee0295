"""Whole-store state and operations: the Store facade, its catalog and save sessions, leases, disk
space, retention, gc, copies and backup mirrors."""
