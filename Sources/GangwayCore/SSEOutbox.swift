import NIOCore
import Synchronization

/// The bytes on their way to one event-stream client, bounded in bytes.
///
/// Producers (the broker's consumer thread, the heartbeat ticker) ``push(_:)`` encoded events.
/// Until a sink is attached they queue, and the client's response writer takes everything
/// queued at once with ``next()``. Once the writer has sent what must come first, it attaches
/// a ``Sink`` (the connection itself): each push then goes straight to it, with no task to wake,
/// and its bytes count until the sink reports them written.
///
/// Either way, past ``limit`` bytes waiting (queued, or handed to the sink and not yet written
/// because the client does not read) the outbox ends with ``End/overflow``, drops what it held
/// and calls the overflow handler (the edge closes the connection): a slow client costs at most
/// about `limit` bytes here, plus one event. An event larger than `limit` is taken when
/// nothing else waits: a client that keeps up is not cut off for one large event.
public final class SSEOutbox: Sendable {
    public enum End: Sendable, Equatable {
        /// The stream is complete (a job finished, the edge shuts down).
        case finished
        /// The client did not keep up: more than ``SSEOutbox/limit`` bytes were waiting.
        case overflow
    }

    public enum Next: Sendable {
        case bytes([ByteBuffer])
        case end(End)
    }

    /// Writes bytes to the client and confirms the receipt once they have left the process (or
    /// failed to). Called in push order, possibly on any thread; must not block.
    public typealias Sink = @Sendable (_ bytes: ByteBuffer, _ receipt: Receipt) -> Void

    /// Handed to the sink with each write, for the sink to ``confirm()`` once the bytes have
    /// left the process (or cannot): from then on they no longer count toward the bound. A
    /// value, so that a write costs no allocation for its callback.
    public struct Receipt: Sendable {
        let outbox: SSEOutbox
        let count: Int

        package init(outbox: SSEOutbox, count: Int) {
            self.outbox = outbox
            self.count = count
        }

        public func confirm() {
            outbox.unwritten.subtract(count, ordering: .relaxed)
        }
    }

    struct State {
        var pending: [ByteBuffer] = []
        var bytes = 0
        var end: End?
        var waiter: CheckedContinuation<Next, Never>?
        var onOverflow: (@Sendable () -> Void)?
        var onEnd: (@Sendable (End) -> Void)?
        var sink: Sink?
        var loop: (any EventLoop)?
    }

    /// Bytes that may wait for the client before it is cut off.
    public let limit: Int
    private let state = Mutex(State())
    /// Bytes handed to the sink and not yet written.
    private let unwritten = Atomic<Int>(0)

    public init(limit: Int) {
        self.limit = limit
    }

    /// Bytes queued now, or handed to the sink and not yet written.
    public var queuedBytes: Int { state.withLock { $0.bytes } + unwritten.load(ordering: .relaxed) }

    /// From now on, sends pushed bytes (and what is queued) straight to `sink`.
    /// - Parameter loop: the connection's event loop. The sink is then attached there, and
    ///   ``fanOut(_:to:thenFinish:)`` pushes there, so that every write to the connection
    ///   happens on its loop, in order; from this call on, ``next()`` leaves queued bytes to
    ///   the sink and only reports the end.
    public func attach(on loop: (any EventLoop)? = nil, _ sink: @escaping Sink) {
        guard let loop else {
            attachNow(sink)
            return
        }
        state.withLock { s in
            if s.end == nil { s.loop = loop }
        }
        loop.execute { self.attachNow(sink) }
    }

    private func attachNow(_ sink: @escaping Sink) {
        let queued: [ByteBuffer] = state.withLock { s in
            // Bytes queued before a finish still go out; after an overflow nothing does.
            guard s.end != .overflow else { return [] }
            if s.end == nil { s.sink = sink }
            let queued = s.pending
            s.pending = []
            s.bytes = 0
            return queued
        }
        // Outside the lock: a write can close the connection at once, which finishes this
        // outbox. On the loop, nothing pushed meanwhile can overtake these.
        for buffer in queued { send(buffer, to: sink) }
    }

    private func send(_ buffer: ByteBuffer, to sink: Sink) {
        let n = buffer.readableBytes
        unwritten.add(n, ordering: .relaxed)
        sink(buffer, Receipt(outbox: self, count: n))
    }

    /// How the outbox ended, or nil while it is open.
    public var end: End? { state.withLock { $0.end } }

