import NIOCore
import Synchronization

/// Remembers briefly whether a queue has consumers, so a request to a route nobody serves is
/// answered 503 at once instead of 504 at its deadline.
///
/// RabbitMQ dropped the `immediate` flag, so the edge asks with a passive declaration, at most
/// once per queue per ``positiveTTL`` while consumers are there. While none are, every
/// request asks again (a passive declare costs one broker round trip), so the route comes back
/// as soon as a worker does.
public final class ConsumerPresence: Sendable {
    public enum Presence: Sendable, Equatable {
        case present
        case none
        case missingQueue
    }

    struct Entry {
        var consumers: UInt32
        var checkedAt: UInt64
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

    public func check(queue: String) async -> Presence {
        let now = NIODeadline.now().uptimeNanoseconds
        let ttl = UInt64(positiveTTL.components.seconds) * 1_000_000_000 + UInt64(positiveTTL.components.attoseconds / 1_000_000_000)
        let cached = cache.withLock { $0[queue] }
        if let cached, cached.consumers > 0, now - cached.checkedAt < ttl {
            return .present
        }
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
            return .present
        }
    }
}
