import GangwayAMQP
import GangwayAMQPCore
import Logging
import NIOCore
import Synchronization

/// What a job handler reports with: each call publishes one event on `gangway.events`
/// (`job.<id>.<kind>`, persistent, confirmed) with the next `x-seq`.
public final class JobContext: Sendable {
    public let jobID: String
    private let connection: AMQPConnection
    private let appID: String
    /// Carried over from the job message onto every event (``WireContract/echoedJobHeaders(_:)``).
    private let echoed: AMQPTable
    private let seq = Mutex(0)
    private let logger: Logger

    init(jobID: String, connection: AMQPConnection, appID: String, echoed: AMQPTable = [:], logger: Logger) {
        self.jobID = jobID
        self.connection = connection
        self.appID = appID
        self.echoed = echoed
        self.logger = logger
    }

    /// Reports progress: `{"percent": …, "message": …}`.
    public func progress(_ percent: Double, _ message: String = "") async throws {
        try await emit("progress", #"{"percent":\#(percent),"message":\#(Self.quote(message))}"#)
    }

    /// Reports a log line: `{"line": …}`.
    public func log(_ line: String) async throws {
        try await emit("log", #"{"line":\#(Self.quote(line))}"#)
    }

    /// Publishes the event with the next `x-seq` and returns once the broker confirmed it.
    ///
    /// A nack (the broker could not store it: a stream or quorum queue without a leader for a
    /// moment, as when its application restarts, or a queue that rejects publishes when full)
    /// is answered by publishing the same event again, with the same `x-seq`, backing off from
    /// 50 ms to 5 s (``nackBackoff``), until it is confirmed, or until the task is cancelled
    /// (the worker stops or loses its connection, and the unacked job comes back). Going on to
    /// the next event would leave a gap no edge could fill: an edge takes a job's events in
    /// `x-seq` order and ignores one older than the last it has. A copy the broker stored anyway
    /// before its nack (in another queue the event was routed to) is such an older one: ignored.
    func emit(_ kind: String, _ json: String) async throws {
        let n = seq.withLock { s -> Int in
            s += 1
            return s
        }
        let event = WireContract.jobEvent(jobID: jobID, kind: kind, seq: n, json: json, appID: appID, extraHeaders: echoed)
        var attempt = 0
        while case .nacked = try await connection.publish(event) {
            let delay = Self.nackBackoff.delay(attempt: attempt, random: Double.random(in: 0...1))
            attempt += 1
            logger.warning(
                "worker.job.event.nacked",
                metadata: [
                    "job.id": "\(jobID)", "job.event.seq": "\(n)", "job.event.kind": "\(kind)",
                    "amqp.attempts": "\(attempt)", "amqp.retry_ms": "\(delay)",
                ]
            )
            try await Task.sleep(for: .milliseconds(delay))
        }
    }

    /// Steps of 50 ms doubling to 5 s, each between half and all of its step, as reconnects.
    private static let nackBackoff = ConnectionStateMachine.Backoff(initialMilliseconds: 50, maximumMilliseconds: 5_000)

    static func quote(_ s: String) -> String {
        JSONString.quote(s)
    }
}
