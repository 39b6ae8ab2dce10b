/// A failure the edge reports to its client, with the HTTP status it maps to.
///
/// Messages are safe to show a user: they name routes and limits, never internals.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    enum Code: String, Sendable, Equatable {
        case notFound = "not-found"
        case methodNotAllowed = "method-not-allowed"
        case payloadTooLarge = "payload-too-large"
        case badRequest = "bad-request"
        case noConsumer = "no-consumer"
        case brokerUnavailable = "broker-unavailable"
        case timeout = "timeout"
        case badReply = "bad-reply"
        case replyTooLarge = "reply-too-large"
        case shuttingDown = "shutting-down"
        case headersTooLarge = "headers-too-large"
        case legsFailed = "legs-failed"
        case conflict = "conflict"
        case notImplemented = "not-implemented"
    }

    let code: Code
    /// A one-line explanation for the client.
    public let detail: String
    /// Methods for the `Allow` header of a 405.
    public var allow: [String] = []

    public var description: String { "\(status) \(title): \(detail)" }

    public var status: Int {
        switch code {
        case .notFound: return 404
        case .methodNotAllowed: return 405
        case .payloadTooLarge: return 413
        case .headersTooLarge: return 431
        case .badRequest: return 400
        case .conflict: return 409
        case .noConsumer, .brokerUnavailable, .shuttingDown: return 503
        case .timeout: return 504
        case .badReply, .replyTooLarge, .legsFailed: return 502
        case .notImplemented: return 501
        }
    }

    public var title: String {
        switch code {
        case .notFound: return "Not Found"
        case .methodNotAllowed: return "Method Not Allowed"
        case .payloadTooLarge: return "Payload Too Large"
        case .headersTooLarge: return "Request Header Fields Too Large"
        case .badRequest: return "Bad Request"
        case .conflict: return "Conflict"
        case .noConsumer: return "No Consumer"
        case .brokerUnavailable: return "Broker Unavailable"
        case .shuttingDown: return "Shutting Down"
        case .timeout: return "Gateway Timeout"
        case .badReply, .replyTooLarge, .legsFailed: return "Bad Gateway"
        case .notImplemented: return "Not Implemented"
        }
    }

    /// The problem `type` URI (RFC 9457), stable for clients to switch on.
    public var type: String { "https://gangway.dev/problems/\(code.rawValue)" }

    public static func notFound(path: String) -> GatewayError {
        GatewayError(code: .notFound, detail: "no route matches \(path)")
    }

    /// A job id this edge does not know (the path itself is a job's).
    /// - Parameters:
    ///   - keptMinutes: how long the edge keeps a finished job; `keptJobs`: how many jobs at most.
    public static func jobNotFound(id: String, keptMinutes: Int64, keptJobs: Int) -> GatewayError {
        GatewayError(code: .notFound, detail: "no job \(id) is known here: it was never submitted, or it finished longer ago than this edge keeps jobs (\(keptMinutes) minutes after their last event, \(keptJobs) jobs at most)")
    }

    /// A job's result asked for before it succeeded (or of a job that did not).
    public static func resultNotFound(jobID: String, status: String) -> GatewayError {
        let why = status == "succeeded" ? "it succeeded without one" : "it is \(status)"
        return GatewayError(code: .notFound, detail: "job \(jobID) has no result: \(why)")
    }

    public static func methodNotAllowed(method: String, path: String, allow: [String]) -> GatewayError {
        GatewayError(code: .methodNotAllowed, detail: "\(method) is not allowed on \(path); allowed: \(allow.joined(separator: ", "))", allow: allow)
    }

    public static func payloadTooLarge(limit: Int?) -> GatewayError {
        guard let limit else { return GatewayError(code: .payloadTooLarge, detail: "the request body is too large") }
        return GatewayError(code: .payloadTooLarge, detail: "the request body exceeds this route's limit of \(limit) bytes")
    }

    public static func headersTooLarge(_ detail: String) -> GatewayError {
        GatewayError(code: .headersTooLarge, detail: detail)
    }

    public static func badRequest(_ detail: String) -> GatewayError {
        GatewayError(code: .badRequest, detail: detail)
    }

    public static func conflict(_ detail: String) -> GatewayError {
        GatewayError(code: .conflict, detail: detail)
    }

    /// The request uses something of HTTP the edge does not implement (a transfer coding other
    /// than chunked).
    public static func notImplemented(_ detail: String) -> GatewayError {
        GatewayError(code: .notImplemented, detail: detail)
    }

    public static func noConsumer(route: String, reason: String) -> GatewayError {
        GatewayError(code: .noConsumer, detail: "no worker is serving route '\(route)': \(reason)")
    }

    public static func brokerUnavailable(_ reason: String) -> GatewayError {
        GatewayError(code: .brokerUnavailable, detail: "the message broker is unavailable: \(reason)")
    }

    public static func timeout(route: String, milliseconds: Int) -> GatewayError {
        GatewayError(code: .timeout, detail: "no reply from route '\(route)' within \(milliseconds) ms")
    }

    public static func badReply(route: String, reason: String) -> GatewayError {
        GatewayError(code: .badReply, detail: "the worker for route '\(route)' sent a malformed reply: \(reason)")
    }

    /// A reply (or a streamed reply's part) whose body was larger than the edge takes: it was
    /// dropped as it arrived, never held.
    public static func replyTooLarge(route: String, size: UInt64, limit: Int) -> GatewayError {
        GatewayError(code: .replyTooLarge, detail: "the worker for route '\(route)' sent a reply body of \(size) bytes, more than this edge takes (\(limit) bytes, --max-reply-bytes)")
    }

    /// An aggregate could not be completed; names every failed leg and why.
    public static func legsFailed(route: String, failures: [(key: String, reason: String)]) -> GatewayError {
        let list = failures.map { "\($0.key) (\($0.reason))" }.joined(separator: "; ")
        return GatewayError(code: .legsFailed, detail: "route '\(route)': \(failures.count) leg\(failures.count == 1 ? "" : "s") failed: \(list)")
    }

    /// A stream's parts stopped coming for longer than its idle timeout.
    public static func streamIdle(route: String) -> GatewayError {
        GatewayError(code: .timeout, detail: "the stream of route '\(route)' went idle past its idle_timeout")
    }

    /// A stream ran past its route's timeout.
    public static func streamTimeout(route: String) -> GatewayError {
        GatewayError(code: .timeout, detail: "the stream of route '\(route)' ran past its timeout")
    }

    /// The worker produced parts faster than the client read them, past the stream's buffer.
    public static func streamOverflow(route: String) -> GatewayError {
        GatewayError(code: .badReply, detail: "the stream of route '\(route)' outran the client: more than its buffer (8 MiB) was waiting, parts not yet read by the client or held back until a missing part came")
    }

    /// A gather's replies passed what the edge holds for one response.
    public static func gatherTooLarge(route: String, limit: Int) -> GatewayError {
        GatewayError(code: .replyTooLarge, detail: "the replies gathered for route '\(route)' passed \(limit) bytes in all, more than this edge holds for one response (--max-reply-bytes)")
    }

    public static let shuttingDown = GatewayError(code: .shuttingDown, detail: "this edge is shutting down; retry on another")
}
