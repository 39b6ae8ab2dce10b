import GangwayAMQPCore

/// An error from the AMQP client, with a message that is safe to show a user.
public struct AMQPError: Error, Sendable, CustomStringConvertible, Equatable {
    enum Code: Sendable, Equatable {
        case notConnected
        case connectionLost
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
        case .notConnected, .connectionLost, .connectFailed, .blocked, .timeout: return true
        case .serverClosed, .shutdown: return false
        }
    }

    public static func notConnected(_ name: String) -> AMQPError {
        AMQPError(code: .notConnected, message: "not connected to the broker (\(name))")
    }

    public static func connectionLost(_ reason: String) -> AMQPError {
        AMQPError(code: .connectionLost, message: "connection to the broker lost: \(reason)")
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

    /// The AMQP reply code when the broker closed a channel, e.g. 404 for a missing queue.
    public var serverReplyCode: UInt16? {
        if case .serverClosed(let c) = code { return c }
        return nil
    }
}
