import NIOCore

/// A message to publish.
public struct OutboundMessage: Sendable {
    public var exchange: String
    public var routingKey: String
    /// When set, the broker returns the message (basic.return) if no queue is bound for it.
    public var mandatory: Bool
    public var properties: AMQPProperties
    public var body: ByteBuffer

    public init(
        exchange: String,
        routingKey: String,
        mandatory: Bool = false,
        properties: AMQPProperties = AMQPProperties(),
        body: ByteBuffer = ByteBuffer()
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.mandatory = mandatory
        self.properties = properties
        self.body = body
    }
}

/// A message the broker delivered to one of our consumers.
public struct Delivery: Sendable {
    public var consumerTag: String
    public var deliveryTag: UInt64
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    public var properties: AMQPProperties
    public var body: ByteBuffer
    /// Which connection incarnation received it; an ack for an older incarnation is dropped,
    /// because delivery tags do not survive a reconnect.
    public var generation: UInt64
    /// Set when the body was larger than its consumer takes (``ConsumerOptions/maxBodyBytes``):
    /// it was read off the connection and dropped, and ``body`` is empty.
    public var droppedBody: DroppedBody?

    /// A body over its consumer's limit, dropped unread.
    public struct DroppedBody: Sendable, Equatable {
        /// The size the content header announced.
        public var size: UInt64
        /// The consumer's limit that it passed.
        public var limit: Int

        public init(size: UInt64, limit: Int) {
            self.size = size
            self.limit = limit
        }
    }

    public init(
        consumerTag: String,
        deliveryTag: UInt64,
        redelivered: Bool,
        exchange: String,
        routingKey: String,
        properties: AMQPProperties,
        body: ByteBuffer,
        generation: UInt64,
        droppedBody: DroppedBody? = nil
    ) {
        self.consumerTag = consumerTag
        self.deliveryTag = deliveryTag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
        self.generation = generation
        self.droppedBody = droppedBody
    }
}

/// A message the broker handed back because it could not route a mandatory publish.
public struct ReturnedMessage: Sendable {
    public var replyCode: UInt16
    public var replyText: String
    public var exchange: String
    public var routingKey: String
    public var properties: AMQPProperties

    public init(replyCode: UInt16, replyText: String, exchange: String, routingKey: String, properties: AMQPProperties) {
        self.replyCode = replyCode
        self.replyText = replyText
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
    }
}

/// What became of a confirmed publish.
public enum PublishOutcome: Sendable, Equatable {
    /// The broker took responsibility for the message (basic.ack and no return).
    case confirmed
    /// The broker could not route a mandatory message (basic.return, then basic.ack).
    case returned(replyCode: UInt16, replyText: String)
    /// The broker refused the message (basic.nack), e.g. a queue at its length limit.
    case nacked
}

/// A failed publish that can say whether the broker may have the message after all: the
/// connection went away after it was written and before its confirm came. Code that must not
/// act twice (an idempotency claim given back, a retry) asks before treating the message as
/// never sent.
public protocol PublishFailure: Error {
    var brokerMayHaveMessage: Bool { get }
}

extension Error {
    /// False only when the failure says the message certainly did not reach the broker.
    public var publishMayHaveReachedBroker: Bool {
        (self as? any PublishFailure)?.brokerMayHaveMessage ?? true
    }
}
