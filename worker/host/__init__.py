"""Host functions the runtime gives guests (WASI preview1, WASIX, wasi-threads)."""
