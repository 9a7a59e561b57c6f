# threads/wasi_thread_start.s: the wasi-threads entry point for raw_atomics.c.
# wasi_thread_start(tid, start_arg) is called by the runtime in a new thread (a new instance
# sharing the memory). Before any C code runs, __stack_pointer must point at the thread's own
# stack: start_arg points at a struct whose first field is the stack top.
	.globaltype __stack_pointer, i32
	.functype thread_entry (i32, i32) -> ()

	.globl wasi_thread_start
	.export_name wasi_thread_start, wasi_thread_start
	.type wasi_thread_start,@function
wasi_thread_start:
	.functype wasi_thread_start (i32, i32) -> ()
	local.get 1
	i32.load 0
	global.set __stack_pointer
	local.get 0
	local.get 1
	call thread_entry
	end_function
