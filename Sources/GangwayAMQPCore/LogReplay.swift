import NIOCore
import Synchronization

/// How far a consumer that reads a stream queue from its start (`x-stream-offset: first`) has
/// got with the log's history, after each (re)connection.
///
/// A stream does not say where its history ends. Two ways to tell:
/// - A marker: a message the consumer's own side published into the log once connected. The
///   log is in order, so once the marker comes back, everything before it has been read. This
///   holds however busy the log is.
/// - Quiet, without a marker: nothing has come for ``quiet`` since the later of the connection
///   and the last message. A log with steady live traffic never goes quiet.
///
/// The edge's job hub follows the event log by quiet; a job worker follows the cancel log with
/// a marker, so that it does not start a job whose cancel it has not read yet.
public final class LogReplay: Sendable {
    struct State {
        /// When the consumer's connection last came up (uptime ns; 0 while it is down).
        var startedAt: UInt64 = 0
        var lastMessage: UInt64 = 0
        /// The marker this connection published, while it is expected.
        var marker: String?
        var markerSeen = false
    }

    private let state = Mutex(State())
    /// Nanoseconds without a message after which a replay without a marker counts as caught up.
    public let quiet: UInt64

    public init(quietNanoseconds: UInt64) {
        self.quiet = quietNanoseconds
    }

    /// A new marker's id: `prefix` (who publishes it) and a random part, so that no other
    /// connection's marker, nor an earlier one of this side, is taken for it.
    public static func newMarker(prefix: String) -> String {
        "\(prefix).\(String(UInt64.random(in: 0 ... .max), radix: 36))"
    }

    /// The consumer's connection came up (`true`), so its replay starts over, or went down.
    /// - Parameter marker: the id of the marker published into the log on this connection.
    public func restarted(_ connected: Bool, marker: String? = nil, now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        state.withLock { s in
            s.startedAt = connected ? max(now, 1) : 0
            s.marker = connected ? marker : nil
            s.markerSeen = false
        }
    }

    /// The marker could not be published: this connection goes by quiet instead.
    public func markerLost(_ marker: String) {
        state.withLock { s in
            if s.marker == marker { s.marker = nil }
        }
    }

    /// A message came from the log (replayed or live); `marker` is the marker it carries, if any.
    public func delivered(marker: String? = nil, now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        state.withLock { s in
            s.lastMessage = now
            if let marker, marker == s.marker { s.markerSeen = true }
        }
    }

    /// Whether the replay has caught up: connected, and its marker back (or, without one,
    /// quiet since).
    public func isSettled(now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> Bool {
        state.withLock { s in
            guard s.startedAt != 0 else { return false }
            if s.markerSeen { return true }
            guard s.marker == nil else { return false }
            let since = max(s.startedAt, s.lastMessage)
            return now > since && now - since >= quiet
        }
    }

    /// Waits until the replay has caught up, or `until` returns true, or `limit` has passed.
    /// - Returns: whether it caught up (or `until` held).
    public func awaitSettled(limit: Duration, until done: () -> Bool = { false }) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while !done() {
            if isSettled() { return true }
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }
}

/// A value known only after what reads it is made: a consumer tag known once its consumer is
/// registered, a hub the consumer's state changes tell once the hub exists, a connection its
/// own state changes publish on.
public final class LateBound<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>

    public init(_ initial: Value) {
        storage = Mutex(initial)
    }

    public var value: Value {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
}
