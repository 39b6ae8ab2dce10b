import GangwayAMQPCore
import NIOCore
import Synchronization

/// Matches replies from the edge's reply queue to the requests waiting for them.
///
/// ``deliver(_:)`` runs on the AMQP consumer thread and only resumes a continuation under a
/// short lock. Deadlines are swept every few milliseconds by ``run()``, so a request that gets
/// no reply fails within its timeout plus one sweep interval.
public final class Correlator: Sendable {
    public enum Failure: Error, Sendable, Equatable {
        case timeout
        case cancelled
        case unavailable(String)
        /// The broker returned the request: nothing is bound to take it.
        case unroutable(String)
    }

    typealias Waiter = CheckedContinuation<Delivery, any Error>

    struct State {
        var map = CorrelationMap<Delivery, Failure, Waiter>()
        var deadlines = DeadlineQueue()
    }

    private let state = Mutex(State())
    /// How often deadlines are checked: the precision of a 504.
    public let sweepInterval: Duration

    public init(sweepInterval: Duration = .milliseconds(5)) {
        self.sweepInterval = sweepInterval
    }

    /// Requests waiting for a reply.
    public var pending: Int { state.withLock { $0.map.count } }
    /// Replies dropped because no request waited for them (late, duplicate, foreign).
    public var unknownReplies: Int { state.withLock { $0.map.unknownReplies } }

    /// Opens a slot before the request is published, so that an early reply is kept.
    /// - Returns: false if the id is already in use.
    public func register(id: String, timeoutMilliseconds: Int) -> Bool {
        let now = NIODeadline.now().uptimeNanoseconds
        return state.withLock { s in
            guard s.map.register(id) else { return false }
            s.deadlines.add(id: id, timeoutMilliseconds: timeoutMilliseconds, now: now)
            return true
        }
    }

    /// Hands a reply to its request. Called on the consumer thread; never blocks.
    public func deliver(_ delivery: Delivery) {
        guard let id = delivery.properties.correlationID else {
            state.withLock { _ = $0.map.reply("", delivery) }
            return
        }
        let action = state.withLock { $0.map.reply(id, delivery) }
        if case .resume(let waiter, let reply) = action {
            waiter.resume(returning: reply)
        }
    }

    /// Waits for the reply of a registered request.
    /// - Throws: ``Failure/timeout`` at the deadline, ``Failure/cancelled`` when the task is
    ///   cancelled (the client went away), ``Failure/unavailable(_:)`` when replies stopped.
    public func wait(id: String) async throws -> Delivery {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: Waiter) in
                let action = state.withLock { $0.map.wait(id, continuation) }
                switch action {
                case .replyAvailable(let reply): continuation.resume(returning: reply)
                case .failed(let failure): continuation.resume(throwing: failure)
                case .suspended: break
                case .gone: continuation.resume(throwing: Failure.timeout)
                }
            }
        } onCancel: {
            cancel(id: id, with: .cancelled)
        }
    }

    /// Fails a request whether or not its requester waits yet; a reply already in wins.
    /// Safe from any thread, e.g. the publisher's owner thread reporting a return.
    public func fail(id: String, with failure: Failure) {
        if case .resume(let waiter, let f) = state.withLock({ $0.map.fail(id, failure) }) {
            waiter.resume(throwing: f)
        }
    }

    /// Ends a request's slot, failing its waiter if one is suspended.
    public func cancel(id: String, with failure: Failure = .cancelled) {
        let waiter = state.withLock { $0.map.remove(id) }
        waiter?.resume(throwing: failure)
    }

    /// Fails every waiting request, e.g. when the reply consumer's connection is lost.
    public func failAll(_ failure: Failure) {
        let waiters = state.withLock { $0.map.removeAll() }
        for w in waiters { w.resume(throwing: failure) }
    }

    /// Fails the requests whose deadline has passed.
    public func expire(now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        let waiters: [Waiter] = state.withLock { s in
            s.deadlines.expired(now: now).compactMap { s.map.remove($0) }
        }
        for w in waiters { w.resume(throwing: Failure.timeout) }
    }

    /// Sweeps deadlines until the task is cancelled.
    public func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: sweepInterval)
            expire()
        }
        failAll(.unavailable("the edge is shutting down"))
    }
}
