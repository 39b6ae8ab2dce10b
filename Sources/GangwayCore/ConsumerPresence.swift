import NIOCore
import Synchronization

/// Remembers briefly whether a queue has consumers, so a request to a route nobody serves is
/// answered 503 at once instead of 504 at its deadline.
///
/// RabbitMQ dropped the `immediate` flag, so the edge asks with a passive declaration, at most
/// once per queue per ``positiveTTL`` while consumers are there: when the answer has aged, one
/// request asks again and the requests that arrive meanwhile go ahead on the old answer,
/// rather than every request in flight asking at once (each question is a round trip that
/// holds up the publishing connection). While there are no consumers, every request asks
/// again, so the route comes back as soon as a worker does.
public final class ConsumerPresence: Sendable {
    public enum Presence: Sendable, Equatable {
        case present
        case none
        case missingQueue
    }

    struct Entry {
        var consumers: UInt32
        var checkedAt: UInt64
        /// A request is asking the broker again.
        var refreshing = false
    }

    private let bus: any MessageBus
    private let cache = Mutex<[String: Entry]>([:])
    public let positiveTTL: Duration
    /// Queue names remembered at most. A route whose queue name has a path parameter in it
    /// (`users.{id}`) would otherwise add one entry per value for ever; when full, the cache
    /// starts over, which costs one passive declare per queue.
    public let capacity: Int

    public init(bus: any MessageBus, positiveTTL: Duration = .milliseconds(500), capacity: Int = 10_000) {
        self.bus = bus
        self.positiveTTL = positiveTTL
        self.capacity = capacity
    }

    /// Queue names remembered now.
    public var count: Int { cache.withLock { $0.count } }

    private var ttlNanoseconds: UInt64 {
        UInt64(positiveTTL.components.seconds) * 1_000_000_000 + UInt64(positiveTTL.components.attoseconds / 1_000_000_000)
    }

    /// Whether ``check(queue:now:)`` would answer `.present` without asking the broker: the
    /// queue had consumers at the last answer, and that answer is fresh or being renewed.
    /// Lets a caller that cannot wait (a channel handler) go ahead at once, and take the
    /// asynchronous way only when the broker must be asked.
    public func isKnownPresent(queue: String, now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> Bool {
        let ttl = ttlNanoseconds
        return cache.withLock { entries in
            guard let cached = entries[queue], cached.consumers > 0 else { return false }
            return now < cached.checkedAt + ttl || cached.refreshing
        }
    }

    /// - Parameter now: the uptime in nanoseconds the answer's age is measured at; a parameter
    ///   so that tests can age an answer without waiting for the clock.
    public func check(queue: String, now: UInt64 = NIODeadline.now().uptimeNanoseconds) async -> Presence {
        let ttl = ttlNanoseconds
        let ask = cache.withLock { entries -> Bool in
            guard let cached = entries[queue], cached.consumers > 0 else { return true }
            if now < cached.checkedAt + ttl || cached.refreshing { return false }
            entries[queue]?.refreshing = true
            return true
        }
        guard ask else { return .present }
        do {
            guard let count = try await bus.consumerCount(queue: queue) else {
                cache.withLock { _ = $0.removeValue(forKey: queue) }
                return .missingQueue
            }
            cache.withLock { entries in
                if entries.count >= capacity && entries[queue] == nil { entries.removeAll(keepingCapacity: true) }
                entries[queue] = Entry(consumers: count, checkedAt: now)
            }
            return count > 0 ? .present : .none
        } catch {
            // The broker could not be asked; let the publish itself find out.
            cache.withLock { $0[queue]?.refreshing = false }
            return .present
        }
    }
}
