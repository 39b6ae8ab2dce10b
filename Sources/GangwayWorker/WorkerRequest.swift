import GangwayAMQPCore
import NIOCore

/// A request as a worker sees it: wire contract v1 decoded from the AMQP message.
public struct WorkerRequest: Sendable {
    /// The raw delivery, for anything the contract does not name.
    public let delivery: Delivery

    public var body: ByteBuffer { delivery.body }
    public var contentType: String? { delivery.properties.contentType }
    public var method: String { header(WireContract.Header.method) ?? "" }
    public var path: String { header(WireContract.Header.path) ?? "" }
    public var query: String { header(WireContract.Header.query) ?? "" }
    public var route: String { delivery.properties.type ?? header(WireContract.Header.route) ?? "" }
    public var requestID: String { header(WireContract.Header.requestID) ?? "" }
    public var traceparent: String? { header(WireContract.Header.traceparent) }
    /// Path parameters of the route template, from `x-param-<name>`.
    public var parameters: [String: String] {
        var out: [String: String] = [:]
        for (k, v) in delivery.properties.headers where k.hasPrefix("x-param-") {
            out[String(k.dropFirst(8))] = v.stringValue
        }
        return out
    }

    /// The deadline in epoch milliseconds (`x-deadline`), after which the requester has gone.
    public var deadlineEpochMilliseconds: Int64? { delivery.properties.headers[WireContract.Header.deadline]?.intValue }

    public init(delivery: Delivery) {
        self.delivery = delivery
    }

    /// A forwarded HTTP request header (`x-header-<name>`), by lower-case name.
    public func httpHeader(_ name: String) -> String? {
        header(WireContract.Header.headerPrefix + name.lowercased())
    }

    public func header(_ name: String) -> String? {
        delivery.properties.headers[name]?.stringValue
    }
}

/// What a worker answers: becomes the HTTP response at the edge.
public struct WorkerReply: Sendable {
    public var status: Int
    /// Response headers, sent as `x-header-<name>`.
    public var headers: [String: String]
    public var contentType: String?
    public var body: ByteBuffer

    public init(status: Int = 200, headers: [String: String] = [:], contentType: String? = nil, body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.contentType = contentType
        self.body = body
    }

    public static func text(_ text: String, status: Int = 200) -> WorkerReply {
        WorkerReply(status: status, contentType: "text/plain; charset=utf-8", body: ByteBuffer(string: text))
    }

    public static func json(_ json: String, status: Int = 200) -> WorkerReply {
        WorkerReply(status: status, contentType: "application/json", body: ByteBuffer(string: json))
    }

    /// An RFC 9457 problem reply.
    public static func problem(status: Int, title: String, detail: String) -> WorkerReply {
        let q = JSONString.quote
        return WorkerReply(
            status: status,
            contentType: "application/problem+json",
            body: ByteBuffer(string: #"{"type":"about:blank","title":\#(q(title)),"status":\#(status),"detail":\#(q(detail))}"#)
        )
    }
}
