-- POST /books/<id>/borrow {"days": 14, "member_id": <m>}, then POST /books/<id>/return, then the
-- next book, over and over. circulation.py runs wrk with one connection per thread, so each thread
-- is one client waiting for each answer before it sends the next request: client i lends books
-- first + i * count .. first + i * count + count - 1 (in turn) to member first_member + i, signed in
-- as the benchmark's librarian. Args: run number, first member id, first book id, books per client.
--
-- The next step is taken when an answer arrives, not when a request is made: wrk calls request()
-- once more than it sends (to check the script), and a request lost with its connection is sent again.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local lend_headers = signed_in({["Content-Type"] = "application/json"})
local return_headers = signed_in({})
local lend_body, first, count, n, lending

function init(args)
   lend_body = string.format('{"days": 14, "member_id": %d}', tonumber(args[2]) + thread_id)
   count = tonumber(args[4])
   first = tonumber(args[3]) + thread_id * count
   n = 0
   lending = true
end

function request()
   local path = "/books/" .. (first + n % count)
   if lending then
      return wrk.format("POST", path .. "/borrow", lend_headers, lend_body)
   end
   return wrk.format("POST", path .. "/return", return_headers)
end

local count_status = response

function response(status, headers, body)
   count_status(status, headers, body)
   if not lending then
      n = n + 1
   end
   lending = not lending
end
