import GangwayAMQP
import GangwayAMQPCore
import GangwayCore

/// The edge's ``MessageBus`` on two AMQP connections: one publishes (confirm mode), one
/// consumes the edge's exclusive reply queue, so that neither waits on the other.
final class AMQPMessageBus: MessageBus {
    let publisher: AMQPConnection
    let consumer: AMQPConnection
    let replyQueue: String

    init(publisher: AMQPConnection, consumer: AMQPConnection, replyQueue: String) {
        self.publisher = publisher
        self.consumer = consumer
        self.replyQueue = replyQueue
    }

    var isReady: Bool { publisher.isConnected && consumer.isConnected }

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome {
        try await publisher.publish(message)
    }

    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {
        try publisher.publish(message) { result in onSettled(result.mapError { $0 }) }
    }

    func consumerCount(queue: String) async throws -> UInt32? {
        try await publisher.inspectQueue(queue)?.consumerCount
    }
}