    /// Sets what to do when the client falls behind (close its connection); runs at once when
    /// that happened already. Runs on the producer's thread: it must not block.
    public func onOverflow(_ handler: @escaping @Sendable () -> Void) {
        let already = state.withLock { s -> Bool in
            if s.end == .overflow { return true }
            s.onOverflow = handler
            return false
        }
        if already { handler() }
    }

    /// Sets what to do once the outbox ends (for a writer that does not wait in ``next()``);
    /// runs at once when it has ended already. Runs on the thread that ends it: it must not
    /// block.
    public func whenEnded(_ handler: @escaping @Sendable (End) -> Void) {
        let already = state.withLock { s -> End? in
            if let end = s.end { return end }
            s.onEnd = handler
            return nil
        }
        if let already { handler(already) }
    }

    /// Queues bytes for the client (on its loop, once attached to one).
    /// - Returns: false when the outbox has ended (now or before): the caller should forget it.
    @discardableResult
    public func push(_ buffer: ByteBuffer) -> Bool {
        // Attached to a loop: every push happens there, so that none overtakes another.
        if let loop = state.withLock({ $0.loop }), !loop.inEventLoop {
            loop.execute { self.pushHere(buffer) }
            return state.withLock { $0.end == nil }
        }
        return pushHere(buffer)
    }

    /// ``push(_:)`` once on the outbox's loop (or on any thread, when it has none).
    @discardableResult
    private func pushHere(_ buffer: ByteBuffer) -> Bool {
        enum Action {
            case none
            case send(Sink)
            case wake(CheckedContinuation<Next, Never>, [ByteBuffer])
            case overflow(CheckedContinuation<Next, Never>?, (@Sendable () -> Void)?, (@Sendable (End) -> Void)?)
            case ended
        }
        let action: Action = state.withLock { s in
            guard s.end == nil else { return .ended }
            if let sink = s.sink {
                // A client with nothing waiting takes any one event, however large: it is not
                // behind, and the event would cut it off again at every reconnect.
                let waiting = unwritten.load(ordering: .relaxed)
                if waiting > 0 && waiting + buffer.readableBytes > limit {
                    s.end = .overflow
                    s.sink = nil
                    s.loop = nil
                    let handler = s.onOverflow
                    s.onOverflow = nil
                    return .overflow(s.waiter.take(), handler, s.onEnd.take())
                }
                return .send(sink)
            }
            // Attaching to a loop: the bytes wait for the sink, not the writer.
            if s.loop == nil, let waiter = s.waiter {
                s.waiter = nil
                return .wake(waiter, [buffer])
            }
            if s.bytes > 0 && s.bytes + buffer.readableBytes > limit {
                s.end = .overflow
                s.pending = []
                s.bytes = 0
                let handler = s.onOverflow
                s.onOverflow = nil
                return .overflow(nil, handler, s.onEnd.take())
            }
            s.pending.append(buffer)
            s.bytes += buffer.readableBytes
            return .none
        }
        switch action {
        case .none:
            return true
        case .send(let sink):
            // Outside the lock: writing can close the connection at once (the client is gone),
            // and closing finishes this outbox. Pushes for one connection come from its event
            // loop (``fanOut(_:to:thenFinish:)``), one at a time, so order is kept.
            send(buffer, to: sink)
            return true
        case .wake(let waiter, let buffers):
            waiter.resume(returning: .bytes(buffers))
            return true
        case .overflow(let waiter, let handler, let onEnd):
            waiter?.resume(returning: .end(.overflow))
            handler?()
            onEnd?(.overflow)
            return false
        case .ended:
            return false
        }
    }

    /// Outboxes grouped by the event loop each is attached to, for
    /// ``fanOut(_:along:thenFinish:)``. Grouping costs a lock per outbox, so a caller that fans
    /// out to the same outboxes again and again (the subscribers of a topic) keeps the plan
    /// while it is ``isSettled``.
    public struct FanOutPlan: Sendable {
        var byLoop: [(loop: any EventLoop, outboxes: [SSEOutbox])] = []
        var unattached: [SSEOutbox] = []

        public init(_ outboxes: [SSEOutbox]) {
            var index: [ObjectIdentifier: Int] = [:]
            for outbox in outboxes {
                guard let loop = outbox.state.withLock({ $0.loop }) else {
                    unattached.append(outbox)
                    continue
                }
                if let i = index[ObjectIdentifier(loop)] {
                    byLoop[i].outboxes.append(outbox)
                } else {
                    index[ObjectIdentifier(loop)] = byLoop.count
                    byLoop.append((loop, [outbox]))
                }
            }
        }

