"""``feredge bundle``: an offline install bundle for a 64-bit Raspberry Pi."""
