/*
 * lua/wgmod.c -> lua/wgmod.so (side module) and build/native/lua/wgmod.so: a Lua C module.
 * `require "wgmod"` finds it through package.cpath ("?.so" patterns), dlopens it and calls
 * luaopen_wgmod through dlsym; every Lua API call it makes is an import resolved against the
 * interpreter's exports. wgmod.check raises a Lua error (a longjmp thrown by the interpreter
 * through this module's frames) when its argument is not an integer. wgmod.parse reads errno
 * after strtoll, through __errno_location() (see include/side_errno.h).
 */
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "side_errno.h"

static int loads;

static int wg_sum(lua_State *L) {
    int n = lua_gettop(L);
    lua_Integer s = 0;
    for (int i = 1; i <= n; i++) s += luaL_checkinteger(L, i);
    lua_pushinteger(L, s);
    return 1;
}

static int wg_join(lua_State *L) {
    const char *sep = luaL_optstring(L, 2, ",");
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer n = luaL_len(L, 1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        luaL_addvalue(&b); /* strings and numbers; anything else is an error below */
        if (i < n) luaL_addstring(&b, sep);
    }
    luaL_pushresult(&b);
    return 1;
}

static int wg_check(lua_State *L) {
    if (!lua_isinteger(L, 1)) return luaL_error(L, "wgmod.check: integer expected, got %s",
                                                luaL_typename(L, 1));
    lua_pushinteger(L, lua_tointeger(L, 1) * 2);
    return 1;
}

/* Calls back into Lua: f(i) for i = 1..n, summed. */
static int wg_fold(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_Integer n = luaL_checkinteger(L, 2);
    lua_Number acc = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_pushvalue(L, 1);
        lua_pushinteger(L, i);
        lua_call(L, 1, 1);
        acc += luaL_checknumber(L, -1);
        lua_pop(L, 1);
    }
    lua_pushnumber(L, acc);
    return 1;
}

/* strtoll in base 0: the number, or nil and "ERANGE" / "invalid". */
static int wg_parse(lua_State *L) {
    const char *s = luaL_checkstring(L, 1);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno == ERANGE || end == s || *end) {
        lua_pushnil(L);
        lua_pushstring(L, errno == ERANGE ? "ERANGE" : "invalid");
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)v);
    return 1;
}

static const luaL_Reg funcs[] = {{"sum", wg_sum},     {"join", wg_join},   {"check", wg_check},
                                 {"fold", wg_fold},   {"parse", wg_parse}, {NULL, NULL}};

int luaopen_wgmod(lua_State *L) {
    loads++;
    luaL_newlib(L, funcs);
    lua_pushinteger(L, loads);
    lua_setfield(L, -2, "loads");
    lua_pushliteral(L, "wgmod 1.0");
    lua_setfield(L, -2, "version");
    return 1;
}
