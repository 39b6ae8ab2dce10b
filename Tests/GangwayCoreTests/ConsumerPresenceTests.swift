import GangwayAMQPCore
import GangwayCore
import Synchronization
import Testing

/// A bus whose consumer-count questions wait until the test answers them: no IO.
final class AskedBus: MessageBus {
    let replyQueue = "gangway.reply.test"
    let isReady = true
    struct State {
        var asked = 0
        var waiting: [CheckedContinuation<UInt32?, Never>] = []
    }
    let state = Mutex(State())

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome { .confirmed }
    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {}

    func consumerCount(queue: String) async throws -> UInt32? {
        await withCheckedContinuation { continuation in
            state.withLock {
                $0.asked += 1
                $0.waiting.append(continuation)
            }
        }
    }

    var asked: Int { state.withLock { $0.asked } }

    /// Answers every question asked so far.
    func answer(_ consumers: UInt32?) {
        let waiting = state.withLock { s in
            defer { s.waiting = [] }
            return s.waiting
        }
        for w in waiting { w.resume(returning: consumers) }
    }

    func waitUntilAsked(_ n: Int) async {
        while asked < n { await Task.yield() }
    }
}

@Suite("Consumer presence cache")
struct ConsumerPresenceTests {
    @Test("answers from the broker's consumer count and never holds more queues than its capacity")
    func bounded() async {
        let bus = ScriptedBus(consumers: 2)
        let presence = ConsumerPresence(bus: bus, capacity: 3)
        for i in 0..<10 {
            #expect(await presence.check(queue: "users.\(i)") == .present)
            #expect(presence.count <= 3)
        }
        let none = ConsumerPresence(bus: ScriptedBus(consumers: 0))
        #expect(await none.check(queue: "q") == .none)
    }

    @Test("a fresh answer is used without asking; an aged one is asked again by one request while the others go ahead")
    func oneRefreshAtATime() async throws {
        let bus = AskedBus()
        let presence = ConsumerPresence(bus: bus, positiveTTL: .milliseconds(50))

        async let first = presence.check(queue: "q")
        await bus.waitUntilAsked(1)
        bus.answer(2)
        #expect(await first == .present)
        #expect(await presence.check(queue: "q") == .present)
        #expect(bus.asked == 1)

        try await Task.sleep(for: .milliseconds(80))
        async let refreshing = presence.check(queue: "q")
        await bus.waitUntilAsked(2)
        // While that question is out, others answer from the aged entry, without asking.
        for _ in 0..<20 {
            #expect(await presence.check(queue: "q") == .present)
        }
        #expect(bus.asked == 2)
        bus.answer(0)
        #expect(await refreshing == .none)

        // No consumers: every request asks, so the route comes back as soon as a worker does.
        async let again = presence.check(queue: "q")
        await bus.waitUntilAsked(3)
        bus.answer(1)
        #expect(await again == .present)
    }

    @Test("a missing queue is reported and forgotten")
    func missingQueue() async {
        let bus = AskedBus()
        let presence = ConsumerPresence(bus: bus)
        async let result = presence.check(queue: "gone")
        await bus.waitUntilAsked(1)
        bus.answer(nil)
        #expect(await result == .missingQueue)
        #expect(presence.count == 0)
    }
}
