-- wrk script for Benchmarks/jobs: every request is the same small JSON POST.
--
--   wrk ... -s jobs-post.lua URL                  plain load: no per-response work
--   wrk ... -s jobs-post.lua URL -- count         also count responses by status
--   wrk ... -s jobs-post.lua URL -- fill N FILE   count, and once a thread has
--       had N 202s, write FILE.<thread> and stop that thread (wrk itself runs
--       until -d is over or it gets SIGINT, which Benchmarks/jobs sends)
--
-- With count or fill, done() prints "status CODE N" per status seen and
-- "location PATH" (the Location of each thread's last 202).

wrk.method = "POST"
wrk.body = '{"report":"quarterly","format":"pdf"}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("id", #threads)
end

function init(args)
    mode = args[1] or "plain"
    counts = {}
    accepted = 0
    location = ""
    if mode == "plain" then
        response = nil  -- wrk then skips parsing headers and bodies
        return
    end
    budget = tonumber(args[2] or "0")
    marker = args[3]
end

function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
    if status == 202 then
        accepted = accepted + 1
        location = headers["Location"] or location
        if mode == "fill" and accepted == budget then
            local f = assert(io.open(marker .. "." .. id, "w"))
            f:write(accepted, "\n")
            f:close()
            wrk.thread:stop()
        end
    end
end

function done(summary, latency, requests)
    local total = {}
    for _, thread in ipairs(threads) do
        if thread:get("mode") ~= "plain" then
            for status, n in pairs(thread:get("counts")) do
                total[status] = (total[status] or 0) + n
            end
            print("location " .. thread:get("location"))
        end
    end
    for status, n in pairs(total) do
        print("status " .. status .. " " .. n)
    end
end
