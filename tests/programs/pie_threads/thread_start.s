# pie_threads/thread_start.s: the thread entry of the PIE threads program.
# wasi_thread_start(tid, start_arg) runs first in a new thread's instance group, whose
# __stack_pointer (imported: the program is a PIE) is not set yet: take the stack top from the
# first field of the start argument before any C code runs, then call pt_thread_entry.
	.globaltype __stack_pointer, i32
	.functype pt_thread_entry (i32, i32) -> ()

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
	call pt_thread_entry
	end_function
