"""Moving tensor bytes: host staging buffers, codecs, the parallel writer and reader, mmap, devices, RNG capture."""
