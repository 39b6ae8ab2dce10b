import GangwayConfig
import NIOCore

/// An HTTP request after routing, as the core sees it: no HTTP server types.
public struct GatewayRequest: Sendable {
    public var route: Route
    public var parameters: [String: String]
    public var method: String
    public var path: String
    /// The raw query string, without `?`.
    public var query: String
    /// Request headers, names lower-cased, in arrival order.
    public var headers: [(name: String, value: String)]
    public var body: ByteBuffer
    public var requestID: String
    public var traceparent: String

    public init(
        route: Route,
        parameters: [String: String],
        method: String,
        path: String,
        query: String,
        headers: [(name: String, value: String)],
        body: ByteBuffer,
        requestID: String,
        traceparent: String
    ) {
        self.route = route
        self.parameters = parameters
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.requestID = requestID
        self.traceparent = traceparent
    }

    public func header(_ name: String) -> String? {
        headers.first(where: { $0.name == name })?.value
    }
}

/// A worker's reply, decoded and checked against the wire contract.
public struct GatewayReply: Sendable {
    public var status: Int
    /// Response headers from `x-header-<name>`, hop-by-hop headers removed.
    public var headers: [(name: String, value: String)]
    public var contentType: String?
    public var contentEncoding: String?
    public var body: ByteBuffer

    public init(status: Int, headers: [(name: String, value: String)], contentType: String?, contentEncoding: String?, body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.body = body
    }

    /// Whether a response with `status` may carry content: not 204 (No Content), 205 (Reset
    /// Content) or 304 (Not Modified), RFC 9110 §15.3.5, §15.3.6, §15.4.5.
    public static func carriesContent(status: Int) -> Bool {
        status != 204 && status != 205 && status != 304
    }
}
