import GangwayAMQPCore

/// An error from the AMQP client, with a message that is safe to show a user.
public struct AMQPError: Error, Sendable, CustomStringConvertible, Equatable, PublishFailure {
    enum Code: Sendable, Equatable {
        case notConnected
        case connectionLost
        /// Lost after a publish was written, before its confirm.
        case unconfirmed
        /// The broker closed the whole connection with this reply code.
        case connectionClosed(UInt16)
        /// RabbitMQ failed a consumer on a stream queue it was still starting.
        case streamNotReady
        case connectFailed
        case serverClosed(UInt16)
        case blocked
        case shutdown
        case timeout
    }

    let code: Code
    public let message: String

    public var description: String { message }

    /// True when retrying on a new connection could succeed: the failure was in transport,
    /// not in what was asked.
    public var isTransient: Bool {
        switch code {
        case .notConnected, .connectionLost, .unconfirmed, .connectionClosed, .streamNotReady, .connectFailed, .blocked, .timeout: return true
        case .serverClosed, .shutdown: return false
        }
    }

    public static func notConnected(_ name: String) -> AMQPError {
        AMQPError(code: .notConnected, message: "not connected to the broker (\(name))")
    }

    public static func connectionLost(_ reason: String) -> AMQPError {
        AMQPError(code: .connectionLost, message: "connection to the broker lost: \(reason)")
    }

    public static func connectionClosed(code: UInt16, text: String, during what: String) -> AMQPError {
        AMQPError(code: .connectionClosed(code), message: "connection to the broker lost: \(what): broker closed the connection: \(code) \(text)")
    }

    /// RabbitMQ 3.x stores a new stream queue before its stream is started, so a connection
    /// that declares the queue a moment after another one did gets `declare-ok` at once, and
    /// its `basic.consume` then fails inside the broker (`stream_not_found`), which closes the
    /// connection with 541 INTERNAL_ERROR.
    public static func streamNotReady(queue: String) -> AMQPError {
        AMQPError(
            code: .streamNotReady,
            message: "the broker refused a consumer on stream queue '\(queue)' with 541 INTERNAL_ERROR, as it does while it is still starting a stream that another connection has just declared"
        )
    }

    /// A publish written (perhaps in part) before the connection went away and never
    /// confirmed: unlike every other failure, the broker may have the message.
    public static func unconfirmed(_ reason: String) -> AMQPError {
        AMQPError(code: .unconfirmed, message: "connection to the broker lost before it confirmed the message, which it may have: \(reason)")
    }

    public static func connectFailed(_ reason: String) -> AMQPError {
        AMQPError(code: .connectFailed, message: "could not connect to the broker: \(reason)")
    }

    public static func serverClosed(code: UInt16, text: String) -> AMQPError {
        AMQPError(code: .serverClosed(code), message: "broker closed the channel: \(code) \(text)")
    }

    public static let blocked = AMQPError(code: .blocked, message: "the broker is blocking publishers (resource alarm)")
    public static let shutdown = AMQPError(code: .shutdown, message: "the connection is shutting down")
    public static let timeout = AMQPError(code: .timeout, message: "timed out waiting for the broker")

    /// The AMQP reply code when the broker closed the whole connection, e.g. 541 INTERNAL_ERROR.
    public var connectionCloseCode: UInt16? {
        if case .connectionClosed(let c) = code { return c }
        return nil
    }

    /// True only for ``unconfirmed(_:)``: every other failure happened before the message
    /// was written, or was not a publish.
    public var brokerMayHaveMessage: Bool { code == .unconfirmed }

    /// True for ``streamNotReady(queue:)``.
    public var isStreamNotReady: Bool { code == .streamNotReady }

    /// The AMQP reply code when the broker closed a channel, e.g. 404 for a missing queue.
    public var serverReplyCode: UInt16? {
        if case .serverClosed(let c) = code { return c }
        return nil
    }
}
