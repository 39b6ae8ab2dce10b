import GangwayAMQPCore
import NIOCore
import Synchronization

/// Matches replies from the edge's reply queue to the requests waiting for them.
///
/// ``deliver(_:)`` runs on the AMQP consumer thread and only resumes a continuation under a
/// short lock. While a request or stream waits, deadlines are swept every few milliseconds by
/// ``run()``, so a request that gets no reply fails within its timeout plus one sweep interval;
/// while none waits, the sweeper sleeps until one does, so an idle edge has no timer to serve.
public final class Correlator: Sendable {
    public enum Failure: Error, Sendable, Equatable {
        case timeout
        case cancelled
        case unavailable(String)
        /// The broker returned the request: nothing is bound to take it.
        case unroutable(String)
        /// A stream's parts stopped coming for longer than its idle timeout.
        case idle
        /// A stream's consumer fell behind by more than its buffer.
        case overflow
        /// The edge is shutting down and its time to drain ran out (``shutDown()``).
        case shuttingDown
    }

    /// A request answered by many reply messages (a streamed reply or a gather).
    public final class StreamSlot: Sendable {
        let continuation: AsyncThrowingStream<Delivery, any Error>.Continuation
        let idleNanoseconds: UInt64
        let deadline: UInt64
        let lastPart: Atomic<UInt64>
        /// Bytes delivered but not yet taken by the reader: the bound of a stream's buffer.
        let bufferedBytes = Atomic(0)
        let limitBytes: Int

        /// The reader took a part off the buffer.
        public func taken(_ delivery: Delivery) {
            bufferedBytes.subtract(Self.cost(delivery), ordering: .relaxed)
        }

        /// What a buffered part costs: its body plus a fixed share for the message around it.
        static func cost(_ delivery: Delivery) -> Int {
            delivery.body.readableBytes + 256
        }
        /// The final part has arrived: the rest is the client reading what is buffered, which
        /// is no idle gap of the worker's.
        let finalSeen = Atomic(false)

        init(continuation: AsyncThrowingStream<Delivery, any Error>.Continuation, idleNanoseconds: UInt64, deadline: UInt64, now: UInt64, limitBytes: Int) {
            self.continuation = continuation
            self.limitBytes = limitBytes
            self.idleNanoseconds = idleNanoseconds
            self.deadline = deadline
            self.lastPart = Atomic(now)
        }
    }

    /// Who waits for a slot's reply: one task, one share of a wait for several replies, or a
    /// callback.
    enum Waiter: Sendable {
        case task(UnsafeContinuation<Delivery, any Error>)
        case group(GroupWait, index: Int)
        case callback(@Sendable (Result<Delivery, Failure>) -> Void)

        func resume(returning delivery: Delivery) {
            switch self {
            case .task(let continuation): continuation.resume(returning: delivery)
            case .group(let group, let index): group.settle(index, .success(delivery))
            case .callback(let callback): callback(.success(delivery))
            }
        }

        func resume(throwing failure: Failure) {
            switch self {
            case .task(let continuation): continuation.resume(throwing: failure)
            case .group(let group, let index): group.settle(index, .failure(failure))
            case .callback(let callback): callback(.failure(failure))
            }
        }
    }

    /// A wait for several replies that resumes its task once, when the last one is in.
    final class GroupWait: Sendable {
        struct State {
            var results: [Result<Delivery, Failure>?]
            var remaining: Int
            var continuation: UnsafeContinuation<[Result<Delivery, Failure>], Never>?
        }

        private let state: Mutex<State>

