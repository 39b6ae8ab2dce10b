import GangwayWorker
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The demo workers shipped with Gangway.
enum DemoWorkers {
    struct DemoFailure: Error {}

    /// Returns the request body and content type unchanged; reports the request id, trace
    /// context and method it saw as `X-Request-ID-Seen`, `X-Traceparent-Seen` and
    /// `X-Echo-Method`. A forwarded `X-Demo: fail` header makes it throw, to show what a
    /// failing handler looks like (a 500 problem reply). With a delay, sleeps first (for
    /// demonstrating timeouts and redelivery).
    static func echo(delayMilliseconds: Int) -> Worker.Handler {
        { request in
            if request.httpHeader("x-demo") == "fail" {
                throw DemoFailure()
            }
            if delayMilliseconds > 0 {
                try await Task.sleep(for: .milliseconds(delayMilliseconds))
            }
            var headers = ["x-echo-method": request.method]
            if !request.requestID.isEmpty { headers["x-request-id-seen"] = request.requestID }
            if let traceparent = request.traceparent { headers["x-traceparent-seen"] = traceparent }
            return WorkerReply(status: 200, headers: headers, contentType: request.contentType, body: request.body)
        }
    }

    /// Returns the worker's clock as JSON.
    static func time() -> Worker.Handler {
        { _ in
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            let ms = Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
            var t = ts.tv_sec
            var tm = tm()
            gmtime_r(&t, &tm)
            let iso = iso8601(tm, milliseconds: Int(ms % 1000))
            return .json(#"{"time":"\#(iso)","epoch_ms":\#(ms)}"#)
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, built from padded integers: `String(format:)` went through
    /// Foundation's formatter and cost the time worker a few percent of its CPU per request.
    static func iso8601(_ tm: tm, milliseconds: Int) -> String {
        func padded(_ value: some BinaryInteger, _ digits: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, digits - text.count)) + text
        }
        return padded(tm.tm_year + 1900, 4) + "-" + padded(tm.tm_mon + 1, 2) + "-" + padded(tm.tm_mday, 2)
            + "T" + padded(tm.tm_hour, 2) + ":" + padded(tm.tm_min, 2) + ":" + padded(tm.tm_sec, 2)
            + "." + padded(milliseconds, 3) + "Z"
    }

    /// A user profile, for the dashboard aggregate. The user comes from the `user` parameter.
    static func profile() -> Worker.Handler {
        { request in
            let user = request.parameters["user"] ?? "u-42"
            return .json(#"{"id":"\#(user)","name":"Ada Lovelace","tier":"gold"}"#)
        }
    }

    /// A user's recent orders, for the dashboard aggregate.
    static func orders() -> Worker.Handler {
        { request in
            let user = request.parameters["user"] ?? "u-42"
            return .json(#"{"user":"\#(user)","orders":[{"id":"o-1","total":12.5},{"id":"o-2","total":40}]}"#)
        }
    }

    /// Streams `n` numbered JSON parts (`?n=10&delay_ms=100&pad=0`, defaults 10, 100 and 0;
    /// `pad` adds that many bytes of padding to each part), one at a time, stopping early when
    /// the client goes away.
    static func count() -> Worker.StreamHandler {
        { request, writer in
            var n = 10
            var delay = 100
            var pad = 0
            for pair in request.query.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2, let v = Int(kv[1]), v >= 0 else { continue }
                if kv[0] == "n" { n = min(v, 100_000) }
                if kv[0] == "delay_ms" { delay = min(v, 60_000) }
                if kv[0] == "pad" { pad = min(v, 1 << 20) }
            }
            let padding = String(repeating: "x", count: pad)
            for i in 0..<n {
                if delay > 0 && i > 0 { try await Task.sleep(for: .milliseconds(delay)) }
                try Task.checkCancellation()
                try await writer.write(ByteBuffer(string: pad == 0 ? #"{"n":\#(i),"of":\#(n)}"# : #"{"n":\#(i),"of":\#(n),"pad":"\#(padding)"}"#), contentType: "application/json", final: i == n - 1)
            }
        }
    }

    struct RenderFailure: Error, CustomStringConvertible {
        var description: String { "the render failed (asked for with ?fail=1)" }
    }

    /// A demo job: renders in `steps` steps (`?steps=5&delay_ms=500&fail=0&poison=0`),
    /// reporting progress and a log line for each, and returns `{"url": …}`. `fail=1` throws at
    /// the last step (a failed job); `poison=1` kills the worker process after the first step,
    /// every time (a poison job, dead-lettered after its queue's delivery limit).
    static func render() -> Worker.JobHandler {
        { request, job in
            var steps = 5
            var delay = 500
            var fail = false
            var poison = false
            for pair in request.query.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2, let v = Int(kv[1]), v >= 0 else { continue }
                if kv[0] == "steps" { steps = max(1, min(v, 1000)) }
                if kv[0] == "delay_ms" { delay = min(v, 60_000) }
                if kv[0] == "fail" { fail = v != 0 }
                if kv[0] == "poison" { poison = v != 0 }
            }
            try await job.log("render started: \(steps) steps")
            for i in 1...steps {
                try await Task.sleep(for: .milliseconds(delay))
                if fail && i == steps { throw RenderFailure() }
                try await job.progress(Double(i * 100 / steps), "step \(i) of \(steps)")
                if poison { exit(70) }
            }
            return ByteBuffer(string: #"{"url":"/renders/\#(job.jobID).png"}"#)
        }
    }
}
