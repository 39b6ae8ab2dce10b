import GangwayAMQPCore
import GangwayCore
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite("Correlator: waiting for several replies at once, and callbacks")
struct CorrelatorTests {
    func reply(_ id: String, _ body: String) -> Delivery {
        Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "reply",
            properties: AMQPProperties(correlationID: id), body: ByteBuffer(string: body), generation: 1
        )
    }

    /// What paces a test's sweeper: its task's own sleeps, or an event loop's timer.
    enum Pacing: String, CaseIterable, Sendable {
        case task
        case eventLoop
    }

    /// A running sweeper paced as asked, with the loop group to shut down after it (if any).
    struct Sweeper {
        let task: Task<Void, Never>
        let group: MultiThreadedEventLoopGroup?

        init(_ correlator: Correlator, _ pacing: Pacing) {
            switch pacing {
            case .task:
                group = nil
                task = Task { await correlator.run() }
            case .eventLoop:
                let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
                let loop = group.next()
                self.group = group
                task = Task { await correlator.run(sweepingOn: loop) }
            }
        }

        /// Cancels the sweeper, waits for it to end and shuts its loop down.
        func stop() async throws {
            task.cancel()
            await task.value
            try await group?.shutdownGracefully()
        }
    }

    @Test(
        "replies that came before, during and after the wait, a failure and a deadline, each in its place",
        arguments: Pacing.allCases
    )
    func mixed(_ pacing: Pacing) async throws {
        let correlator = Correlator(sweepInterval: .milliseconds(2))
        let sweeper = Sweeper(correlator, pacing)
        for id in ["early", "late", "failed"] { #expect(try correlator.register(id: id, timeoutMilliseconds: 5_000)) }
        #expect(try correlator.register(id: "expired", timeoutMilliseconds: 20))
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
        try await sweeper.stop()
    }

    @Test("cancelling the waiting task ends every slot as cancelled")
    func cancelled() async throws {
        let correlator = Correlator()
        for id in ["a", "b"] { #expect(try correlator.register(id: id, timeoutMilliseconds: 60_000)) }
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

    @Test(
        "the sweeper sleeps while nothing waits, a request or a stream wakes it, and cancelled asleep it ends",
        arguments: Pacing.allCases
    )
    func sweeperSleepsWhileIdle(_ pacing: Pacing) async throws {
        let correlator = Correlator(sweepInterval: .milliseconds(2))
        let sweeper = Sweeper(correlator, pacing)
        await Self.until("the sweeper sleeps") { correlator.isSweeperParked }

        // A request opened now still times out: opening its slot woke the sweeper.
        #expect(try correlator.register(id: "unanswered", timeoutMilliseconds: 20))
        try #require(!correlator.isSweeperParked)
        await #expect(throws: Correlator.Failure.timeout) { try await correlator.wait(id: "unanswered") }
        await Self.until("the sweeper sleeps after the timeout") { correlator.isSweeperParked }

        // So does a stream whose parts stop coming.
        let (parts, _) = try correlator.openStream(id: "quiet", idleMilliseconds: 20, timeoutMilliseconds: 60_000)
        try #require(!correlator.isSweeperParked)
        await #expect(throws: Correlator.Failure.idle) { for try await _ in parts {} }
        await Self.until("the sweeper sleeps after the stream") { correlator.isSweeperParked }

        // A request answered long before its deadline does not keep the sweeper awake until it.
        #expect(try correlator.register(id: "answered", timeoutMilliseconds: 60_000))
        correlator.deliver(reply("answered", "1"))
        #expect(String(buffer: try await correlator.wait(id: "answered").body) == "1")
        await Self.until("the sweeper sleeps after the reply") { correlator.isSweeperParked }

        // Cancelled while asleep, the sweeper ends, and with no sweeper no slot opens.
        try await sweeper.stop()
        #expect(!correlator.isSweeperParked)
        #expect(throws: Correlator.Failure.unavailable("the edge is shutting down")) {
            try correlator.register(id: "after", timeoutMilliseconds: 60_000)
        }
    }

    @Test("cancelled while requests wait, the sweeper ends, and the requests fail at once", arguments: Pacing.allCases)
    func sweeperCancelledWhileBusy(_ pacing: Pacing) async throws {
        let correlator = Correlator(sweepInterval: .milliseconds(2))
        let sweeper = Sweeper(correlator, pacing)
        #expect(try correlator.register(id: "waiting", timeoutMilliseconds: 60_000))
        try #require(!correlator.isSweeperParked)
        let waiter = Task { try await correlator.wait(id: "waiting") }
        // A few sweeps go by with the request still waiting.
        try await Task.sleep(for: .milliseconds(20))
        #expect(correlator.pending == 1)
        try await sweeper.stop()
        await #expect(throws: Correlator.Failure.unavailable("the edge is shutting down")) { try await waiter.value }
        #expect(correlator.pending == 0)
    }

    /// Waits until `condition` holds; records a failure instead of spinning for ever when it
    /// never does (after seconds, far beyond what a sweep takes).
    static func until(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ condition: () -> Bool) async {
        let clock = ContinuousClock()
        let giveUp = clock.now + .seconds(10)
        while !condition() {
            guard clock.now < giveUp else {
                Issue.record("never: \(what)", sourceLocation: sourceLocation)
                return
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    @Test("nothing to wait for answers at once")
    func empty() async {
        #expect(await Correlator().waitAll(ids: []).isEmpty)
    }
    @Test("a callback registered with its slot hears its reply, a failure or the deadline, once each; a second reply is unknown")
    func callbacks() async throws {
        let correlator = Correlator()
        let heard = Mutex<[String: [Result<String, Correlator.Failure>]]>([:])
        func register(_ id: String, timeout: Int = 5_000) throws -> Bool {
            try correlator.register(id: id, timeoutMilliseconds: timeout) { result in
                heard.withLock { $0[id, default: []].append(result.map { String(buffer: $0.body) }) }
            }
        }
        for id in ["replied", "failed", "unpublished"] { #expect(try register(id)) }
        #expect(try register("expired", timeout: 1))
        #expect(try register("replied") == false, "an id in use is refused")
        #expect(heard.withLock { $0.isEmpty }, "nothing is heard before it happens")
        correlator.deliver(reply("replied", "1"))
        correlator.deliver(reply("replied", "again"))
        correlator.fail(id: "failed", with: .unroutable("NO_ROUTE"))
        correlator.fail(id: "unpublished", with: .unavailable("connection lost"))
        correlator.deliver(reply("failed", "late"))
        try await Task.sleep(for: .milliseconds(5))
        correlator.expire()
        let all = heard.withLock { $0 }
        #expect(all["replied"] == [.success("1")])
        #expect(all["failed"] == [.failure(.unroutable("NO_ROUTE"))])
        #expect(all["unpublished"] == [.failure(.unavailable("connection lost"))])
        #expect(all["expired"] == [.failure(.timeout)])
        #expect(correlator.pending == 0 && correlator.unknownReplies == 2)
        correlator.repliesStopped("shutting down")
        #expect(throws: Correlator.Failure.unavailable("shutting down")) { try register("after") }
    }

    @Test("while replies are stopped, waiting requests and streams fail as unavailable and no slot opens; once resumed, slots open again")
    func repliesStoppedAndResumed() async throws {
        let correlator = Correlator()
        #expect(try correlator.register(id: "waiting", timeoutMilliseconds: 60_000))
        let (parts, _) = try correlator.openStream(id: "streaming", idleMilliseconds: 60_000, timeoutMilliseconds: 60_000)
        let waiter = Task { try await correlator.wait(id: "waiting") }
        try await Task.sleep(for: .milliseconds(10))
        correlator.repliesStopped("reply connection lost")
        await #expect(throws: Correlator.Failure.unavailable("reply connection lost")) { try await waiter.value }
        await #expect(throws: Correlator.Failure.unavailable("reply connection lost")) {
            for try await _ in parts {}
        }
        #expect(throws: Correlator.Failure.unavailable("reply connection lost")) {
            try correlator.register(id: "meanwhile", timeoutMilliseconds: 60_000)
        }
        #expect(throws: Correlator.Failure.unavailable("reply connection lost")) {
            try correlator.openStream(id: "meanwhile-stream", idleMilliseconds: 60_000, timeoutMilliseconds: 60_000)
        }
        #expect(correlator.pending == 0)
        correlator.repliesResumed()
        #expect(try correlator.register(id: "after", timeoutMilliseconds: 60_000))
        correlator.deliver(reply("after", "back"))
        #expect(String(buffer: try await correlator.wait(id: "after").body) == "back")
        // An edge starts with replies stopped until its reply consumer is up.
        let starting = Correlator(notReceiving: "not up yet")
        #expect(throws: Correlator.Failure.unavailable("not up yet")) {
            try starting.register(id: "early", timeoutMilliseconds: 60_000)
        }
    }

    @Test("shut down, waiting requests, callbacks and streams fail as shutting down, and nothing opens again, even once replies resume")
    func shutDown() async throws {
        let correlator = Correlator()
        let heard = Mutex<[Result<String, Correlator.Failure>]>([])
        #expect(try correlator.register(id: "waiting", timeoutMilliseconds: 60_000))
        #expect(try correlator.register(id: "called-back", timeoutMilliseconds: 60_000) { result in
            heard.withLock { $0.append(result.map { String(buffer: $0.body) }) }
        })
        let (parts, _) = try correlator.openStream(id: "streaming", idleMilliseconds: 60_000, timeoutMilliseconds: 60_000)
        let waiter = Task { try await correlator.wait(id: "waiting") }
        try await Task.sleep(for: .milliseconds(10))
        correlator.shutDown()
        await #expect(throws: Correlator.Failure.shuttingDown) { try await waiter.value }
        await #expect(throws: Correlator.Failure.shuttingDown) {
            for try await _ in parts {}
        }
        #expect(heard.withLock { $0 } == [.failure(.shuttingDown)])
        #expect(correlator.pending == 0)
        correlator.repliesResumed()
        #expect(throws: Correlator.Failure.shuttingDown) { try correlator.register(id: "after", timeoutMilliseconds: 60_000) }
        #expect(throws: Correlator.Failure.shuttingDown) {
            try correlator.openStream(id: "after-stream", idleMilliseconds: 60_000, timeoutMilliseconds: 60_000)
        }
        // A reply that comes anyway finds no one and is counted.
        correlator.deliver(reply("waiting", "too late"))
        #expect(correlator.unknownReplies == 1)
    }
}