        init(count: Int, continuation: UnsafeContinuation<[Result<Delivery, Failure>], Never>) {
            state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count, continuation: continuation))
        }

        /// Records one reply or failure (the first for each index counts).
        func settle(_ index: Int, _ result: Result<Delivery, Failure>) {
            let done = state.withLock { s -> (UnsafeContinuation<[Result<Delivery, Failure>], Never>, [Result<Delivery, Failure>])? in
                guard s.results[index] == nil else { return nil }
                s.results[index] = result
                s.remaining -= 1
                guard s.remaining == 0, let continuation = s.continuation else { return nil }
                s.continuation = nil
                return (continuation, s.results.map { $0! })
            }
            if let (continuation, results) = done { continuation.resume(returning: results) }
        }
    }

    struct State {
        var map = CorrelationMap<Delivery, Failure, Waiter>()
        var deadlines = DeadlineQueue()
        var streams: [String: StreamSlot] = [:]
        /// Why no reply can arrive now (the reply consumer is not up), or nil when replies can.
        var notReceiving: String?
        /// ``shutDown()`` was called: no slot opens again.
        var shutDown = false
        /// The sweeper, asleep until a slot opens (see ``untilSomethingWaits()``).
        var parkedSweeper: CheckedContinuation<Void, Never>?

        /// No request or stream waits: nothing to sweep.
        var isIdle: Bool { map.count == 0 && streams.isEmpty }
    }

    private let state: Mutex<State>
    /// How often deadlines are checked: the precision of a 504.
    public let sweepInterval: Duration

    /// - Parameter notReceiving: nil when replies can arrive from the start; otherwise why they
    ///   cannot until ``repliesResumed()``.
    public init(sweepInterval: Duration = .milliseconds(5), notReceiving: String? = nil) {
        self.sweepInterval = sweepInterval
        self.state = Mutex(State(notReceiving: notReceiving))
    }

    /// Replies stopped (the reply consumer's connection was lost, and its exclusive reply queue
    /// with it): every waiting request and stream fails with ``Failure/unavailable(_:)``, and so
    /// does every slot opened until ``repliesResumed()``, before its request is published.
    /// Under the same lock, so no request slips between the two and waits for its deadline.
    public func repliesStopped(_ reason: String) {
        failAll(with: .unavailable(reason)) { $0.notReceiving = reason }
    }

    /// The edge's time to drain ran out: every waiting request and stream fails with
    /// ``Failure/shuttingDown``, and so does every slot opened from now on, before its request
    /// is published. The clients get their answer (a 503, a stream's error) instead of a
    /// connection closed under them.
    public func shutDown() {
        failAll(with: .shuttingDown) { $0.shutDown = true }
    }

    /// Fails every waiting request and stream with `failure`, after `close` (under the same
    /// lock) has made sure that no slot opens meanwhile.
    private func failAll(with failure: Failure, closing close: (inout State) -> Void) {
        let (waiters, streams) = state.withLock { s in
            close(&s)
            defer { s.streams.removeAll() }
            return (s.map.removeAll(), Array(s.streams.values))
        }
        for w in waiters { w.resume(throwing: failure) }
        for slot in streams { slot.continuation.finish(throwing: failure) }
    }

    /// The reply consumer is up again: slots open as usual.
    public func repliesResumed() {
        state.withLock { $0.notReceiving = nil }
    }

    /// Requests waiting for a reply, and open streams.
    public var pending: Int { state.withLock { $0.map.count + $0.streams.count } }
    /// Replies dropped because no request waited for them (late, duplicate, foreign).
    public var unknownReplies: Int { state.withLock { $0.map.unknownReplies } }

    /// Opens a slot before the request is published, so that an early reply is kept.
    /// - Parameter callback: when given, the slot's reply or failure (as ``wait(id:)`` throws
    ///   it) goes to it, exactly once, instead of to a later wait: on the consumer's thread, the
    ///   publisher's or the deadline sweeper's, so it must be short and must not block. For
    ///   callers that are not tasks, such as a channel handler, which then hops to its event
    ///   loop. A publish that fails is then reported with ``fail(id:with:)``.
    /// - Returns: false if the id is already in use.
    /// - Throws: ``Failure/unavailable(_:)`` while no reply can arrive (``repliesStopped(_:)``):
    ///   then the request must not be published.
    public func register(
        id: String,
        timeoutMilliseconds: Int,
        whenReplied callback: (@Sendable (Result<Delivery, Failure>) -> Void)? = nil
    ) throws(Failure) -> Bool {
        let now = NIODeadline.now().uptimeNanoseconds
        let (registered, sweeper) = try state.withLock { s throws(Failure) -> (Bool, CheckedContinuation<Void, Never>?) in
            if s.shutDown { throw .shuttingDown }
            if let reason = s.notReceiving { throw .unavailable(reason) }
            guard s.map.register(id, waiting: callback.map { .callback($0) }) else { return (false, nil) }
            s.deadlines.add(id: id, timeoutMilliseconds: timeoutMilliseconds, now: now)
            return (true, s.parkedSweeper.take())
        }
        sweeper?.resume()
        return registered
    }

    /// Hands a reply to its request. Called on the consumer thread; never blocks.
    public func deliver(_ delivery: Delivery) {
        let id = delivery.properties.correlationID ?? ""
        let (action, stream) = state.withLock { s -> (CorrelationMap<Delivery, Failure, Waiter>.ReplyAction?, StreamSlot?) in
            // Most edges stream nothing: then a reply costs one lookup, not two.
            if !s.streams.isEmpty, let stream = s.streams[id] { return (nil, stream) }
            return (s.map.reply(id, delivery), nil)
        }
        if let stream {
            stream.lastPart.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed)
            let headers = delivery.properties.headers
            if headers[WireContract.Header.part] == nil || headers[WireContract.Header.final]?.boolValue == true {
                stream.finalSeen.store(true, ordering: .relaxed)
            }
            let buffered = stream.bufferedBytes.add(StreamSlot.cost(delivery), ordering: .relaxed).newValue
            if buffered > stream.limitBytes {
                closeStream(id: id, with: .overflow)
            } else {
                stream.continuation.yield(delivery)
            }
        } else if case .resume(let waiter, let reply)? = action {
            waiter.resume(returning: reply)
        }
    }

    /// Opens a slot for a reply in many parts, before the request is published.
    /// - Parameters:
    ///   - bufferBytes: bytes of parts held for a reader that has not taken them yet (the reader
    ///     reports what it takes through ``StreamSlot/taken(_:)``); past it the stream fails
    ///     with ``Failure/overflow`` rather than grow.
    /// - Returns: the parts as they arrive, which throw ``Failure/idle`` after a gap of
    ///   `idleMilliseconds` and ``Failure/timeout`` past `timeoutMilliseconds` in all; and the
    ///   slot, to report parts taken.
    /// - Throws: ``Failure/unavailable(_:)`` while no reply can arrive (``repliesStopped(_:)``):
    ///   then the request must not be published.
    public func openStream(
        id: String,
        idleMilliseconds: Int,
        timeoutMilliseconds: Int,
        bufferBytes: Int = 8 << 20
    ) throws(Failure) -> (parts: AsyncThrowingStream<Delivery, any Error>, slot: StreamSlot) {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: Delivery.self, throwing: (any Error).self, bufferingPolicy: .unbounded)
        let now = NIODeadline.now().uptimeNanoseconds
        let slot = StreamSlot(
            continuation: continuation,
            idleNanoseconds: UInt64(idleMilliseconds) * 1_000_000,
            deadline: now + UInt64(timeoutMilliseconds) * 1_000_000,
            now: now,
            limitBytes: bufferBytes
        )
        let sweeper = try state.withLock { s throws(Failure) in
            if s.shutDown { throw .shuttingDown }
            if let reason = s.notReceiving { throw .unavailable(reason) }
            s.streams[id] = slot
            return s.parkedSweeper.take()
        }
        sweeper?.resume()
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { _ = $0.streams.removeValue(forKey: id) }
        }
        return (stream, slot)
    }

    /// Ends a stream, with an error or (nil) normally after its final part.
    public func closeStream(id: String, with failure: Failure? = nil) {
        guard let slot = state.withLock({ $0.streams.removeValue(forKey: id) }) else { return }
        if let failure {
            slot.continuation.finish(throwing: failure)
        } else {
            slot.continuation.finish()
        }
    }

    /// Waits for the reply of a registered request.
    /// - Throws: ``Failure/timeout`` at the deadline, ``Failure/cancelled`` when the task is
    ///   cancelled (the client went away), ``Failure/unavailable(_:)`` when replies stopped.
    public func wait(id: String) async throws -> Delivery {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Delivery, any Error>) in
                waitFor(id, .task(continuation))
            }
        } onCancel: {
            cancel(id: id, with: .cancelled)
        }
    }

    /// Waits for the replies of several registered requests at once, resuming only when the
    /// last is in: one suspension where waiting in turn would take one per request.
    /// - Returns: each request's reply or failure, in the order of `ids`.
    public func waitAll(ids: [String]) async -> [Result<Delivery, Failure>] {
        guard !ids.isEmpty else { return [] }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<[Result<Delivery, Failure>], Never>) in
                let group = GroupWait(count: ids.count, continuation: continuation)
                for (index, id) in ids.enumerated() {
                    waitFor(id, .group(group, index: index))
                }
            }
        } onCancel: {
            for id in ids { cancel(id: id, with: .cancelled) }
        }
    }

    /// Parks `waiter` on a slot, or resumes it at once with what the slot already holds.
    private func waitFor(_ id: String, _ waiter: Waiter) {
        switch state.withLock({ $0.map.wait(id, waiter) }) {
        case .replyAvailable(let reply): waiter.resume(returning: reply)
        case .failed(let failure): waiter.resume(throwing: failure)
        case .suspended: break
        case .gone: waiter.resume(throwing: .timeout)
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

    /// Fails the requests whose deadline has passed, and streams gone idle or past theirs.
    public func expire(now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        let (waiters, streams): ([Waiter], [(String, Failure)]) = state.withLock { s in
            let waiters = s.deadlines.expired(now: now).compactMap { s.map.remove($0) }
            var ended: [(String, Failure)] = []
            for (id, slot) in s.streams {
                if now >= slot.deadline {
                    ended.append((id, .timeout))
                } else if !slot.finalSeen.load(ordering: .relaxed), Self.isIdle(lastPart: slot.lastPart.load(ordering: .relaxed), now: now, idle: slot.idleNanoseconds) {
                    ended.append((id, .idle))
                }
            }
            return (waiters, ended)
        }
        for w in waiters { w.resume(throwing: Failure.timeout) }
        for (id, failure) in streams { closeStream(id: id, with: failure) }
    }

    /// Returns once a request or stream waits (at once when one does), or the task is
    /// cancelled. Before it sleeps it drops the deadlines queued: with no slot open, every one
    /// of them belongs to a request answered already.
    private func untilSomethingWaits() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let parked = state.withLock { s -> Bool in
                    // Cancelled before the handler below could find the continuation: go on.
                    guard s.isIdle, !Task.isCancelled else { return false }
                    s.deadlines = DeadlineQueue()
                    s.parkedSweeper = continuation
                    return true
                }
                if !parked { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.parkedSweeper.take() }?.resume()
        }
    }

    /// The sweeper is asleep until a request or stream waits.
    package var isSweeperParked: Bool { state.withLock { $0.parkedSweeper != nil } }

    /// A part may arrive on the consumer thread after `now` was read: then it is not idle.
    /// (Wrapping subtraction here once turned that race into an instant idle timeout.)
    public static func isIdle(lastPart: UInt64, now: UInt64, idle: UInt64) -> Bool {
        lastPart < now && now - lastPart >= idle
    }

    /// Sweeps deadlines until the task is cancelled: every ``sweepInterval`` while a request or
    /// stream waits, not at all while none does.
    ///
    /// - Parameter eventLoop: the loop whose timer paces the sweeps, if any (the edge passes one
    ///   of its HTTP loops). While requests wait, each sweep then runs on that loop, which is
    ///   awake anyway, and the task itself sleeps until the correlator is idle again; without
    ///   one, the task sleeps between sweeps, and every sweep wakes a thread of Swift's global
    ///   pool through its timer (200 times a second at the default interval). The loop must
    ///   outlive the task: one shut down under it takes no more sweeps (the task still ends
    ///   when cancelled).
    public func run(sweepingOn eventLoop: (any EventLoop)? = nil) async {
        while !Task.isCancelled {
            await untilSomethingWaits()
            if let eventLoop {
                await sweepUntilIdle(on: eventLoop)
            } else {
                try? await Task.sleep(for: sweepInterval)
                expire()
            }
        }
        // No sweeper from here on: a request opened later would never time out.
        repliesStopped("the edge is shutting down")
    }

    /// Sweeps on `eventLoop` every ``sweepInterval``, each sweep scheduling the next, until
    /// nothing waits or the task is cancelled.
    private func sweepUntilIdle(on eventLoop: any EventLoop) async {
        let sweeps = SweepChain()
        let interval = TimeAmount(sweepInterval)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                guard sweeps.start(done) else { return }
                @Sendable func next() {
                    eventLoop.scheduleTask(in: interval) {
                        guard !sweeps.isFinished else { return }
                        self.expire()
                        if self.isIdle { sweeps.finish() } else { next() }
                    }
                }
                next()
            }
        } onCancel: {
            sweeps.finish()
        }
    }

    /// The sweeps on a loop: resumes the waiting task exactly once, when the correlator goes
    /// idle or the task is cancelled, whichever comes first; the sweep after that stops.
    private final class SweepChain: Sendable {
        private enum State {
            case notStarted
            case running(CheckedContinuation<Void, Never>)
            case finished
        }
        private let state = Mutex(State.notStarted)

        /// - Returns: false when the task was cancelled already (`done` is resumed then).
        func start(_ done: CheckedContinuation<Void, Never>) -> Bool {
            let started = state.withLock { s -> Bool in
                guard case .notStarted = s else { return false }
                s = .running(done)
                return true
            }
            if !started { done.resume() }
            return started
        }

        func finish() {
            let done = state.withLock { s -> CheckedContinuation<Void, Never>? in
                defer { s = .finished }
                if case .running(let done) = s { return done }
                return nil
            }
            done?.resume()
        }

        var isFinished: Bool {
            state.withLock { if case .finished = $0 { true } else { false } }
        }
    }

    /// No request or stream waits.
    private var isIdle: Bool { state.withLock { $0.isIdle } }
}
