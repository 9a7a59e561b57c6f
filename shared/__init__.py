"""Process-free pieces both sides need: the wasm reader, dylink.0, protocol, memory, errors."""
