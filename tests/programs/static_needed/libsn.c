/*
 * static_needed/libsn.c -> static_needed/libsn.so: a PIC side module that a static (non-PIC)
 * wasix-libc main needs (NEEDED libsn.so). It has data of its own (placed by the linker), a
 * function pointer of its own (a slot of its own table region) and calls back into main.
 */
int sn_host_scale(int x); /* main's */

int sn_base = 40;
static int sn_twice(int x) { return 2 * x; }
int (*volatile sn_op)(int) = sn_twice;

int sn_compute(int x) { return sn_host_scale(sn_op(x)) + sn_base; }
