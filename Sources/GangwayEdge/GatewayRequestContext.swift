import Hummingbird
import NIOCore

/// Per-request state that the edge's middleware fills in, in order.
public struct GatewayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The client's `X-Request-ID` when it sent a usable one, otherwise a new one; echoed on
    /// every response and passed to workers as `x-request-id`.
    public var requestID: String = ""
    /// W3C `traceparent` for the hop to the worker.
    public var traceparent: String = ""

    /// The client's connection: event streams close it to cut off a client that does not read.
    public let channel: (any Channel)?
    /// Set when the connection writes an event stream itself, without a task
    /// (``EdgeHTTPChannel``): the stream's response leaves it here.
    var eventStreamSlot: EventStreamSlot?

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}
