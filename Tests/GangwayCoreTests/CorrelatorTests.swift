import GangwayAMQPCore
import GangwayCore
import NIOCore
import Testing

@Suite("Correlator: waiting for several replies at once")
struct CorrelatorTests {
    func reply(_ id: String, _ body: String) -> Delivery {
        Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "reply",
            properties: AMQPProperties(correlationID: id), body: ByteBuffer(string: body), generation: 1
        )
    }

    @Test("replies that came before, during and after the wait, a failure and a deadline, each in its place")
    func mixed() async throws {
        let correlator = Correlator(sweepInterval: .milliseconds(2))
        let sweeper = Task { await correlator.run() }
        defer { sweeper.cancel() }
        for id in ["early", "late", "failed"] { #expect(correlator.register(id: id, timeoutMilliseconds: 5_000)) }
        #expect(correlator.register(id: "expired", timeoutMilliseconds: 20))
        correlator.deliver(reply("early", "1"))
        let later = Task {
            try await Task.sleep(for: .milliseconds(40))
            correlator.fail(id: "failed", with: .unroutable("NO_ROUTE"))
            correlator.deliver(reply("late", "2"))
        }
        let results = await correlator.waitAll(ids: ["early", "late", "failed", "expired"])
        try await later.value
        #expect(results.count == 4)
        #expect((try? results[0].get()).map { String(buffer: $0.body) } == "1")
        #expect((try? results[1].get()).map { String(buffer: $0.body) } == "2")
        guard case .failure(.unroutable(let reason)) = results[2] else {
            Issue.record("expected unroutable, got \(results[2])")
            return
        }
        #expect(reason == "NO_ROUTE")
        guard case .failure(.timeout) = results[3] else {
            Issue.record("expected a timeout, got \(results[3])")
            return
        }
        #expect(correlator.pending == 0)
        // A second reply to an id already answered is dropped and counted.
        correlator.deliver(reply("late", "again"))
        #expect(correlator.unknownReplies == 1)
    }

    @Test("cancelling the waiting task ends every slot as cancelled")
    func cancelled() async throws {
        let correlator = Correlator()
        for id in ["a", "b"] { #expect(correlator.register(id: id, timeoutMilliseconds: 60_000)) }
        let waiter = Task { await correlator.waitAll(ids: ["a", "b"]) }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        let results = await waiter.value
        #expect(results.count == 2)
        for result in results {
            guard case .failure(.cancelled) = result else {
                Issue.record("expected cancelled, got \(result)")
                continue
            }
        }
        #expect(correlator.pending == 0)
    }

    @Test("nothing to wait for answers at once")
    func empty() async {
        #expect(await Correlator().waitAll(ids: []).isEmpty)
    }
}
