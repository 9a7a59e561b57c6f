-- A plain Lua script: the interpreter alone (closures, coroutines, tables, strings, errors,
-- integer and float arithmetic, files under a mapped directory). Output is deterministic.
local out = {}
local function say(...) print(...) end

-- closures and upvalues
local function counter()
  local n = 0
  return function(k) n = n + (k or 1); return n end
end
local c = counter()
c(); c(5)
say("counter", c())

-- coroutines: a generator of primes
local function primes(limit)
  return coroutine.wrap(function()
    for n = 2, limit do
      local prime = true
      for d = 2, math.floor(math.sqrt(n)) do
        if n % d == 0 then prime = false; break end
      end
      if prime then coroutine.yield(n) end
    end
  end)
end
for p in primes(60) do out[#out + 1] = p end
say("primes", table.concat(out, " "))

-- tables, sort with a comparator, string formatting
local words = {}
for w in ("the quick brown fox jumps over the lazy dog"):gmatch("%a+") do words[#words + 1] = w end
table.sort(words, function(a, b) if #a ~= #b then return #a > #b end return a < b end)
say("sorted", table.concat(words, ","))
say("format", string.format("%5.2f|%-6s|%x|%q", math.pi, "lua", 48879, "a\nb"))
say("gsub", (("hello world"):gsub("o", "0")), ("abc"):rep(3, "-"), ("%d"):format(2^31))

-- integers and floats
say("int", 7 // 2, 7 % -3, -7 // 2, 1 << 62, math.maxinteger + 1 == math.mininteger)
say("float", 7 / 2, 2^0.5, 1e300 * 1e10, math.tointeger(3.0), 3 | 0)

-- errors: pcall, error objects, error with levels, xpcall with a traceback handler
local ok, err = pcall(function() error({code = 42}) end)
say("pcall table", ok, type(err), err.code)
ok, err = pcall(function() local t = nil; return t.x end)
say("pcall index", ok, (err:gsub("^.-:%d+: ", "")))
ok, err = xpcall(function() error("deep", 0) end, function(m) return "handled: " .. m end)
say("xpcall", ok, err)
say("nested", pcall(pcall, error, "x"))

-- metatables
local V = {}
V.__index = V
V.__add = function(a, b) return setmetatable({x = a.x + b.x, y = a.y + b.y}, V) end
V.__tostring = function(v) return "(" .. v.x .. "," .. v.y .. ")" end
local v = setmetatable({x = 1, y = 2}, V) + setmetatable({x = 10, y = 20}, V)
say("meta", tostring(v))

-- files: write, append, read back, remove (DIR from the command line)
local dir = arg[1] or "."
local path = dir .. "/plain.txt"
local f = assert(io.open(path, "w"))
for i = 1, 5 do f:write(("line %d\n"):format(i * i)) end
f:close()
f = assert(io.open(path, "a")); f:write("tail\n"); f:close()
local lines = {}
for line in io.lines(path) do lines[#lines + 1] = line end
say("file", #lines, lines[3], lines[#lines])
f = assert(io.open(path, "rb")); local size = f:seek("end"); f:close()
say("size", size)
say("remove", os.remove(path), io.open(path) == nil)
say("missing", select(2, io.open(dir .. "/no/such/file")) ~= nil)

-- a bigger workload: a string builder and a table of 20000 entries
local t = {}
for i = 1, 20000 do t[i] = i * 3 % 1000 end
local sum = 0
for _, x in ipairs(t) do sum = sum + x end
say("sum", sum, #t, select("#", table.unpack(t, 1, 200)))
say("done")
