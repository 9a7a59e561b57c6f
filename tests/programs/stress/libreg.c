/*
 * stress/libreg.c -> stress/libreg_core.so (-DREG_CORE) and stress/libreg_ext.so: the two
 * plugins of stress/lazy_registry.wasm. Their constructors call back into the main module:
 * core creates the registry, ext registers itself in it. Print nothing.
 */
extern void registry_create(const char *owner); /* from the main module */
extern void registry_add(const char *name);     /* from the main module */

__attribute__((constructor)) static void init(void) {
#ifdef REG_CORE
    registry_create("core");
#else
    registry_add("ext");
#endif
}
