import GangwayAMQPCore

/// How one AMQP connection connects, recovers and what it declares on every (re)connect.
public struct AMQPConnectionConfiguration: Sendable {
    public var url: AMQPURL
    /// A name for logs and thread names, e.g. `edge.publish`.
    public var name: String
    public var backoff: ConnectionStateMachine.Backoff
    public var frameMax: Int32
    /// Longest wait for a synchronous broker reply (declare, qos, consume).
    public var rpcTimeoutMilliseconds: Int
    /// Declared on every (re)connect before consumers start.
    public var topology: Topology
    /// Called on the owner thread when the connection comes up (`true`) or goes down
    /// (`false`). Must not block.
    public var onStateChange: (@Sendable (Bool) -> Void)?
    /// Run the owner thread as a batch thread (``BatchScheduling``): for a connection that
    /// hands work to and from other busy threads, such as the edge's.
    public var batchScheduling: Bool
    /// While the broker blocks this connection (a resource alarm, announced by
    /// `connection.blocked`), publishes that wait for a confirm and declarations fail at once
    /// with ``AMQPError/blocked`` instead of waiting for the alarm to clear: for an edge, whose
    /// clients are waiting. A worker leaves it off, and its replies and events go out late.
    public var failFastWhenBlocked: Bool

    public init(
        url: AMQPURL,
        name: String,
        backoff: ConnectionStateMachine.Backoff = .init(),
        frameMax: Int32 = 131_072,
        rpcTimeoutMilliseconds: Int = 5_000,
        topology: Topology = Topology(),
        onStateChange: (@Sendable (Bool) -> Void)? = nil,
        batchScheduling: Bool = false,
        failFastWhenBlocked: Bool = true
    ) {
        self.url = url
        self.name = name
        self.backoff = backoff
        self.frameMax = frameMax
        self.rpcTimeoutMilliseconds = rpcTimeoutMilliseconds
        self.topology = topology
        self.onStateChange = onStateChange
        self.batchScheduling = batchScheduling
        self.failFastWhenBlocked = failFastWhenBlocked
    }
}

/// A consumer that the connection keeps subscribed across reconnects.
public struct ConsumerOptions: Sendable {
    public var queue: String
    /// Declared before consuming on every (re)connect, e.g. the edge's exclusive reply queue.
    public var declare: QueueSpec?
    /// Bound after the declaration on every (re)connect.
    public var bindings: [BindingSpec]
    /// Unacknowledged deliveries the broker may have in flight to this consumer.
    public var prefetch: UInt16
    /// Automatic acknowledgement (`no-ack`): the broker forgets a message once sent.
    public var autoAck: Bool
    public var exclusive: Bool
    /// basic.consume arguments, e.g. `x-stream-offset` for a stream queue.
    public var arguments: AMQPTable
    /// The largest message body this consumer takes. A larger one is read off the connection
    /// and dropped as it arrives, never held; its delivery comes with an empty body and
    /// ``Delivery/droppedBody`` set, for the handler to refuse.
    public var maxBodyBytes: Int

    public init(
        queue: String,
        declare: QueueSpec? = nil,
        bindings: [BindingSpec] = [],
        prefetch: UInt16 = 32,
        autoAck: Bool = false,
        exclusive: Bool = false,
        arguments: AMQPTable = [:],
        maxBodyBytes: Int = .max
    ) {
        self.queue = queue
        self.declare = declare
        self.bindings = bindings
        self.prefetch = prefetch
        self.autoAck = autoAck
        self.exclusive = exclusive
        self.arguments = arguments
        self.maxBodyBytes = maxBodyBytes
    }
}

extension ConsumerOptions {
    /// Whether this consumer reads a stream queue from an offset (`x-stream-offset`), and so may
    /// be sent a backlog as soon as it starts.
    var readsFromOffset: Bool { arguments["x-stream-offset"] != nil }
}

/// What a passive queue declaration tells.
public struct QueueInfo: Sendable, Equatable {
    public var messageCount: UInt32
    public var consumerCount: UInt32
}
