-- Shared by every scenario script, which loads it with dofile() before its own code.
--
-- It numbers the threads (`thread_id`, from 0, set before init() runs), counts the responses of
-- each thread by status code, and when the run ends prints one line that run.py reads:
--   BENCH_RESULT {"requests": ..., "duration_us": ..., "p50_us": ..., "p99_us": ...,
--                 "errors": {...}, "statuses": {"200": ...}}
-- Every script gets the run number as args[1] (run.py passes it), then its own arguments.
--
-- Writing scripts sign their requests in with signed_in(headers): run.py passes a librarian's
-- bearer token in the environment variable BENCH_TOKEN to those scripts only, so reads stay
-- anonymous (the server's read cache skips requests that carry Authorization).

local threads = {}

-- ``headers`` with Authorization: Bearer <BENCH_TOKEN> added; stops wrk when there is no token.
function signed_in(headers)
   local token = os.getenv("BENCH_TOKEN")
   if token == nil or token == "" then
      error("BENCH_TOKEN is not set: writes need a librarian's bearer token (run.py signs one in)")
   end
   headers["Authorization"] = "Bearer " .. token
   return headers
end

function setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

statuses = {}

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

local function json_object(map)
   local parts = {}
   for key, value in pairs(map) do
      table.insert(parts, string.format('"%s": %d', tostring(key), value))
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + n
      end
   end
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
      '"errors": %s, "statuses": %s}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      json_object(summary.errors), json_object(counts)))
end

