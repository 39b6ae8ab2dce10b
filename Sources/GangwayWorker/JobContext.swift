import DequeModule
import GangwayAMQP
import GangwayAMQPCore
import Logging
import NIOCore
import Synchronization

/// What a job handler reports with: each call publishes one event on `gangway.events`
/// (`job.<id>.<kind>`, persistent, mandatory, confirmed) with the next `x-seq`.
///
/// A job's events reach the edges gapless and in `x-seq` order, whatever the handler does: an
/// edge takes a job's events in that order and ignores one older than the last it has, so an
/// event stored after a later one, or never stored while a later one is, would be a gap no edge
/// could fill. So events go out one at a time (a call made while another is publishing waits
/// its turn, in order), and an event whose publish failed (the connection lost before its
/// confirm, or the wait for it cancelled) is published again, with its `x-seq`, before any later
/// one: a handler that goes on after a failed report (`try?`) does not leave a hole. A copy
/// the broker stored anyway is a repeated `x-seq`, which the edges ignore.
public final class JobContext: Sendable {
    /// Publishes one message and returns once the broker settled it.
    typealias Publish = @Sendable (OutboundMessage) async throws -> PublishOutcome

    private struct Pending {
        var message: OutboundMessage
        var seq: Int
        var kind: String
    }

    private struct State {
        var seq = 0
        /// The event whose publish failed last: sent again before the next one.
        var unconfirmed: Pending?
        /// An event is being published; the calls in `waiting` come after it, in order.
        var publishing = false
        var waiting: Deque<CheckedContinuation<Void, Never>> = []
    }

    public let jobID: String
    private let publish: Publish
    private let appID: String
    /// Carried over from the job message onto every event (``WireContract/echoedJobHeaders(_:)``).
    private let echoed: AMQPTable
    private let state = Mutex(State())
    private let logger: Logger

    convenience init(jobID: String, connection: AMQPConnection, appID: String, echoed: AMQPTable = [:], logger: Logger) {
        self.init(jobID: jobID, appID: appID, echoed: echoed, logger: logger) { try await connection.publish($0) }
    }

    init(jobID: String, appID: String, echoed: AMQPTable = [:], logger: Logger, publish: @escaping Publish) {
        self.jobID = jobID
        self.publish = publish
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

    /// Publishes the event with the next `x-seq` and returns once the broker confirmed it,
    /// after the event that failed before it, if any, is confirmed in turn.
    /// - Throws: the publish's error (the event is then sent again before the next one), or
    ///   `CancellationError` while a nacked event waits to be sent again.
    func emit(_ kind: String, _ json: String) async throws {
        await takeTurn()
        defer { endTurn() }
        if let earlier = state.withLock({ $0.unconfirmed }) {
            logger.info("worker.job.event.resent", metadata: ["job.id": "\(jobID)", "job.event.seq": "\(earlier.seq)", "job.event.kind": "\(earlier.kind)"])
            try await publishUntilConfirmed(earlier)
            state.withLock { $0.unconfirmed = nil }
        }
        let event = state.withLock { s -> Pending in
            s.seq += 1
            let message = WireContract.jobEvent(jobID: jobID, kind: kind, seq: s.seq, json: json, appID: appID, extraHeaders: echoed)
            s.unconfirmed = Pending(message: message, seq: s.seq, kind: kind)
            return s.unconfirmed!
        }
        try await publishUntilConfirmed(event)
        state.withLock { $0.unconfirmed = nil }
    }

    /// Publishes `event` until the broker confirms it.
    ///
    /// A nack (the broker could not store it: a stream or quorum queue without a leader for a
    /// moment, as when its application restarts, or a queue that rejects publishes when full)
    /// or a return (it reached no queue: the event log not routable yet right after the
    /// broker's application restarted, or not declared yet because no edge ever ran) is
    /// answered by publishing the same event again, backing off from 50 ms to 5 s
    /// (``nackBackoff``), until it is confirmed, or until the task is cancelled (the worker stops
    /// or loses its connection, and the unacked job comes back).
    private func publishUntilConfirmed(_ event: Pending) async throws {
        var attempt = 0
        while true {
            let refusal: Logger.Message
            switch try await publish(event.message) {
            case .confirmed: return
            case .nacked: refusal = "worker.job.event.nacked"
            case .returned: refusal = "worker.job.event.unroutable"
            }
            let delay = Self.nackBackoff.delay(attempt: attempt, random: Double.random(in: 0...1))
            attempt += 1
            logger.warning(
                refusal,
                metadata: [
                    "job.id": "\(jobID)", "job.event.seq": "\(event.seq)", "job.event.kind": "\(event.kind)",
                    "amqp.attempts": "\(attempt)", "amqp.retry_ms": "\(delay)",
                ]
            )
            try await Task.sleep(for: .milliseconds(delay))
        }
    }

    /// Waits until no other event of this job is being published (callers go in call order).
    private func takeTurn() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                guard s.publishing else {
                    s.publishing = true
                    return true
                }
                s.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Hands the turn to the next caller waiting, if any.
    private func endTurn() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let next = s.waiting.popFirst() else {
                s.publishing = false
                return nil
            }
            return next
        }
        next?.resume()
    }

    /// Steps of 50 ms doubling to 5 s, each between half and all of its step, as reconnects.
    private static let nackBackoff = ConnectionStateMachine.Backoff(initialMilliseconds: 50, maximumMilliseconds: 5_000)

    static func quote(_ s: String) -> String {
        JSONString.quote(s)
    }
}
