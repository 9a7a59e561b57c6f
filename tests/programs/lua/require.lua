-- `require` of a C module: package.cpath points at the directory given as arg[1], so the
-- interpreter dlopens wgmod.so there and calls luaopen_wgmod.
local dir = arg[1] or "."
package.cpath = dir .. "/?.so"
local wgmod = require("wgmod")
print("loaded", wgmod.version, "loads", wgmod.loads)
print("same module", require("wgmod") == wgmod, package.loaded.wgmod == wgmod)
print("sum", wgmod.sum(1, 2, 3, 4, 5), wgmod.sum())
print("join", wgmod.join({"a", "b", 3, 4.5}), wgmod.join({}, "-"), wgmod.join({1, 2}, " + "))
print("fold", wgmod.fold(function(i) return i * i end, 10))
print("check", wgmod.check(21))
-- errno set by libc (strtoll) in the calling thread, read by the module.
print("parse", wgmod.parse("0x7f"), select(2, wgmod.parse("99999999999999999999")),
      select(2, wgmod.parse("12abc")))
-- Errors raised in the module (luaL_error, luaL_checkinteger) unwind through it to pcall.
local ok, err = pcall(wgmod.check, "x")
print("check error", ok, err)
ok, err = pcall(wgmod.sum, 1, "two")
print("sum error", ok, err)
ok, err = pcall(wgmod.fold, function(i) if i == 3 then error("stop at " .. i, 0) end return i end, 5)
print("fold error", ok, err)
-- A module that does not exist: the error lists where it looked.
ok, err = pcall(require, "wgmod_missing")
print("missing", ok, err:find("module 'wgmod_missing' not found", 1, true) ~= nil,
      err:find(dir .. "/wgmod_missing.so", 1, true) ~= nil)
-- package.loadlib with a wrong entry point reports the symbol.
local f, msg, where = package.loadlib(dir .. "/wgmod.so", "luaopen_nothing")
print("loadlib", f, where, msg ~= nil)
print("done")
