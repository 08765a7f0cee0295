"""What is on storage: the manifest and config models, key grammars, the state-tree encoding, tensor layout, hashing."""
