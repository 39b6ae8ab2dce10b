import GangwayAMQP
import GangwayAMQPCore
import GangwayCore
import NIOCore

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
        try publisher.publish(message, onSettled: onSettled)
    }

    func publish(_ batch: [(message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)]) throws {
        try publisher.publish(batch: batch)
    }

    func consumerCount(queue: String) async throws -> UInt32? {
        try await publisher.inspectQueue(queue)?.consumerCount
    }
}

extension AMQPMessageBus: ClaimRegistry {
    /// A claim is a queue that holds at most one message and refuses more
    /// (`x-overflow: reject-publish`): the first confirmed publish wins, any later one is nacked.
    /// The queue expires an hour after its last use, as job history does (gangway.events.log).
    static func claimQueue(_ key: String) -> QueueSpec {
        QueueSpec(
            name: "gangway.claim." + Digest.sha256Hex(key).prefix(40),
            durable: true,
            arguments: ["x-max-length": .int(1), "x-overflow": "reject-publish", "x-expires": .int(3_600_000)]
        )
    }

    func claim(_ key: String, for value: String) async throws -> Bool {
        let queue = Self.claimQueue(key)
        try await publisher.declare(Topology(queues: [queue]))
        let message = OutboundMessage(
            exchange: "",
            routingKey: queue.name,
            mandatory: true,
            properties: AMQPProperties(contentType: "text/plain", deliveryMode: 2, appID: WireContract.appID),
            body: ByteBuffer(string: value)
        )
        switch try await publish(message, confirmWithin: defaultConfirmTimeout) {
        case .confirmed: return true
        case .nacked: return false
        case .returned(let code, let text): throw ClaimQueueMissing(queue: queue.name, reason: "\(code) \(text)")
        }
    }

    func releaseClaim(_ key: String) async throws {
        try await publisher.purgeQueue(Self.claimQueue(key).name)
    }
}

struct ClaimQueueMissing: PublishFailure, CustomStringConvertible {
    let queue: String
    let reason: String
    var description: String { "the claim queue \(queue) vanished (\(reason))" }
    /// Returned: no queue took the claim.
    var brokerMayHaveMessage: Bool { false }
}
