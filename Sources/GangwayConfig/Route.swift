import GangwayAMQPCore

/// One compiled, validated route: what the edge does with a matching request.
public struct Route: Sendable, Hashable {
    public enum Shape: String, Sendable, Hashable, CaseIterable {
        case requestReply = "request-reply"
    }

    /// Bounded label for logs and metrics, and the `type` / `x-route` of the message.
    public var name: String
    /// Upper-case HTTP method.
    public var method: String
    public var path: PathTemplate
    public var shape: Shape
    public var exchange: String
    public var routingKey: KeyTemplate
    /// The queue whose consumers serve this route, for the fast "no consumer" 503. Taken from
    /// the route file or, when absent, from the topology's bindings.
    public var queue: KeyTemplate?
    public var timeoutMilliseconds: Int
    /// Lower-case names of request headers forwarded as `x-header-<name>`.
    public var forwardHeaders: Set<String>
    public var maxBodyBytes: Int
    /// Where in routes.yaml the route was declared, for messages.
    public var line: Int

    public init(
        name: String,
        method: String,
        path: PathTemplate,
        shape: Shape = .requestReply,
        exchange: String,
        routingKey: KeyTemplate,
        queue: KeyTemplate? = nil,
        timeoutMilliseconds: Int,
        forwardHeaders: Set<String> = [],
        maxBodyBytes: Int,
        line: Int = 0
    ) {
        self.name = name
        self.method = method
        self.path = path
        self.shape = shape
        self.exchange = exchange
        self.routingKey = routingKey
        self.queue = queue
        self.timeoutMilliseconds = timeoutMilliseconds
        self.forwardHeaders = forwardHeaders
        self.maxBodyBytes = maxBodyBytes
        self.line = line
    }
}
