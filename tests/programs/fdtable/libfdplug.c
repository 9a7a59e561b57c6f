/* A small side module for fdshare's "dlopen while a thread is blocked" scenarios. */
int fdplug_value(void) { return 42; }
