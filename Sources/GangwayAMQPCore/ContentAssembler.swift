import NIOCore

/// Reassembles a content-bearing method (basic.deliver or basic.return), its content header and
/// its body frames into one message, for one channel.
///
/// AMQP sends these as separate frames; rabbitmq-c hands them over one at a time. Anything out of
/// sequence is a protocol error that the caller answers by dropping the connection.
public struct ContentAssembler: Sendable {
    public struct DeliverMethod: Sendable, Equatable {
        public var consumerTag: String
        public var deliveryTag: UInt64
        public var redelivered: Bool
        public var exchange: String
        public var routingKey: String

        public init(consumerTag: String, deliveryTag: UInt64, redelivered: Bool, exchange: String, routingKey: String) {
            self.consumerTag = consumerTag
            self.deliveryTag = deliveryTag
            self.redelivered = redelivered
            self.exchange = exchange
            self.routingKey = routingKey
        }
    }

    public struct ReturnMethod: Sendable, Equatable {
        public var replyCode: UInt16
        public var replyText: String
        public var exchange: String
        public var routingKey: String

        public init(replyCode: UInt16, replyText: String, exchange: String, routingKey: String) {
            self.replyCode = replyCode
            self.replyText = replyText
            self.exchange = exchange
            self.routingKey = routingKey
        }
    }

    public enum Output: Sendable {
        case delivery(Delivery)
        case returned(ReturnedMessage, body: ByteBuffer)
    }

    public struct ProtocolError: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    private enum Method: Sendable {
        /// A delivery, and the largest body its consumer takes.
        case deliver(DeliverMethod, maxBodyBytes: Int)
        case `return`(ReturnMethod)
    }

    private enum State: Sendable {
        case idle
        case awaitingHeader(Method)
        case awaitingBody(Method, AMQPProperties, remaining: Int, body: ByteBuffer)
        /// A body over its consumer's limit: its frames are read and dropped, and the delivery
        /// goes out with an empty body and ``Delivery/droppedBody`` set.
        case skippingBody(Method, AMQPProperties, remaining: UInt64, dropped: Delivery.DroppedBody)
    }

    private var state: State = .idle
    private let generation: UInt64

    public init(generation: UInt64) {
        self.generation = generation
    }

    public var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// - Parameter maxBodyBytes: the largest body the delivery's consumer takes; a larger one
    ///   is read and dropped, not held (``Delivery/droppedBody``).
    public mutating func deliver(_ method: DeliverMethod, maxBodyBytes: Int = .max) throws(ProtocolError) {
        guard case .idle = state else { throw ProtocolError(description: "basic.deliver while a message was incomplete") }
        state = .awaitingHeader(.deliver(method, maxBodyBytes: maxBodyBytes))
    }

    public mutating func returned(_ method: ReturnMethod) throws(ProtocolError) {
        guard case .idle = state else { throw ProtocolError(description: "basic.return while a message was incomplete") }
        state = .awaitingHeader(.return(method))
    }

    public mutating func header(bodySize: UInt64, properties: AMQPProperties) throws(ProtocolError) -> Output? {
        guard case .awaitingHeader(let method) = state else {
            throw ProtocolError(description: "content header without a content method")
        }
        if case .deliver(_, let limit) = method, bodySize > UInt64(max(0, limit)) {
            state = .skippingBody(method, properties, remaining: bodySize, dropped: .init(size: bodySize, limit: limit))
            return nil
        }
        guard bodySize <= UInt64(Int32.max) else { throw ProtocolError(description: "body of \(bodySize) bytes is too large") }
        if bodySize == 0 {
            state = .idle
            return finish(method, properties, ByteBuffer())
        }
        var body = ByteBuffer()
        body.reserveCapacity(Int(bodySize))
        state = .awaitingBody(method, properties, remaining: Int(bodySize), body: body)
        return nil
    }

    public mutating func body(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> Output? {
        if case .skippingBody(let method, let properties, let remaining, let dropped) = state {
            guard UInt64(bytes.count) <= remaining else { throw ProtocolError(description: "body frames exceed the announced size") }
            let left = remaining - UInt64(bytes.count)
            if left == 0 {
                state = .idle
                return finish(method, properties, ByteBuffer(), dropped: dropped)
            }
            state = .skippingBody(method, properties, remaining: left, dropped: dropped)
            return nil
        }
        guard case .awaitingBody(let method, let properties, let remaining, var body) = state else {
            throw ProtocolError(description: "body frame without a content header")
        }
        guard bytes.count <= remaining else { throw ProtocolError(description: "body frames exceed the announced size") }
        state = .idle  // drop our reference so the append does not copy the buffer
        body.writeBytes(bytes)
        let left = remaining - bytes.count
        if left == 0 {
            return finish(method, properties, body)
        }
        state = .awaitingBody(method, properties, remaining: left, body: body)
        return nil
    }

    private func finish(_ method: Method, _ properties: AMQPProperties, _ body: ByteBuffer, dropped: Delivery.DroppedBody? = nil) -> Output {
        switch method {
        case .deliver(let d, _):
            return .delivery(
                Delivery(
                    consumerTag: d.consumerTag,
                    deliveryTag: d.deliveryTag,
                    redelivered: d.redelivered,
                    exchange: d.exchange,
                    routingKey: d.routingKey,
                    properties: properties,
                    body: body,
                    generation: generation,
                    droppedBody: dropped
                )
            )
        case .return(let r):
            return .returned(
                ReturnedMessage(replyCode: r.replyCode, replyText: r.replyText, exchange: r.exchange, routingKey: r.routingKey, properties: properties),
                body: body
            )
        }
    }
}
