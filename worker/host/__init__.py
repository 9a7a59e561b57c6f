"""Host functions the runtime gives guests (WASIX, wasi-threads, WASI shims)."""
