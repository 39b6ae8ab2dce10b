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
        /// When set, questions are answered at once with this count (counted all the same), so
        /// that a check that should not have asked fails its test instead of hanging it.
        var atOnce: UInt32?
    }
    let state = Mutex(State())

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome { .confirmed }
    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {}

    func consumerCount(queue: String) async throws -> UInt32? {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> UInt32? in
                s.asked += 1
                guard let count = s.atOnce else {
                    s.waiting.append(continuation)
                    return nil
                }
                return count
            }
            if let now { continuation.resume(returning: now) }
        }
    }

    /// Answers later questions at once with `consumers`, or (nil) holds them for ``answer(_:)``.
    func answerAtOnce(_ consumers: UInt32?) {
        state.withLock { $0.atOnce = consumers }
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

    /// Waits until `n` questions were asked; records a failure instead of spinning for ever
    /// when they never come (after seconds, far beyond what asking takes).
    func waitUntilAsked(_ n: Int, sourceLocation: SourceLocation = #_sourceLocation) async {
        let clock = ContinuousClock()
        let giveUp = clock.now + .seconds(10)
        while asked < n {
            guard clock.now < giveUp else {
                Issue.record("only \(asked) of \(n) questions were asked", sourceLocation: sourceLocation)
                return
            }
            await Task.yield()
        }
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
        // Times are given, not read from the clock: an answer that aged on a slow machine
        // would make a check ask a question nobody answers here, and the test would hang.
        let bus = AskedBus()
        let presence = ConsumerPresence(bus: bus, positiveTTL: .milliseconds(50))
        let start: UInt64 = 1_000_000_000
        func at(_ milliseconds: UInt64) -> UInt64 { start + milliseconds * 1_000_000 }

        async let first = presence.check(queue: "q", now: at(0))
        await bus.waitUntilAsked(1)
        bus.answer(2)
        #expect(await first == .present)
        bus.answerAtOnce(9)
        #expect(await presence.check(queue: "q", now: at(49)) == .present)
        #expect(bus.asked == 1)
        bus.answerAtOnce(nil)

        async let refreshing = presence.check(queue: "q", now: at(50))
        await bus.waitUntilAsked(2)
        // While that question is out, others answer from the aged entry, without asking.
        bus.answerAtOnce(9)
        for i in 0..<20 {
            #expect(await presence.check(queue: "q", now: at(51 + UInt64(i))) == .present)
        }
        #expect(bus.asked == 2)
        bus.answerAtOnce(nil)
        bus.answer(0)
        #expect(await refreshing == .none)

        // No consumers: every request asks, so the route comes back as soon as a worker does,
        // however fresh the answer.
        async let again = presence.check(queue: "q", now: at(72))
        await bus.waitUntilAsked(3)
        bus.answer(1)
        #expect(await again == .present)
        #expect(bus.asked == 3)
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
