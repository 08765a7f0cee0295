"""Framework adapters for ckptstore, installed as ``ckptstore.adapters``.

They use only ckptstore's public API; the core never imports them.
"""
