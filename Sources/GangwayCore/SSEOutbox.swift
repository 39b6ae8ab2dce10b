import NIOCore
import Synchronization

/// The bytes waiting to go out to one event-stream client, bounded in bytes.
///
/// Producers (the broker's consumer thread, the heartbeat ticker) ``push(_:)`` encoded events;
/// the client's response writer takes everything queued at once with ``next()``. While the
/// writer is stuck on a client that does not read, the queue grows; past ``limit`` bytes the
/// outbox ends with ``End/overflow``, drops what it held and calls the overflow handler (the
/// edge closes the connection), so a slow client costs at most `limit` bytes here.
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

    struct State {
        var pending: [ByteBuffer] = []
        var bytes = 0
        var end: End?
        var waiter: CheckedContinuation<Next, Never>?
        var onOverflow: (@Sendable () -> Void)?
    }

    /// Bytes that may wait for the client before it is cut off.
    public let limit: Int
    private let state = Mutex(State())

    public init(limit: Int) {
        self.limit = limit
    }

    /// Bytes queued now.
    public var queuedBytes: Int { state.withLock { $0.bytes } }

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

    /// Queues bytes for the client.
    /// - Returns: false when the outbox has ended (now or before): the caller should forget it.
    @discardableResult
    public func push(_ buffer: ByteBuffer) -> Bool {
        enum Action {
            case none
            case wake(CheckedContinuation<Next, Never>, [ByteBuffer])
            case overflow(CheckedContinuation<Next, Never>?, (@Sendable () -> Void)?)
            case ended
        }
        let action: Action = state.withLock { s in
            guard s.end == nil else { return .ended }
            if let waiter = s.waiter {
                s.waiter = nil
                return .wake(waiter, [buffer])
            }
            if s.bytes + buffer.readableBytes > limit {
                s.end = .overflow
                s.pending = []
                s.bytes = 0
                let handler = s.onOverflow
                s.onOverflow = nil
                return .overflow(nil, handler)
            }
            s.pending.append(buffer)
            s.bytes += buffer.readableBytes
            return .none
        }
        switch action {
        case .none:
            return true
        case .wake(let waiter, let buffers):
            waiter.resume(returning: .bytes(buffers))
            return true
        case .overflow(let waiter, let handler):
            waiter?.resume(returning: .end(.overflow))
            handler?()
            return false
        case .ended:
            return false
        }
    }

    /// Ends the stream once what is queued has been taken.
    public func finish() {
        let waiter: CheckedContinuation<Next, Never>? = state.withLock { s in
            guard s.end == nil else { return nil }
            s.end = .finished
            s.onOverflow = nil
            let w = s.waiter
            s.waiter = nil
            return w
        }
        waiter?.resume(returning: .end(.finished))
    }

    /// Everything queued, waiting for some when nothing is; `.end` after the last bytes.
    /// One consumer at a time. Task cancellation ends the wait with `.end(.finished)`.
    public func next() async -> Next {
        let ready: Next? = state.withLock { s in
            if !s.pending.isEmpty {
                let out = s.pending
                s.pending = []
                s.bytes = 0
                return .bytes(out)
            }
            if let end = s.end { return .end(end) }
            return nil
        }
        if let ready { return ready }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Next, Never>) in
                let ready: Next? = state.withLock { s in
                    if !s.pending.isEmpty {
                        let out = s.pending
                        s.pending = []
                        s.bytes = 0
                        return .bytes(out)
                    }
                    if let end = s.end { return .end(end) }
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
        let all = state.withLock { Array($0.outboxes.values) }
        for outbox in all { outbox.push(Self.heartbeat) }
    }

    /// Ends every stream (graceful shutdown).
    public func finishAll() {
        let all = state.withLock { Array($0.outboxes.values) }
        for outbox in all { outbox.finish() }
    }
}
