import GangwayAMQPCore

/// What the gateway core needs from the broker. The executable wires it to `GangwayAMQP`;
/// tests can wire it to anything.
public protocol MessageBus: Sendable {
    /// The queue replies come back on (`reply_to`).
    var replyQueue: String { get }
    /// Publishing and reply consumption are both up.
    var isReady: Bool { get }
    /// Publishes and waits for the broker's confirm.
    func publish(_ message: OutboundMessage) async throws -> PublishOutcome
    /// Publishes and reports the confirm through a callback (any thread, must not block).
    /// Throws at once when the message cannot even be sent; the callback is then not called.
    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws
    /// Publishes several messages, in order, in one hand-off to the publisher; each reports
    /// as with ``publish(_:onSettled:)``. Throws at once when they cannot be sent; then no
    /// callback is called.
    func publish(_ batch: [(message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)]) throws
    /// Consumers on a queue, or `nil` when the queue does not exist.
    func consumerCount(queue: String) async throws -> UInt32?
}

/// How long the edge waits for the broker to confirm a message a client is waiting on (a
/// topic event, a cancel request) when no route timeout applies.
public let defaultConfirmTimeout: Duration = .seconds(5)

extension MessageBus {
    /// Publishes and waits for the broker's confirm for at most `timeout`: past it, throws
    /// ``ConfirmTimeout`` (the broker may be blocking publishers, and may have the message).
    public func publish(_ message: OutboundMessage, confirmWithin timeout: Duration) async throws -> PublishOutcome {
        try await confirmWithin(timeout) { settled in try publish(message, onSettled: settled) }
    }

    /// One by one: for buses with no cheaper way. Unlike a real batch, a failure part way
    /// leaves the earlier messages sent (their callbacks still report).
    public func publish(_ batch: [(message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)]) throws {
        for (message, onSettled) in batch {
            try publish(message, onSettled: onSettled)
        }
    }
}

/// Claims that hold across every edge, decided by the broker: the first claim of a key wins,
/// later ones learn that it is taken. Idempotency keys use it, so that the same key sent to
/// two edges at once still makes one job.
public protocol ClaimRegistry: Sendable {
    /// Claims `key` for `value`.
    /// - Returns: true when this call claimed it, false when it was claimed before.
    func claim(_ key: String, for value: String) async throws -> Bool
    /// Gives a claim back: what it was for did not happen.
    func releaseClaim(_ key: String) async throws
}
