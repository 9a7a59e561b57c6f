"""An instance group: one wasm thread's instances, hosted in a worker process."""