        /// Every outbox was attached to a loop when the plan was made, so the plan stays right
        /// for as long as the set of outboxes does: an outbox never moves to another loop, and
        /// one that has ended ignores what is pushed to it.
        public var isSettled: Bool { unattached.isEmpty }

        public var count: Int { byLoop.reduce(unattached.count) { $0 + $1.outboxes.count } }
    }

    /// Pushes one buffer to many outboxes: those attached to an event loop get it in one task
    /// per loop, which writes to each of its connections in turn, so the caller's thread does
    /// not pay for every connection and the loops share the work.
    /// - Parameter thenFinish: the buffer is the stream's last: finish each outbox after it.
    public static func fanOut(_ buffer: ByteBuffer, to outboxes: [SSEOutbox], thenFinish: Bool = false) {
        fanOut(buffer, along: FanOutPlan(outboxes), thenFinish: thenFinish)
    }

    /// ``fanOut(_:to:thenFinish:)`` with the outboxes grouped already.
    public static func fanOut(_ buffer: ByteBuffer, along plan: FanOutPlan, thenFinish: Bool = false) {
        for outbox in plan.unattached {
            outbox.push(buffer)
            if thenFinish { outbox.finish() }
        }
        for (loop, group) in plan.byLoop {
            loop.execute {
                for outbox in group {
                    // On the loop the outbox was attached to: no hop to check for.
                    outbox.pushHere(buffer)
                    if thenFinish { outbox.finish() }
                }
            }
        }
    }

    /// Ends the stream once what is queued has been taken.
    public func finish() {
        let (waiter, onEnd) = state.withLock { s -> (CheckedContinuation<Next, Never>?, (@Sendable (End) -> Void)?) in
            guard s.end == nil else { return (nil, nil) }
            s.end = .finished
            s.onOverflow = nil
            s.sink = nil
            return (s.waiter.take(), s.onEnd.take())
        }
        waiter?.resume(returning: .end(.finished))
        onEnd?(.finished)
    }

    /// What the writer may take now: queued bytes (unless they are the sink's), or the end.
    private static func take(_ s: inout State) -> Next? {
        if !s.pending.isEmpty && s.loop == nil && s.sink == nil {
            let out = s.pending
            s.pending = []
            s.bytes = 0
            return .bytes(out)
        }
        return s.end.map { .end($0) }
    }

    /// Everything queued, waiting for some when nothing is; `.end` after the last bytes.
    /// One consumer at a time. Task cancellation ends the wait with `.end(.finished)`.
    public func next() async -> Next {
        if let ready = state.withLock({ Self.take(&$0) }) { return ready }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Next, Never>) in
                let ready: Next? = state.withLock { s in
                    if let ready = Self.take(&s) { return ready }
                    s.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            finish()
        }
    }
}

/// Every open event stream of one edge, for heartbeats and the counts in `/healthz`.
public final class SSEClients: Sendable {
    struct State {
        var outboxes: [ObjectIdentifier: SSEOutbox] = [:]
        var cutOff = 0
    }

    private let state = Mutex(State())
    /// Bytes a client may fall behind by before it is cut off.
    public let bufferLimit: Int
    static let heartbeat = ByteBuffer(string: ": keep-alive\n\n")

    public init(bufferLimit: Int = 256 * 1024) {
        self.bufferLimit = bufferLimit
    }

    /// A new outbox, registered for heartbeats until ``close(_:)``.
    public func open() -> SSEOutbox {
        let outbox = SSEOutbox(limit: bufferLimit)
        state.withLock { $0.outboxes[ObjectIdentifier(outbox)] = outbox }
        return outbox
    }

    public func close(_ outbox: SSEOutbox) {
        let overflowed = outbox.end == .overflow
        state.withLock { s in
            if s.outboxes.removeValue(forKey: ObjectIdentifier(outbox)) != nil && overflowed { s.cutOff += 1 }
        }
    }

    /// Open event streams.
    public var count: Int { state.withLock { $0.outboxes.count } }
    /// Clients cut off for falling behind, since start.
    public var cutOff: Int { state.withLock { $0.cutOff } }

    /// Queues a heartbeat comment on every open stream.
    public func heartbeat() {
        SSEOutbox.fanOut(Self.heartbeat, to: state.withLock { Array($0.outboxes.values) })
    }

    /// Ends every stream (graceful shutdown).
    public func finishAll() {
        let all = state.withLock { Array($0.outboxes.values) }
        for outbox in all { outbox.finish() }
    }
}
