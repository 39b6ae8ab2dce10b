import GangwayAMQPCore
import Synchronization
import Testing

@Suite("Waiting for a confirm, at most so long")
struct ConfirmDeadlineTests {
    struct NotSent: Error {}

    /// Holds the callback of a publish that has not settled yet.
    final class Pending: Sendable {
        let callback = Mutex<(@Sendable (Result<PublishOutcome, any Error>) -> Void)?>(nil)
        func settle(_ result: Result<PublishOutcome, any Error>) {
            callback.withLock { $0 }?(result)
        }
    }

    @Test("an outcome that comes in time is returned, at once if it comes at once")
    func inTime() async throws {
        let now = try await confirmWithin(.seconds(5)) { (settled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) in
            settled(.success(.nacked))
        }
        #expect(now == .nacked)
        let pending = Pending()
        async let later = confirmWithin(.seconds(5)) { settled in pending.callback.withLock { $0 = settled } }
        while pending.callback.withLock({ $0 == nil }) { try await Task.sleep(for: .milliseconds(5)) }
        pending.settle(.success(.confirmed))
        #expect(try await later == .confirmed)
    }

    @Test("no outcome in time: a timeout that says the broker may have the message; a late one is ignored")
    func timeout() async throws {
        let pending = Pending()
        let start = ContinuousClock.now
        let error = await #expect(throws: ConfirmTimeout.self) {
            try await confirmWithin(.milliseconds(100)) { settled in pending.callback.withLock { $0 = settled } }
        }
        #expect(ContinuousClock.now - start >= .milliseconds(100))
        #expect(error?.brokerMayHaveMessage == true && error?.publishMayHaveReachedBroker == true)
        #expect(error?.description.contains("within 100 ms") == true)
        pending.settle(.success(.confirmed))
    }

    @Test("a publish that throws fails at once with its own error")
    func notSent() async throws {
        await #expect(throws: NotSent.self) {
            try await confirmWithin(.seconds(5)) { (_: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) in throw NotSent() }
        }
    }
}
