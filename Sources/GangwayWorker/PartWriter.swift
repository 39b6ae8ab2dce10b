import GangwayAMQP
import GangwayAMQPCore
import NIOCore
import Synchronization

/// Writes the parts of a streamed reply: `x-part` 0, 1, 2… on the request's `reply_to`, the
/// last with `x-final: true`. Part 0 carries the status and headers of the HTTP response.
///
/// Parts are published in order on one channel, so they arrive in order; the edge would put
/// them back in order anyway.
public final class PartWriter: Sendable {
    struct State {
        var next = 0
        var finished = false
        var status = 200
        var headers: [String: String] = [:]
    }

    private let connection: AMQPConnection
    private let replyTo: String
    private let correlationID: String?
    private let appID: String
    private let state = Mutex(State())

    init(connection: AMQPConnection, replyTo: String, correlationID: String?, appID: String) {
        self.connection = connection
        self.replyTo = replyTo
        self.correlationID = correlationID
        self.appID = appID
    }

    /// Parts written so far.
    public var count: Int { state.withLock { $0.next } }
    public var isFinished: Bool { state.withLock { $0.finished } }

    /// Sets the HTTP status and headers; only before the first part.
    public func head(status: Int, headers: [String: String] = [:]) {
        state.withLock { s in
            guard s.next == 0 else { return }
            s.status = status
            s.headers = headers
        }
    }

    /// Publishes the next part. With `final`, it is the last one.
    /// - Throws: when the stream is finished already or the broker connection is down.
    public func write(_ body: ByteBuffer, contentType: String? = nil, final: Bool = false) async throws {
        try await publish(body, contentType: contentType, final: final, error: nil)
    }

    /// Ends the stream with an error the client sees (an SSE `error` event, an NDJSON error
    /// line, or an aborted body).
    public func fail(_ message: String) async throws {
        try await publish(ByteBuffer(), contentType: nil, final: true, error: message)
    }

    func finishIfNeeded() async throws {
        if !isFinished { try await write(ByteBuffer(), final: true) }
    }

    private func publish(_ body: ByteBuffer, contentType: String?, final: Bool, error: String?) async throws {
        let (index, status, headers): (Int, Int, [String: String]) = try state.withLock { s in
            guard !s.finished else { throw WorkerError.streamFinished }
            defer {
                s.next += 1
                s.finished = final
            }
            return (s.next, s.status, s.headers)
        }
        var table: AMQPTable = [WireContract.Header.part: .int(Int64(index)), WireContract.Header.final: .bool(final)]
        if index == 0 {
            table[WireContract.Header.status] = .int(Int64(status))
            for (name, value) in headers { table[WireContract.Header.headerPrefix + name.lowercased()] = .string(value) }
        }
        if let error { table[WireContract.Header.error] = .string(error) }
        let message = OutboundMessage(
            exchange: "",
            routingKey: replyTo,
            properties: AMQPProperties(contentType: contentType, headers: table, deliveryMode: 1, correlationID: correlationID, appID: appID),
            body: body
        )
        if final {
            // The request is acked after this; make sure the broker has the end of the stream.
            _ = try await connection.publish(message)
        } else {
            try connection.publishWithoutConfirm(message)
        }
    }
}

public struct WorkerError: Error, CustomStringConvertible {
    public var description: String
    static let streamFinished = WorkerError(description: "the stream is finished; no more parts can be written")
}
