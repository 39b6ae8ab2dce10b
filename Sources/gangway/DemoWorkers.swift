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
            var headers: [String: String] = [:]
            headers.reserveCapacity(3)
            headers["x-echo-method"] = request.method
            let requestID = request.requestID
            if !requestID.isEmpty { headers["x-request-id-seen"] = requestID }
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

    /// Whole-number options from a demo worker's query string, each within its range. A value
    /// that is not a whole number or is out of range is an error naming the option, never
    /// clamped or ignored; options the worker does not take are ignored.
    struct Options {
        struct Invalid: Error, CustomStringConvertible {
            var description: String
        }

        private var values: [Substring: Int] = [:]

        init(query: String, ranges: KeyValuePairs<String, ClosedRange<Int>>) throws(Invalid) {
            for pair in query.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let range = ranges.first(where: { $0.key == kv[0] })?.value else { continue }
                let text = kv.count == 2 ? kv[1] : ""
                guard let value = Int(text), range.contains(value) else {
                    throw Invalid(description: "\(kv[0]) must be a whole number from \(range.lowerBound) to \(range.upperBound), not '\(text.prefix(40))'")
                }
                values[kv[0]] = value
            }
        }

        subscript(name: String, default value: Int) -> Int {
            values[Substring(name)] ?? value
        }
    }

    /// Streams `n` numbered JSON parts (`?n=10&delay_ms=100&pad=0`, defaults 10, 100 and 0;
    /// `pad` adds that many bytes of padding to each part), one at a time, stopping early when
    /// the client goes away. An option out of range gets a 400 problem as the only part.
    static func count() -> Worker.StreamHandler {
        { request, writer in
            let options: Options
            do throws(Options.Invalid) {
                options = try Options(query: request.query, ranges: ["n": 0...100_000, "delay_ms": 0...60_000, "pad": 0...(1 << 20)])
            } catch {
                let problem = WorkerReply.problem(status: 400, title: "Bad Request", detail: error.description)
                writer.head(status: problem.status)
                try await writer.write(problem.body, contentType: problem.contentType, final: true)
                return
            }
            let n = options["n", default: 10]
            let delay = options["delay_ms", default: 100]
            let pad = options["pad", default: 0]
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
    /// every time (a poison job, dead-lettered after its queue's delivery limit). An option out
    /// of range fails the job at once, with an error that names it.
    static func render() -> Worker.JobHandler {
        { request, job in
            let options = try Options(query: request.query, ranges: ["steps": 1...1000, "delay_ms": 0...60_000, "fail": 0...1, "poison": 0...1])
            let steps = options["steps", default: 5]
            let delay = options["delay_ms", default: 500]
            let fail = options["fail", default: 0] == 1
            let poison = options["poison", default: 0] == 1
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
