"""The coordinator: linker state, module cache, worker supervision, CLI and Python API."""
