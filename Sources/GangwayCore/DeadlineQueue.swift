/// Deadlines of waiting requests, cheap to add and to sweep.
///
/// All requests of one route share one timeout, so their deadlines arrive in order: one FIFO
/// per distinct timeout keeps every queue sorted without a heap. A sweep pops the expired
/// heads; slots that were answered meanwhile are popped too and ignored by the caller.
public struct DeadlineQueue: Sendable {
    private struct FIFO: Sendable {
        var items: [(deadline: UInt64, id: String)] = []
        var head = 0

        mutating func popExpired(now: UInt64, into out: inout [String]) {
            while head < items.count, items[head].deadline <= now {
                out.append(items[head].id)
                head += 1
            }
            if head == items.count {
                items.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 4096, head * 2 > items.count {
                items.removeFirst(head)
                head = 0
            }
        }
    }

    private var queues: [Int: FIFO] = [:]

    public init() {}

    public var count: Int { queues.values.reduce(0) { $0 + $1.items.count - $1.head } }

    /// - Parameters:
    ///   - now: monotonic nanoseconds.
    public mutating func add(id: String, timeoutMilliseconds: Int, now: UInt64) {
        let deadline = now + UInt64(timeoutMilliseconds) * 1_000_000
        queues[timeoutMilliseconds, default: FIFO()].items.append((deadline, id))
    }

    /// Removes and returns the ids whose deadline is at or before `now`.
    public mutating func expired(now: UInt64) -> [String] {
        var out: [String] = []
        for key in queues.keys {
            queues[key]!.popExpired(now: now, into: &out)
        }
        return out
    }
}
