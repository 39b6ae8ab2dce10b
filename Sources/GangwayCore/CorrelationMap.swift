/// Correlation id → the request waiting for its reply, as a plain value.
///
/// A reply can arrive before the requester starts waiting (the worker can be faster than the
/// requesting task is rescheduled), so a slot is registered before publishing and holds an
/// early reply until the requester comes for it. Each slot ends exactly once: replied-and-taken,
/// failed, expired or cancelled. Replies for unknown ids (late, duplicate, foreign) are counted
/// and dropped. A failure learnt before the requester waits (the broker returned the message)
/// is kept the same way.
public struct CorrelationMap<Reply, Failure, Waiter> {
    enum Slot {
        case pending
        case replied(Reply)
        case failed(Failure)
        case waiting(Waiter)
    }

    public enum ReplyAction {
        /// The requester is waiting: resume it with the reply.
        case resume(Waiter, Reply)
        /// Kept until the requester asks for it.
        case stored
        /// No such id; counted in ``unknownReplies``.
        case unknown
    }

    public enum FailAction {
        /// The requester is waiting: fail it.
        case resume(Waiter, Failure)
        /// Kept until the requester asks.
        case stored
        /// No such slot, or it has its reply already (a reply wins over a later failure).
        case ignored
    }

    public enum WaitAction {
        case replyAvailable(Reply)
        case failed(Failure)
        case suspended
        /// The slot is gone (expired or cancelled) before the requester waited.
        case gone
    }

    private var slots: [String: Slot] = [:]
    public private(set) var unknownReplies = 0

    public init() {}

    public var count: Int { slots.count }

    /// Opens a slot; with a waiter, one whose requester waits from the start (a callback,
    /// which needs no turn to come for its reply). Returns false if the id is already in use.
    public mutating func register(_ id: String, waiting waiter: Waiter? = nil) -> Bool {
        guard slots[id] == nil else { return false }
        slots[id] = waiter.map { .waiting($0) } ?? .pending
        return true
    }

    public mutating func reply(_ id: String, _ reply: Reply) -> ReplyAction {
        switch slots[id] {
        case .pending:
            slots[id] = .replied(reply)
            return .stored
        case .waiting(let waiter):
            slots[id] = nil
            return .resume(waiter, reply)
        case .replied, .failed, nil:
            // A second reply to one request is as unknown as a late one.
            unknownReplies += 1
            return .unknown
        }
    }

    public mutating func fail(_ id: String, _ failure: Failure) -> FailAction {
        switch slots[id] {
        case .pending:
            slots[id] = .failed(failure)
            return .stored
        case .waiting(let waiter):
            slots[id] = nil
            return .resume(waiter, failure)
        case .replied, .failed, nil:
            return .ignored
        }
    }

    public mutating func wait(_ id: String, _ waiter: Waiter) -> WaitAction {
        switch slots[id] {
        case .pending:
            slots[id] = .waiting(waiter)
            return .suspended
        case .replied(let reply):
            slots[id] = nil
            return .replyAvailable(reply)
        case .failed(let failure):
            slots[id] = nil
            return .failed(failure)
        case .waiting, nil:
            return .gone
        }
    }

    /// Ends a slot (deadline, failed publish, client gone). Returns the waiter to fail, if one
    /// is suspended.
    @discardableResult
    public mutating func remove(_ id: String) -> Waiter? {
        guard let slot = slots.removeValue(forKey: id) else { return nil }
        if case .waiting(let waiter) = slot { return waiter }
        return nil
    }

    /// Ends every slot (shutdown, lost reply consumer); returns the waiters to fail.
    public mutating func removeAll() -> [Waiter] {
        defer { slots.removeAll() }
        return slots.values.compactMap { if case .waiting(let w) = $0 { return w } else { return nil } }
    }
}
